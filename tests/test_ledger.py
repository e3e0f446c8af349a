"""The shared reservation ledger: real processes booking in one file, no double booking,
a killed worker's bytes released, a forked child in a slot of its own, bad files refused."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
import struct
from pathlib import Path

import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.admission import Admission
from pathoai_memobs.exceptions import ConfigError
from pathoai_memobs.ledger import FILE_NAME, SharedLedger
from pathoai_memobs.pressure import Level

from .scripted import Scripted

MIB = 1 << 20
FLOOR = 100 * MIB
CHUNK = 10 * MIB
FORK = multiprocessing.get_context("fork")


def admission(directory: Path) -> Admission:
    return Admission(FLOOR, 1.0, ledger=SharedLedger(str(directory)))


def book(a: Admission, available: int, required: int) -> bool:
    with a.lock:
        return a.admit_locked(Level.NORMAL, available, required, hold=True)[0]


def test_every_process_sees_the_others_reservations(tmp_path: Path) -> None:
    here = admission(tmp_path)
    booked, done = FORK.Event(), FORK.Event()

    def worker() -> None:
        there = admission(tmp_path)
        assert book(there, FLOOR + 3 * CHUNK, 2 * CHUNK)
        booked.set()
        done.wait(10)
        there.release(2 * CHUNK)

    child = FORK.Process(target=worker)
    child.start()
    try:
        assert booked.wait(10)
        assert here.ledger.total() == 2 * CHUNK and here.reserved_bytes == 0
        assert not book(here, FLOOR + 3 * CHUNK, 2 * CHUNK)  # the child's 20 MiB count
        assert book(here, FLOOR + 3 * CHUNK, CHUNK)  # what is left still fits
    finally:
        done.set()
        child.join(10)
    assert child.exitcode == 0
    assert here.ledger.total() == CHUNK  # the child gave its 20 MiB back on release
    here.release(CHUNK)
    assert here.ledger.total() == 0


def _hammer(directory: str, held: mmap.mmap, peak: mmap.mmap, rounds: int) -> None:
    """Book a chunk, count it in ``held`` while holding it, give it back; ``peak`` keeps
    the most ever held at once (both under a lock of their own, outside the ledger)."""
    import fcntl
    import threading
    import time

    a = Admission(FLOOR, 1.0, ledger=SharedLedger(directory))
    lock_fd = os.open(os.path.join(directory, "counter.lock"), os.O_RDWR | os.O_CREAT)
    counter_lock = threading.Lock()

    def count(delta: int) -> None:
        with counter_lock:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            (now,) = struct.unpack_from("<q", held)
            struct.pack_into("<q", held, 0, now + delta)
            (top,) = struct.unpack_from("<q", peak)
            struct.pack_into("<q", peak, 0, max(top, now + delta))
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def run() -> None:
        for _ in range(rounds):
            if book(a, FLOOR + 4 * CHUNK, CHUNK):
                count(+1)
                time.sleep(0.001)
                count(-1)
                a.release(CHUNK)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_four_processes_of_three_threads_never_book_the_same_bytes(tmp_path: Path) -> None:
    """Room for four chunks; twelve threads in four processes book and release 300 times
    each. More than four held at once would be double booking."""
    held = mmap.mmap(-1, 8)
    peak = mmap.mmap(-1, 8)
    procs = [FORK.Process(target=_hammer, args=(str(tmp_path), held, peak, 300)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert 2 <= struct.unpack_from("<q", peak)[0] <= 4  # held at once, never a fifth
    assert SharedLedger(str(tmp_path)).total() == 0  # every booking given back


def test_a_killed_workers_bytes_are_released_before_a_refusal(tmp_path: Path) -> None:
    booked = FORK.Event()

    def worker() -> None:
        assert book(admission(tmp_path), FLOOR + 5 * CHUNK, 4 * CHUNK)
        booked.set()
        signal.pause()  # killed while holding 40 MiB

    child = FORK.Process(target=worker)
    child.start()
    assert booked.wait(10)
    here = admission(tmp_path)
    assert here.ledger.total() == 4 * CHUNK
    assert not book(here, FLOOR + 5 * CHUNK, 2 * CHUNK)  # alive: its bytes are held
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(10)
    assert book(here, FLOOR + 5 * CHUNK, 2 * CHUNK)  # dead: released, and this fits
    assert here.ledger.total() == 2 * CHUNK
    here.release(2 * CHUNK)


def test_monitors_in_one_process_share_its_slot_and_a_forked_child_takes_its_own(
    tmp_path: Path,
) -> None:
    config = MemoryConfig(ledger_dir=str(tmp_path))
    first = MemoryMonitor(config, sampler=Scripted(2000 * MIB))
    second = MemoryMonitor(config, sampler=Scripted(2000 * MIB))
    with first.reserve(300), second.reserve(400):
        assert first.reserved_bytes == 300 * MIB and second.reserved_bytes == 400 * MIB
        assert first._admission.ledger.total() == 700 * MIB
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: none of the parent's reservations are its own
            ok = first.reserved_bytes == 0 and first._admission.ledger.total() == 700 * MIB
            with first.reserve(100):
                ok = ok and first._admission.ledger.total() == 800 * MIB
            os.write(writer, b"1" if ok else b"0")
            os._exit(0)
        os.close(writer)
        assert os.read(reader, 1) == b"1"
        os.waitpid(pid, 0)
    assert first._admission.ledger.total() == 0


def test_the_directory_is_checked_and_named_as_the_user_set_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"MEMORY_LEDGER_DIR.*not an existing directory"):
        MemoryMonitor(MemoryConfig.from_env({"MEMORY_LEDGER_DIR": missing}), sampler=Scripted(0))
    (tmp_path / FILE_NAME).write_bytes(b"not a ledger at all" * 100)
    with pytest.raises(ConfigError, match=r"ledger_dir.*not a pathoai-memobs ledger"):
        MemoryMonitor(MemoryConfig(ledger_dir=str(tmp_path)), sampler=Scripted(0))
    with pytest.raises(ConfigError, match="ledger_dir"):
        MemoryConfig(ledger_dir="a\0b")


def test_the_multiprocess_directory_is_the_ledgers_when_none_is_set(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    config = MemoryConfig.from_env(env)
    assert config.ledger_dir == str(tmp_path)
    assert config.source_of("ledger_dir") == "env:PROMETHEUS_MULTIPROC_DIR"
    own = MemoryConfig.from_env({**env, "MEMORY_LEDGER_DIR": "/elsewhere"})
    assert own.ledger_dir == "/elsewhere" and own.source_of("ledger_dir") == "env:MEMORY_LEDGER_DIR"
    assert MemoryConfig.from_env({}).ledger_dir == ""


def test_each_process_publishes_its_session_bytes_and_a_dead_ones_go(tmp_path: Path) -> None:
    """The session budget counts every worker's sessions, not only its own."""
    published = FORK.Event()

    def worker() -> None:
        ledger = SharedLedger(str(tmp_path))
        with ledger.transaction():
            ledger.sessions(300 * MIB)
        published.set()
        signal.pause()

    child = FORK.Process(target=worker)
    child.start()
    assert published.wait(10)
    here = SharedLedger(str(tmp_path))
    with here.transaction():
        assert here.sessions(200 * MIB) == 500 * MIB
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(10)
    with here.transaction():
        here.reap()
        assert here.sessions(200 * MIB) == 200 * MIB

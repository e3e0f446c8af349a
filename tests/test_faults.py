"""Faults the library must survive: misbehaving callbacks, source files that turn to
garbage and come back, signals inside collections and emergency runs, fork after start."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import threading
import time
import types
from pathlib import Path

import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.gc_pauses import GC_PAUSES
from pathoai_memobs.pressure import Level

from .fstree import GIB, MIB, v2_tree
from .reliability import tally
from .scripted import Scripted, wait_for

CURRENT = "sys/fs/cgroup/a/memory.current"


def test_raising_hanging_and_allocating_callbacks_in_one_run() -> None:
    s = Scripted(300 * MIB)
    m = MemoryMonitor(MemoryConfig(), sampler=s, callback_budget_s=0.2)
    release = threading.Event()

    def raises() -> None:
        raise MemoryError("the callback itself ran out")

    def allocates() -> None:
        held = bytearray(200 * MIB)  # a working buffer, freed on return
        del held
        s.available += GIB

    m.register_cleanup_callback(raises, name="raises", priority=1)
    m.register_cleanup_callback(lambda: release.wait(5), name="hangs", priority=2)
    m.register_cleanup_callback(allocates, name="allocates", priority=3)
    run = m.run_emergency_cleanup()
    release.set()
    assert run is not None and run.restored
    status = {st.name: st.status.value for st in run.steps}
    assert status == {"raises": "failed", "hangs": "overran", "allocates": "ok"}
    tally("faults survived", 3)


def test_source_files_that_turn_to_garbage_and_come_back(tmp_path: Path) -> None:
    v2_tree(tmp_path, current=512 * MIB, inactive_file=0, limits={"/a": str(2 * GIB)}, path="/a")
    m = MemoryMonitor(MemoryConfig(monitoring_interval_sec=0.02), root=str(tmp_path))
    m.start()
    try:
        wait_for(lambda: m.samples_total > 5)
        for garbage in ("", "garbage\n", "536870912garbage\n", "-1\n", "\x00\x01"):
            (tmp_path / CURRENT).write_text(garbage)
            before = m.errors_total.get("sample", 0)
            wait_for(lambda b=before: m.errors_total.get("sample", 0) > b)
            assert m.running
            (tmp_path / CURRENT).write_text(str(1900 * MIB))  # back, and now short
            wait_for(lambda: m.level is Level.EMERGENCY)
            (tmp_path / CURRENT).write_text(str(512 * MIB))
            wait_for(lambda: m.level is Level.NORMAL)
            tally("faults survived")
    finally:
        m.stop()


def test_signals_inside_collections_leave_the_pause_histogram_consistent() -> None:
    installed = GC_PAUSES.install()
    others = [cb for cb in gc.callbacks if cb is not GC_PAUSES]  # hypothesis adds a Python one
    gc.callbacks[:] = [GC_PAUSES]
    delivered = [0]

    def churn() -> None:  # cycles, and collections of them, all the time
        junk = [[i] for i in range(2000)]
        for a, b in itertools.pairwise(junk):
            a.append(b)
        gc.collect(0)

    def handler(signum: int, frame: types.FrameType | None) -> None:
        delivered[0] += 1
        # As Ctrl-C inside churn() (whose caller catches it); not in a finaliser a collection
        # happens to run, nor in the loop around it (Python could not catch it there).
        if delivered[0] % 7 == 0 and frame is not None and frame.f_code is churn.__code__:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, handler)
    interrupted = 0
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            try:
                churn()
            except KeyboardInterrupt:
                interrupted += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.callbacks[:] = [*others, *([] if installed else [GC_PAUSES])]
    started = time.monotonic()
    snap = GC_PAUSES.snapshot()
    assert time.monotonic() - started < 1  # never a reader spinning on an odd version
    for g in range(3):
        assert sum(snap.buckets[g]) == snap.count[g]
    assert delivered[0] > 10
    tally("signals delivered during collections", delivered[0])


def test_an_interrupt_out_of_an_emergency_run_leaves_the_next_run_possible() -> None:
    s = Scripted(300 * MIB)
    m = MemoryMonitor(MemoryConfig(), sampler=s, emergency_cooldown_s=0)
    main = threading.get_ident()
    previous = signal.signal(signal.SIGUSR1, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))

    def slow() -> None:  # in its own thread, while the run waits for it in the main thread
        signal.pthread_kill(main, signal.SIGUSR1)  # so the signal lands inside the run
        time.sleep(0.3)

    m.register_cleanup_callback(slow, name="slow")
    try:
        with pytest.raises(KeyboardInterrupt):
            m.run_emergency_cleanup()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    m.unregister_cleanup_callback("slow")
    s.available = GIB
    run = m.run_emergency_cleanup()  # not refused as "already running"
    assert run is not None
    tally("faults survived")


def test_fork_after_start() -> None:
    sessions = SessionManager()
    m = MemoryMonitor(MemoryConfig(monitoring_interval_sec=0.05), sessions=sessions)
    m.start()
    try:
        wait_for(lambda: m.samples_total > 2)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the parent's thread is gone; everything must still work
            code = 1
            try:
                assert not m.running
                assert m.check_memory_available(1)
                sid = sessions.create_session()
                sessions.update_session(sid, x=b"1" * 1000)
                m.start()
                before = m.samples_total
                deadline = time.monotonic() + 5
                while m.samples_total <= before and time.monotonic() < deadline:
                    time.sleep(0.02)
                m.stop()
                code = 0 if m.samples_total > before and not m.running else 2
            finally:
                os.write(write, bytes([code]))
                os._exit(code)
        os.close(write)
        result = os.read(read, 1)
        os.close(read)
        _, status = os.waitpid(pid, 0)
        assert result == b"\x00" and os.waitstatus_to_exitcode(status) == 0
        before = m.samples_total
        wait_for(lambda: m.samples_total > before)  # the parent's thread never noticed
        assert m.running and len(sessions) == 0
    finally:
        m.stop()
    tally("faults survived")

"""New work in one worker waits for sessions another worker holds: it posts what it lacks in
the shared ledger, the other worker spills its idle sessions (nothing lost) and publishes
what is left, and the first is admitted. Two real processes over one ledger file."""

from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.ledger import LocalLedger, SharedLedger
from pathoai_memobs.reading import Reading, combine
from pathoai_memobs.spill_store import SpillStore

MIB = 1 << 20
GIB = 1 << 30
FORK = multiprocessing.get_context("fork")


def test_a_want_is_the_largest_current_one_and_expires(tmp_path: Path) -> None:
    ledger = SharedLedger(str(tmp_path))
    with ledger.transaction():
        ledger.want(100, now=10.0, ttl_s=1.0)
        ledger.want(60, now=10.2, ttl_s=1.0)  # smaller: the larger stands, renewed
        assert ledger.wanted(11.1) == 100
        ledger.served(40)
        assert ledger.wanted(11.1) == 60 and ledger.wanted(11.3) == 0  # expired
        ledger.want(30, now=12.0, ttl_s=1.0)  # after expiry: only the new one
        assert ledger.wanted(12.5) == 30
    local = LocalLedger()
    local.want(100, 0.0, 1.0)
    assert local.wanted(0.5) == 0  # one process: nobody else holds sessions


def test_a_want_carries_since_when_its_oldest_request_waits(tmp_path: Path) -> None:
    """The order across workers: a worker spills sessions its own requests wait for only
    for a want older than all of them (Freeing.for_peers)."""
    ledger = SharedLedger(str(tmp_path))
    with ledger.transaction():
        assert ledger.wanted_since(0.0) == math.inf  # nothing asked
        ledger.want(100, now=10.0, ttl_s=1.0, since=9.0)
        ledger.want(50, now=10.1, ttl_s=1.0, since=9.5)  # a younger request: 9.0 stands
        assert ledger.wanted_since(10.5) == 9.0
        ledger.want(50, now=10.2, ttl_s=1.0)  # new work: waits behind every session request
        assert ledger.wanted_since(10.5) == 9.0 and ledger.wanted_since(11.3) == math.inf
        ledger.want(10, now=12.0, ttl_s=1.0)  # after expiry, new work alone: never older
        assert ledger.wanted(12.5) == 10 and ledger.wanted_since(12.5) == math.inf
    assert LocalLedger().wanted_since(0.0) == math.inf


class Container:
    """A 4 GiB container whose used memory is a fixed rest plus every worker's session
    bytes as the shared ledger has them, read by each worker."""

    def __init__(self, directory: str, rest: int) -> None:
        self.ledger, self.rest = SharedLedger(directory), rest
        self.sessions: SessionManager | None = None

    def sample(self) -> Reading:
        own = self.sessions.total_bytes if self.sessions is not None else 0
        with self.ledger.transaction():
            held = self.ledger.sessions(own)
        avail = 4 * GIB - self.rest - held
        return combine(4 * GIB, avail, None, None, None, 0, time.time(), time.monotonic())


def worker_monitor(directory: str, sessions: SessionManager) -> MemoryMonitor:
    """One worker's monitor over the shared container and ledger, keeping room for 2000 MiB."""
    container = Container(directory, 500 * MIB)
    container.sessions = sessions
    config = MemoryConfig(ledger_dir=directory, enable_background_monitoring=False)
    monitor = MemoryMonitor(config, sampler=container, sessions=sessions)
    monitor.gate.budget.keep_room_for(2000 * MIB)
    return monitor


def worker(directory: str, spill_dir: str, ready: Any, done: Any, report: Any) -> None:
    """The other worker: one idle 600 MiB session, serving the ledger's wants."""
    now = [0.0]
    store = SpillStore(spill_dir, max_bytes=2 * GIB, encrypt=False)
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0], spill=store)
    monitor = worker_monitor(directory, sessions)
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.full(600 * MIB, 4, np.uint8))
    monitor.sample()  # publishes its session bytes
    now[0] += 5  # idle now
    ready.set()
    freed = 0
    while not done.is_set():
        freed += monitor.gate.serve_peers()
        time.sleep(0.05)
    data = sessions.get_session(sid)
    report.put(
        (freed, sessions.removed_total("budget"), int(data.data["slide"][0]) if data else -1)
    )


def test_new_work_waits_for_another_workers_idle_sessions_to_be_spilled(tmp_path: Path) -> None:
    directory = str(tmp_path / "ledger")
    Path(directory).mkdir()
    ready, done, report = FORK.Event(), FORK.Event(), FORK.Queue()
    other = FORK.Process(
        target=worker, args=(directory, str(tmp_path / "spill"), ready, done, report)
    )
    other.start()
    try:
        assert ready.wait(30)
        monitor = worker_monitor(directory, SessionManager(max_memory_gb=1))  # holds none
        # budget: 4096 - 500 floor - 2000 kept - 500 rest = 1096 MiB; 600 held + 700 > it
        started = time.monotonic()
        with monitor.reserve(700, new_work=True, wait_s=10):
            waited = time.monotonic() - started
    finally:
        done.set()
        other.join(30)
    freed, evicted, first_byte = report.get(timeout=10)
    assert other.exitcode == 0
    assert freed > 599 * MIB and evicted == 0  # spilled there, not evicted: nothing lost
    assert first_byte == 4  # and it comes back intact
    assert waited < 5

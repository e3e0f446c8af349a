"""A bounded concurrency soak: 16 threads of mixed session operations, reservations,
scrapes and collections, then exact totals."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest

from pathoai_memobs import (
    GarbageCollectionManager,
    InsufficientMemoryError,
    MemoryConfig,
    MemoryMonitor,
    SessionManager,
    SessionNotFoundError,
)
from pathoai_memobs.exporters.prometheus import instrument

from .reliability import tally
from .scripted import Scripted

MIB = 1 << 20
THREADS = 16
SECONDS = 3.0


class Parts:
    """What the threads share, and one random operation on it."""

    def __init__(self) -> None:
        self.sessions = SessionManager()
        # Tight: about 700 MiB above the floor, so some reservations are refused.
        self.monitor = MemoryMonitor(MemoryConfig(), sampler=Scripted(1200 * MIB),
                                     sessions=self.sessions)  # fmt: skip
        self.gcm = GarbageCollectionManager()
        self.registry = CollectorRegistry()
        instrument(self.monitor, self.sessions, self.gcm, registry=self.registry)

    def one(self, rng: random.Random, ids: list[str], mine: Counter[str]) -> None:
        sessions, op = self.sessions, rng.randrange(8)
        if op == 0:
            ids.append(sessions.create_session())
            mine["created"] += 1
        elif op == 1 and ids:
            try:
                sessions.update_session(rng.choice(ids), blob=bytes(rng.randrange(4096)))
            except SessionNotFoundError:
                mine["gone"] += 1
        elif op == 2 and ids:
            mine["deleted"] += sessions.delete_session(ids.pop())
        elif op == 3:
            try:
                with self.monitor.reserve(rng.choice([1, 50, 300])):
                    mine["admitted"] += 1
            except InsufficientMemoryError:
                mine["refused"] += 1
        elif op == 4:
            assert b"pathoai_sessions_active" in generate_latest(self.registry)
            mine["scrapes"] += 1
        elif op == 5 and rng.random() < 0.05:
            self.gcm.collect_with_stats(0)
            mine["collections"] += 1
        elif op == 6 and ids:
            try:
                with sessions.use(ids[-1]):
                    mine["pinned"] += 1
            except SessionNotFoundError:
                mine["gone"] += 1
        else:
            sessions.evict_least_recently_used(0)


def test_sixteen_threads_of_everything_and_exact_totals() -> None:
    parts = Parts()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []
    deadline = time.monotonic() + SECONDS

    def worker(seed: int) -> None:
        rng, mine, ids = random.Random(seed), Counter[str](), list[str]()
        try:
            while time.monotonic() < deadline:
                parts.one(rng, ids, mine)
        except BaseException as exc:
            errors.append(exc)
        with lock:
            counts.update(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 30)
    assert not errors, errors[:3]
    sessions, monitor = parts.sessions, parts.monitor
    agg = sessions.aggregates()
    removed = sum(agg.removed_total.values())
    assert agg.created_total == counts["created"] == removed + len(sessions)
    assert agg.removed_total.get("explicit", 0) == counts["deleted"]
    assert monitor.reserved_bytes == 0
    assert monitor.requests_rejected_total == counts["refused"]
    assert parts.gcm.triggered["manual"] == counts["collections"]
    assert sessions.recount_from_scratch() == agg.total_bytes
    assert counts["admitted"] > 0 and counts["scrapes"] > 0
    tally("soak operations", sum(counts.values()))
    tally("soak totals checked", 7)

"""/debug/memory at 10,000 sessions, and what tracemalloc costs a request while it traces.

Summary: ``DebugMemory.summary()`` (the reading, the charge breakdown, the allocator, the
collector's statistics, the ten largest sessions with their largest values) over 10,000
live sessions. Tracing: a request (admitted for 8 MiB, reads its session, allocates a
1 MiB array and a few hundred small objects, stores a result) with tracemalloc tracing 10
frames, against the same request untraced, in alternating rounds.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.debug_memory import DebugMemory

from .harness import Row, interleaved, progress

TITLE = "/debug/memory: the summary at 10,000 sessions, and tracemalloc's cost on a request"
TARGET_MS = 20.0


def run() -> tuple[list[Row], str]:
    progress("10,000 sessions")
    sessions = SessionManager()
    monitor = MemoryMonitor(MemoryConfig(enable_background_monitoring=False), sessions=sessions)
    for size in np.random.default_rng(0).integers(1, 4096, 10_000):
        sessions.update_session(sessions.create_session(), data=bytes(int(size)))
    view = DebugMemory(monitor)
    summary, _ = interleaved(view.summary, None, number=20, rounds=11)
    sid = sessions.create_session()

    def request() -> None:
        with monitor.reserve(8):
            data = sessions.get_session(sid)
            assert data is not None
            work = np.ones(1 << 20, np.uint8)
            scores = [{"tile": i, "score": float(i)} for i in range(300)]
            sessions.update_session(sid, result=int(work[0]) + len(scores))

    def traced() -> None:
        tracemalloc.start(10)
        try:
            for _ in range(20):
                request()
        finally:
            tracemalloc.stop()

    def plain() -> None:
        for _ in range(20):
            request()

    progress("a request, traced and untraced")
    t, p = interleaved(traced, plain, number=5, rounds=11)
    rows = [
        Row("/debug/memory summary, 10,000 sessions", summary * 1e3, None, "ms",
            f"< {TARGET_MS:g} ms", summary * 1e3 < TARGET_MS),
        Row("a request while tracemalloc traces (10 frames)", t / 20 * 1e3, (p or 0) / 20 * 1e3,
            "ms", "(reported)", None, "the same request untraced"),
    ]  # fmt: skip
    notes = (
        "The request's ratio is the price of ?action=trace while it runs (it stops by itself "
        "after its seconds); the summary is what one GET /debug/memory costs the service."
    )
    return rows, notes

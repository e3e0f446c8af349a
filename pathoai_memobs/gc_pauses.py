"""A pause figure for every collection the interpreter runs, taken without a lock.

``gc.callbacks`` run inside the collector: a lock taken there can deadlock against a thread
that holds it and allocates (prometheus_client removed its GC metric for this reason). The
timer below only writes plain lists; collections never overlap (the collector runs one at a
time), so there is a single writer. Readers copy the lists and check a version counter the
writer bumps before and after each update (a seqlock): a torn copy is simply retried.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

#: Histogram bucket upper bounds in seconds, 0.1 ms to 10 s.
PAUSE_BUCKETS: Final[tuple[float, ...]] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
GENERATIONS: Final = 3
#: Recent pauses kept one by one (for exporters that record each value, e.g. OpenTelemetry).
RING: Final = 8192


@dataclass(frozen=True)
class PauseSnapshot:
    """A consistent copy of the pause histogram, per generation.

    ``buckets[g][i]`` counts the collections of generation ``g`` that took at most
    ``PAUSE_BUCKETS[i]`` seconds (non-cumulative; the last slot is over 10 s).
    """

    buckets: tuple[tuple[int, ...], ...]
    count: tuple[int, ...]
    sum_seconds: tuple[float, ...]
    collected: tuple[int, ...]
    uncollectable: tuple[int, ...]
    last_seconds: float
    last_generation: int

    @property
    def total_count(self) -> int:
        return sum(self.count)

    @property
    def total_seconds(self) -> float:
        return sum(self.sum_seconds)

    def cumulative(self, generation: int) -> list[int]:
        """Cumulative bucket counts of one generation (Prometheus ``le`` order, +Inf last)."""
        return list(accumulate(self.buckets[generation]))


class PauseTimer:
    """Times every collection through ``gc.callbacks`` and keeps a histogram by generation."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self._clock = clock
        self._start = 0.0
        self._version = 0  # odd while the writer is updating
        nb = len(PAUSE_BUCKETS) + 1
        self._buckets = [[0] * nb for _ in range(GENERATIONS)]
        self._count = [0] * GENERATIONS
        self._sum = [0.0] * GENERATIONS
        self._collected = [0] * GENERATIONS
        self._uncollectable = [0] * GENERATIONS
        self._last = (0.0, -1)
        self._ring = [0.0] * RING
        self._ring_gen = [0] * RING
        self._written = 0

    # The callback: no lock, no allocation beyond a float, no I/O.
    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = self._clock()
            return
        elapsed = self._clock() - self._start
        g = info.get("generation", 2)
        self._version += 1
        self._buckets[g][bisect_left(PAUSE_BUCKETS, elapsed)] += 1
        self._count[g] += 1
        self._sum[g] += elapsed
        self._collected[g] += info.get("collected", 0)
        self._uncollectable[g] += info.get("uncollectable", 0)
        self._last = (elapsed, g)
        slot = self._written % RING
        self._ring[slot] = elapsed
        self._ring_gen[slot] = g
        self._written += 1
        self._version += 1

    def recent(self, since: int) -> tuple[list[tuple[float, int]], int, int]:
        """Pauses timed after the first ``since``: ([(seconds, generation)], new since, lost).

        Read without a lock, outside the collector; ``lost`` counts pauses that were
        overwritten before this read (more than RING collections since the last one).
        """
        written = self._written
        start = max(since, written - RING)
        out = [(self._ring[i % RING], self._ring_gen[i % RING]) for i in range(start, written)]
        return out, written, start - since

    @property
    def installed(self) -> bool:
        return any(cb is self for cb in gc.callbacks)

    def install(self) -> bool:
        """Add to ``gc.callbacks`` once; True if it was added now."""
        if self.installed:
            return False
        gc.callbacks.append(self)
        return True

    def uninstall(self) -> None:
        gc.callbacks[:] = [cb for cb in gc.callbacks if cb is not self]

    def snapshot(self) -> PauseSnapshot:
        """A consistent copy; safe from any thread while collections go on."""
        while True:
            before = self._version
            if before & 1:
                time.sleep(0)  # the writer is mid-update: let it finish
                continue
            snap = PauseSnapshot(
                buckets=tuple(tuple(b) for b in self._buckets),
                count=tuple(self._count),
                sum_seconds=tuple(self._sum),
                collected=tuple(self._collected),
                uncollectable=tuple(self._uncollectable),
                last_seconds=self._last[0],
                last_generation=self._last[1],
            )
            if self._version == before:
                return snap


#: The process-wide timer: ``gc.callbacks`` is global, so one timer serves every manager.
GC_PAUSES: Final = PauseTimer()

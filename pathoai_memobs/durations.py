"""Durations: how long each operation of a kind took, as a histogram over fixed buckets
(for Prometheus) and as the latest ones in order (for exporters that record each, such as
OpenTelemetry histograms, which drain them with ``since``). Thread-safe, bounded."""

from __future__ import annotations

import collections
import threading
from bisect import bisect_left
from typing import Final

#: Upper bounds (seconds) for disk operations: a 4 MiB buffer to a 1 GiB session.
IO_BUCKETS: Final[tuple[float, ...]] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Durations:
    """Per operation: non-cumulative bucket counts, the sum, and the last ``keep`` seen."""

    def __init__(self, operations: tuple[str, ...], bounds: tuple[float, ...] = IO_BUCKETS,
                 keep: int = 1024) -> None:  # fmt: skip
        self.operations, self.bounds = operations, bounds
        self._lock = threading.Lock()
        self._buckets = {op: [0] * (len(bounds) + 1) for op in operations}
        self._sums = dict.fromkeys(operations, 0.0)
        self._recent: collections.deque[tuple[int, str, float]] = collections.deque(maxlen=keep)
        self._seq = 0

    def record(self, operation: str, seconds: float) -> None:
        with self._lock:
            self._buckets[operation][bisect_left(self.bounds, seconds)] += 1
            self._sums[operation] += seconds
            self._seq += 1
            self._recent.append((self._seq, operation, seconds))

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """Each operation's bucket counts (non-cumulative) and sum of seconds."""
        with self._lock:
            return {op: (list(self._buckets[op]), self._sums[op]) for op in self.operations}

    def since(self, seq: int) -> tuple[list[tuple[str, float]], int]:
        """The durations recorded after ``seq`` (as far as kept) and the new ``seq``."""
        with self._lock:
            return [(op, s) for n, op, s in self._recent if n > seq], self._seq

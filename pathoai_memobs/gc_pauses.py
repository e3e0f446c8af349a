"""A pause figure for every collection the interpreter runs, taken without a lock and
without running bytecode inside the collector.

``gc.callbacks`` run inside the collector. A lock taken there can deadlock against a thread
that holds it and allocates (prometheus_client removed its GC metric for this reason), and
any Python callable there lets the eval loop hand the GIL to another thread in the middle
of a collection, while no other collection can start: with a few threads making garbage,
collections fall a thousandfold and memory grows. So the timer is the compiled
``_rest.GcTimer``: a C callable that writes into an int64 buffer under a seqlock (the
version is odd only between plain stores, so it can never be left odd). Where the
extension is not built, ``install()`` installs nothing unless asked (``python=True``), says
so once, and exporters still publish the collection counts (``gc.get_stats()``) without
durations.
"""

from __future__ import annotations

import functools
import gc
import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from typing import Final

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


#: The buffer layout, shared with _rest.c: a header, one row per generation, the ring.
_VERSION, _START, _LAST_NS, _LAST_GEN, _WRITTEN, _HEAD = 0, 1, 2, 3, 4, 8
_NB = len(PAUSE_BUCKETS) + 1
_STRIDE = 5 + _NB  # count, sum_ns, collected, uncollectable, (spare), buckets
_RING_AT = _HEAD + GENERATIONS * _STRIDE
_SLOTS = _RING_AT + 2 * RING
_BOUNDS_NS = tuple(round(b * 1e9) for b in PAUSE_BUCKETS)
#: A reader retries a torn copy at most this often, then takes the last consistent one.
_READ_TRIES = 1000


class _PythonWriter:
    """The same writer in Python, for ``install(python=True)`` only (see above)."""

    def __init__(self, slots: array[int], bounds_ns: tuple[int, ...], ring: int) -> None:
        self._slots = slots  # the bounds and ring size are the module's, as _write uses

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        g = self._slots
        if phase == "start":
            g[_START] = time.monotonic_ns()
            return
        gen = info.get("generation", -1) if isinstance(info, dict) else -1
        if not isinstance(gen, int) or not 0 <= gen < GENERATIONS:
            return  # never fail a collection
        elapsed = max(0, time.monotonic_ns() - g[_START])
        _write(g, gen, elapsed, info.get("collected", 0), info.get("uncollectable", 0))


def _write(g: array[int], gen: int, elapsed_ns: int, collected: int, uncollectable: int) -> None:
    """One pause into the layout, as _rest.c writes it; the version is even again whatever
    happens in between (a signal's KeyboardInterrupt included)."""
    row = _HEAD + gen * _STRIDE
    g[_VERSION] += 1
    try:
        g[row] += 1
        g[row + 1] += elapsed_ns
        g[row + 2] += max(0, int(collected))
        g[row + 3] += max(0, int(uncollectable))
        g[row + 5 + bisect_left(_BOUNDS_NS, elapsed_ns)] += 1
        g[_LAST_NS], g[_LAST_GEN] = elapsed_ns, gen
        slot = g[_WRITTEN] % RING
        g[_RING_AT + slot], g[_RING_AT + RING + slot] = elapsed_ns, gen
        g[_WRITTEN] += 1
    finally:
        g[_VERSION] += 1


try:
    from ._rest import GcTimer as _Writer

    _COMPILED = True
except ImportError:  # built without a C compiler
    _Writer = _PythonWriter  # type: ignore[assignment,misc]
    _COMPILED = False


#: Whether collections are timed by the compiled, bytecode-free callback.
COMPILED: Final = _COMPILED


class PauseTimer(_Writer):
    """Times every collection through ``gc.callbacks`` and keeps a histogram by generation.

    Calling it is the callback itself (compiled where built, see the module docstring)."""

    def __init__(self) -> None:
        self._slots_buffer = array("q", bytes(8 * _SLOTS))
        super().__init__(self._slots_buffer, _BOUNDS_NS, RING)
        self._good = (0, self._slots_buffer[:_RING_AT])

    def record(self, generation: int, seconds: float, collected: int = 0) -> None:
        """Record one pause as the callback would (for tests and replays with a fake clock)."""
        if not 0 <= generation < GENERATIONS or not seconds >= 0:
            raise ValueError(f"generation must be 0..2 and seconds >= 0: {generation}, {seconds}")
        _write(self._slots_buffer, generation, round(seconds * 1e9), collected, 0)

    def recent(self, since: int) -> tuple[list[tuple[float, int]], int, int]:
        """Pauses timed after the first ``since``: ([(seconds, generation)], new since, lost).

        Read without a lock, outside the collector; ``lost`` counts pauses that were
        overwritten before this read (more than RING collections since the last one).
        """
        slots = self._slots_buffer
        written = slots[_WRITTEN]  # entries before it stay put unless lapped (RING later)
        start = max(since, written - RING)
        out: list[tuple[float, int]] = []
        first = start
        while first < written:  # at most two runs: before and after the ring wraps
            at = first % RING
            n = min(written - first, RING - at)
            ns = slots[_RING_AT + at : _RING_AT + at + n]
            gens = slots[_RING_AT + RING + at : _RING_AT + RING + at + n]
            out += [(v / 1e9, g) for v, g in zip(ns, gens, strict=True)]
            first += n
        return out, written, start - since

    @property
    def installed(self) -> bool:
        return any(cb is self for cb in gc.callbacks)

    def install(self, *, python: bool = False) -> bool:
        """Add to ``gc.callbacks`` once; True if it was added now. Without the compiled
        timer nothing is installed unless ``python`` (warned once)."""
        if self.installed:
            return False
        if not COMPILED and not python:
            _warn_uncompiled()
            return False
        gc.callbacks.append(self)
        return True

    def uninstall(self) -> None:
        gc.callbacks[:] = [cb for cb in gc.callbacks if cb is not self]

    def snapshot(self) -> PauseSnapshot:
        """A consistent copy; safe from any thread while collections go on, and never a wait
        without end (a torn copy is retried a bounded number of times)."""
        slots = self._slots_buffer
        for _ in range(_READ_TRIES):
            head = slots[:_RING_AT]  # one C-level copy
            if not head[_VERSION] & 1:
                self._good = (head[_VERSION], head)
                break
            time.sleep(0)
        head = self._good[1]
        rows = [head[_HEAD + g * _STRIDE : _HEAD + (g + 1) * _STRIDE] for g in range(GENERATIONS)]
        return PauseSnapshot(
            buckets=tuple(tuple(r[5:]) for r in rows),
            count=tuple(r[0] for r in rows),
            sum_seconds=tuple(r[1] / 1e9 for r in rows),
            collected=tuple(r[2] for r in rows),
            uncollectable=tuple(r[3] for r in rows),
            last_seconds=head[_LAST_NS] / 1e9,
            last_generation=head[_LAST_GEN] if head[_WRITTEN] else -1,
        )


@functools.cache
def _warn_uncompiled() -> None:
    from .logging import GC_TIMER_UNAVAILABLE, WARNING, emit  # noqa: PLC0415

    emit(
        WARNING,
        GC_TIMER_UNAVAILABLE,
        detail="the compiled GC pause timer is not built: collection counts are exported, "
        "durations are not (a Python gc callback would slow threaded collection)",
    )


#: The process-wide timer: ``gc.callbacks`` is global, so one timer serves every manager.
GC_PAUSES: Final = PauseTimer()

"""The monitor's rest loop in C: sleep, sample, check the rest band, with the GIL released.

At rest a 1 Hz monitor's cost is one wake a second. Woken from cold, the interpreter
alone costs about as much as the wake and the /proc read together, so where the
extension ``_rest`` is built the background thread waits in ``watch()`` instead, and comes
back to Python only for a decision: a kernel event, a reading outside the band, a failed
read, or a full step that is due. Where it is not built (no compiler at install time),
``NativeRest.create`` returns None and the monitor runs the same loop in Python. Both
read what ``MemorySampler.rest_sample`` reads.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Sequence

from .pressure import RestBand
from .readers.cgroup import CgroupSource
from .readers.system import MemorySampler
from .reading import Reading, combine

try:
    from . import _rest as _native
except ImportError:  # built without a C compiler: the Python loop serves
    _native = None  # type: ignore[assignment]

#: Why ``watch`` returned (the extension's codes).
DUE, EVENT, LEFT, ERROR, POLL = 0, 1, 2, 3, 4


def available() -> bool:
    """Whether the compiled rest loop is built into this installation."""
    return _native is not None


class NativeRest:
    """One monitor's compiled rest loop and the latest sample it published."""

    def __init__(self, sampler: MemorySampler) -> None:
        assert _native is not None
        self._watch = _native.watch
        self._snapshot = _native.snapshot
        self._sampler = sampler
        self._files = sampler.descriptors()
        self._source: CgroupSource | None = sampler.cgroup.source if sampler.cgroup else None
        self._slots = array("q", bytes(8 * _native.SLOTS))  # the seqlock and one sample
        self._latest: tuple[int, Reading | None] = (0, None)  # (count, reading), one attribute

    @classmethod
    def create(
        cls, sampler: object, clock: Callable[[], float], *, enabled: bool = True
    ) -> NativeRest | None:
        """A compiled loop for ``sampler``, or None where the Python loop must serve: not
        built, turned off, a synthetic sampler, or a clock other than ``time.monotonic``
        (the C loop stamps samples with CLOCK_MONOTONIC)."""
        if not (enabled and _native is not None and isinstance(sampler, MemorySampler)):
            return None
        if clock is not time.monotonic:
            return None
        return cls(sampler)

    def watch(
        self, pollfds: Sequence[tuple[int, int]], interval_s: float, samples: int, band: RestBand
    ) -> tuple[int, int, list[tuple[int, int]] | int]:
        """Up to ``samples`` times: sleep ``interval_s`` in poll(), sample, publish, check
        the band. (reason, samples taken, fired (fd, revents) pairs or an errno)."""
        return self._watch(
            pollfds,
            max(0, int(interval_s * 1000)),
            samples,
            self._files,
            (band.total_bytes, band.min_available_bytes, band.max_used_bytes),
            self._slots,
        )

    @property
    def samples_total(self) -> int:
        """Samples the loop has taken, in all its calls."""
        return self._snapshot(self._slots)[0]

    def latest(self) -> Reading | None:
        """The latest published sample as a Reading (None before the first)."""
        count, host_total, host_available, limit, working_set, wall_ns, mono_ns = self._snapshot(
            self._slots
        )
        seen, reading = self._latest
        if count != seen:
            reading = combine(
                host_total,
                host_available,
                self._source if working_set >= 0 else None,
                limit if limit >= 0 else None,
                working_set if working_set >= 0 else None,
                self._sampler.last_rss_bytes,  # rest samples don't read it, as rest_sample()
                wall_ns / 1e9,
                mono_ns / 1e9,
            )
            self._latest = (count, reading)  # one store: readers in other threads see a pair
        return reading

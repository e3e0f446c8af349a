"""Admission: which operations may start now, the bytes they hold, and how a refusal reads.

The rule itself is ``pressure.admits``: an operation needing ``required`` bytes starts when
``available - reserved - required >= floor`` and the level is below EMERGENCY. This
module keeps the state around it: the bytes reserved by admitted operations still in
flight, the refusal count, the rate-limited ``request_rejected`` log and the retry hint.
It does no I/O and starts no thread; the monitor hands it readings.

The monitor records a reading and admits against it in one acquisition of ``lock`` (this
part's, renewed in a forked child), so ``admit_locked`` expects the caller to hold it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .exceptions import InsufficientMemoryError, ReadingUnavailableError
from .forksafe import after_fork_in_child
from .logging import REQUEST_REJECTED, WARNING, RateLimit, emit
from .pressure import Level, admits, retry_after_s
from .reading import Reading
from .units import MIB


class Admission:
    """Reserved bytes and refusals for one monitor; ``lock`` also guards its readings."""

    def __init__(
        self, floor_bytes: int, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.floor_bytes = floor_bytes
        self.interval_s = interval_s
        self.lock = threading.Lock()
        after_fork_in_child(self._forked)
        self._reserved = 0
        self._rejected = 0
        self._log = RateLimit(1.0, clock)

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by admitted operations still in flight."""
        return self._reserved

    @property
    def rejected_total(self) -> int:
        """Operations refused since start."""
        return self._rejected

    def admit_locked(
        self, level: Level, available_bytes: int, required: int, *, hold: bool
    ) -> tuple[bool, int]:
        """Decide for ``required`` bytes (holding them when admitted and ``hold``); the
        caller holds the lock. (admitted, bytes reserved before this one)."""
        reserved = self._reserved
        admitted = level is not Level.EMERGENCY and admits(
            available_bytes, reserved, required, self.floor_bytes
        )
        if admitted and hold:
            self._reserved = reserved + required
        return admitted, reserved

    def fallback(self, last: Reading | None, now: float, error: BaseException) -> Reading:
        """The reading to admit on when a fresh one failed: the last good one while it is at
        most two intervals old (a second at least), else a typed refusal."""
        max_age = max(1.0, 2 * self.interval_s)
        if last is not None and now - last.monotonic <= max_age:
            return last
        with self.lock:
            self._rejected += 1
        raise ReadingUnavailableError(type(error).__name__, retry_after_s=math.ceil(max_age))

    def _forked(self) -> None:
        self.lock = threading.Lock()  # a request thread may have held it at the fork

    def release(self, required: int) -> None:
        """Give back what an admitted ``hold`` took."""
        with self.lock:
            self._reserved -= required

    def refuse(
        self, required: int, reading: Reading, reserved: int, level: Level, cooldown_left_s: float
    ) -> InsufficientMemoryError:
        """Count and log (at most once a second, with how many were held back) one refusal,
        and build its error with the retry hint."""
        with self.lock:
            self._rejected += 1
        hint = retry_after_s(level, self.interval_s, cooldown_left_s)
        held = self._log.allow()
        if held is not None:
            emit(
                WARNING,
                REQUEST_REJECTED,
                required_bytes=required,
                available_bytes=reading.available_bytes,
                reserved_bytes=reserved,
                pressure_level=level.name,
                retry_after_s=hint,
                suppressed=held,
            )
        return InsufficientMemoryError(
            required / MIB,
            reading.available_bytes / MIB,
            floor_mb=self.floor_bytes / MIB,
            reserved_mb=reserved / MIB,
            retry_after_s=hint,
        )

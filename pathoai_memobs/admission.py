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

import itertools
import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .exceptions import InsufficientGpuMemoryError, InsufficientMemoryError, ReadingUnavailableError
from .forksafe import after_fork_in_child
from .ledger import Ledger, LocalLedger
from .logging import REQUEST_REJECTED, WARNING, RateLimit, emit
from .pressure import Level, admits, retry_after_s
from .reading import Reading
from .units import MIB

#: Upper bounds (seconds) of the wait histogram: waits are bounded by the callers' wait_s.
WAIT_BUCKETS: Final[tuple[float, ...]] = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class GpuNeed:
    """A request's GPU bytes on one device, with that device's reading: free bytes, and the
    floor and level of its ladder. ``short`` is set when the device (not the host) refused."""

    device: int
    required: int
    free: int
    floor: int
    level: Level
    short: bool = False


class WaitStats:
    """How long holds waited in line (a histogram over ``WAIT_BUCKETS``), how many ran out
    (timeouts, which are refusals too), and how many were abandoned: the wait interrupted,
    mostly because the client went away (``gone``)."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(WAIT_BUCKETS) + 1)
        self.sum_s = 0.0
        self.timeouts = 0
        self.gone = 0

    def record(self, outcome: str, waited_s: float) -> None:
        """One wait that ended ``admitted``, in a ``timeout`` or ``gone``."""
        self.buckets[bisect_left(WAIT_BUCKETS, waited_s)] += 1
        self.sum_s += waited_s
        self.timeouts += outcome == "timeout"
        self.gone += outcome == "gone"


class Admission:
    """Reserved bytes and refusals for one monitor; ``lock`` also guards its readings."""

    def __init__(
        self,
        floor_bytes: int,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        ledger: Ledger | None = None,
    ) -> None:
        self.floor_bytes = floor_bytes
        self.ledger: Ledger = LocalLedger() if ledger is None else ledger
        self.interval_s = interval_s
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)  # a release, or the line moved
        after_fork_in_child(self._forked)
        self._reserved = 0
        self.gpu_reserved: dict[int, int] = {}  # this process's GPU holds, by device
        self._rejected = 0
        self._requests = 0
        self._log = RateLimit(1.0, clock)
        self._line: deque[int] = deque()  # tickets of the holds waiting, first come first
        self._aside: set[int] = set()  # tickets in line that others may pass (the budget)
        self._tickets = itertools.count(1)
        self._hold_s = 1.0  # how long a hold lasts, on average (EWMA): the retry hint's unit
        self.waits = WaitStats()

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by this monitor's admitted operations still in flight (the ledger
        holds every process's where it is shared)."""
        return self._reserved

    @property
    def rejected_total(self) -> int:
        """Operations refused since start."""
        return self._rejected

    @property
    def requests_total(self) -> int:
        """Admission decisions asked for since start (admitted or refused, each counted once)."""
        return self._requests

    @property
    def queue_length(self) -> int:
        """Holds waiting in line now."""
        return len(self._line)

    def count_request(self) -> None:
        with self.lock:
            self._requests += 1

    def admit_locked(
        self, level: Level, available_bytes: int, required: int, *, hold: bool, ticket: int = 0,
        gpu: GpuNeed | None = None,
    ) -> tuple[bool, int]:  # fmt: skip
        """Decide for ``required`` bytes (holding them when admitted and ``hold``); the
        caller holds the lock. A hold waits its turn: while others wait in line, only the
        first in line (``ticket``) may be admitted, so a stream of small requests never
        starves a large one. Reserved bytes are the ledger's: every worker's where it is
        shared, with a dead worker's released before a refusal counts them. ``gpu`` must
        fit its device the same way, in the same decision (``_gpu_fits``).
        (admitted, bytes reserved before this one)."""
        line = self._line
        ledger = self.ledger
        with ledger.transaction():
            reserved = ledger.total()
            if hold and line and self._head() != ticket:
                return False, reserved
            if level is Level.EMERGENCY:
                return False, reserved
            admitted = admits(available_bytes, reserved, required, self.floor_bytes)
            if not admitted and reserved > self._reserved and ledger.reap():
                reserved = ledger.total()
                admitted = admits(available_bytes, reserved, required, self.floor_bytes)
            if admitted and gpu is not None:
                admitted = self._gpu_fits(gpu)
            if admitted and hold:
                ledger.add(required)
                if gpu is not None:
                    ledger.gpu_add(gpu.device, gpu.required)
        if admitted and hold:
            self._reserved += required
            if gpu is not None:
                own = self.gpu_reserved
                own[gpu.device] = own.get(gpu.device, 0) + gpu.required
            if ticket in line:
                line.remove(ticket)
                self._changed.notify_all()
        return admitted, reserved

    def _gpu_fits(self, gpu: GpuNeed) -> bool:
        """The device's rule: below its EMERGENCY, ``free - GPU reserved - required >= its
        floor`` (every worker's GPU holds from the ledger, a dead worker's reaped first)."""
        ledger = self.ledger
        reserved = ledger.gpu_total(gpu.device)
        fits = gpu.level is not Level.EMERGENCY and admits(gpu.free, reserved, gpu.required,
                                                          gpu.floor)  # fmt: skip
        if not fits and reserved > self.gpu_reserved.get(gpu.device, 0) and ledger.reap():
            reserved = ledger.gpu_total(gpu.device)
            fits = gpu.level is not Level.EMERGENCY and admits(gpu.free, reserved, gpu.required,
                                                              gpu.floor)  # fmt: skip
        gpu.short = not fits
        return fits

    def _head(self) -> int:
        """The ticket whose turn it is: the first in line not set aside (0: none)."""
        aside = self._aside
        return next((t for t in self._line if t not in aside), 0)

    def hold_aside(self, ticket: int, *, aside: bool = True) -> None:
        """Let requests behind ``ticket`` pass it while it cannot start (or no longer)."""
        if ticket == 0 or (ticket in self._aside) == aside:
            return
        with self.lock:
            if aside:
                self._aside.add(ticket)
            else:
                self._aside.discard(ticket)
            self._changed.notify_all()

    def join(self) -> int:
        """A place at the end of the line; its ticket."""
        with self.lock:
            ticket = next(self._tickets)
            self._line.append(ticket)
            return ticket

    def position(self, ticket: int) -> int:
        """How many wait before ``ticket`` and may not be passed (-1 when not in line)."""
        with self.lock:
            line = self._line
            if ticket not in line:
                return -1
            ahead = itertools.islice(line, line.index(ticket))
            return sum(1 for t in ahead if t not in self._aside)

    def leave(self, ticket: int) -> None:
        """Give up a place (the wait ran out); the others move up."""
        with self.lock:
            self._aside.discard(ticket)
            if ticket in self._line:
                self._line.remove(ticket)
                self._changed.notify_all()

    def notify(self) -> None:
        """Wake the blocking waiters to look again (memory was freed)."""
        with self.lock:
            self._changed.notify_all()

    def wait_for_change(self, timeout_s: float) -> None:
        """Sleep until memory is released or the line moves, at most ``timeout_s``."""
        with self._changed:
            self._changed.wait(timeout_s)

    def retry_hint_s(self, ahead: int) -> int:
        """Whole seconds until a refused hold is likely to fit: the average hold for each
        one in line before it, and its own turn (1 s to 60 s)."""
        return max(1, min(60, math.ceil(self._hold_s * (ahead + 1))))

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
        self._changed = threading.Condition(self.lock)
        self._line.clear()  # the parent's waiters did not come along
        self._aside.clear()
        self._reserved = 0  # nor its requests in flight
        self.gpu_reserved = {}
        self.ledger.forked()

    def release(
        self, required: int, held_s: float | None = None, gpu: GpuNeed | None = None
    ) -> None:
        """Give back what an admitted ``hold`` took (held for ``held_s``, when known)."""
        with self.lock:
            with self.ledger.transaction():
                self.ledger.add(-required)
                if gpu is not None:
                    self.ledger.gpu_add(gpu.device, -gpu.required)
            self._reserved -= required
            if gpu is not None:
                self.gpu_reserved[gpu.device] -= gpu.required
            if held_s is not None:
                self._hold_s += 0.2 * (held_s - self._hold_s)
            self._changed.notify_all()

    def refuse(
        self,
        required: int,
        reading: Reading,
        reserved: int,
        level: Level,
        cooldown_left_s: float,
        *,
        ahead: int = -1,
        gpu: GpuNeed | None = None,
    ) -> InsufficientMemoryError:
        """Count and log (at most once a second, with how many were held back) one refusal,
        and build its error with the retry hint: from the line when it waited in one
        (``ahead`` were before it), else from the level. Where the GPU refused (``gpu``
        short), the error is InsufficientGpuMemoryError, at the device's level."""
        with self.lock:
            self._rejected += 1
        if gpu is not None and gpu.short:
            level = gpu.level
        hint = retry_after_s(level, self.interval_s, cooldown_left_s)
        if ahead >= 0 and level is not Level.EMERGENCY:
            hint = max(hint, self.retry_hint_s(ahead))
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
                **({"gpu": gpu.device, "gpu_required_bytes": gpu.required,
                    "gpu_free_bytes": gpu.free} if gpu is not None and gpu.short else {}),
            )  # fmt: skip
        if gpu is not None and gpu.short:
            with self.lock:
                reserved_gpu = self.ledger.gpu_total(gpu.device)
            return InsufficientGpuMemoryError(
                gpu.device, gpu.required / MIB, gpu.free / MIB, floor_mb=gpu.floor / MIB,
                reserved_mb=reserved_gpu / MIB, retry_after_s=hint,
            )  # fmt: skip
        return InsufficientMemoryError(
            required / MIB,
            reading.available_bytes / MIB,
            floor_mb=self.floor_bytes / MIB,
            reserved_mb=reserved / MIB,
            retry_after_s=hint,
        )

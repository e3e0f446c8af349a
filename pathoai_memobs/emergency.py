"""Emergency cleanup's core: a plan of steps, ``run_plan``, and the records it leaves.

A run is one action at a time, then a new measurement (as Ray's memory monitor does):
the user's callbacks in priority order, then the built-in steps, stopping as soon as
available memory is back above the target. ``run_plan`` is that loop over plain values
(steps, a measure, a clock), so tests drive it without threads or a monitor;
``emergency_cleanup.EmergencyCleanup`` owns the registry, the worker and the cooldown, and
builds the plan. Also here: running one user callback inside its time budget, and the
totals the exporters publish.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import accumulate
from typing import Final, NamedTuple

from .logging import (
    CLEANUP_CALLBACK_FAILED,
    CLEANUP_CALLBACK_OVERRAN,
    ERROR,
    WARNING,
    emit,
    raised_at,
)

CleanupCallback = Callable[[], object]

#: Upper bounds (seconds) of the run-duration histogram.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
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
    30.0,
)

#: A user callback that ran and freed nothing this many runs in a row is flagged (logged
#: once, and its pathoai_cleanup_callback_futile_runs gauge shows the streak).
FUTILE_AFTER: Final = 5

#: Names of the built-in steps, run after the user's callbacks in this order.
BUILTIN_STEPS: Final = ("expired_sessions", "full_collection", "evict_sessions")


@dataclass
class RegisteredCallback:
    """A user callback with its order; ``worker`` is its thread while it overruns."""

    name: str
    fn: CleanupCallback
    priority: int
    seq: int
    worker: threading.Thread | None = None


class StepStatus(Enum):
    """How one step ended: it ran, it raised, it overran its budget, or it was skipped
    (its previous run is still going)."""

    OK = "ok"
    FAILED = "failed"
    OVERRAN = "overran"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Step:
    """One step of a plan: a name for metrics and logs, and what to run."""

    name: str
    run: Callable[[], StepStatus]


@dataclass(frozen=True)
class StepResult:
    """What one step of a run did: time taken, bytes of available memory it won back."""

    name: str
    duration_s: float
    freed_bytes: int
    status: StepStatus = StepStatus.OK

    @property
    def ok(self) -> bool:
        return self.status is StepStatus.OK

    @property
    def overran(self) -> bool:
        return self.status is StepStatus.OVERRAN

    @property
    def skipped(self) -> bool:
        return self.status is StepStatus.SKIPPED


class PlanOutcome(NamedTuple):
    """What ``run_plan`` saw: the first and last available bytes and each step's result."""

    available_before: int
    available_after: int
    steps: tuple[StepResult, ...]


def run_plan(
    steps: Sequence[Step],
    measure: Callable[[], int],
    target_bytes: int,
    clock: Callable[[], float] = time.monotonic,
) -> PlanOutcome:
    """Run ``steps`` in order, measuring available bytes before the first and after each,
    until a measurement reaches ``target_bytes``. A step's freed bytes are what available
    memory gained across it (0 when other work took more meanwhile)."""
    before = available = measure()
    results: list[StepResult] = []
    for step in steps:
        if available >= target_bytes:
            break
        t0 = clock()
        status = step.run()
        after = measure()
        results.append(StepResult(step.name, clock() - t0, max(0, after - available), status))
        available = after
    return PlanOutcome(before, available, tuple(results))


@dataclass(frozen=True)
class EmergencyRun:
    """One emergency cleanup, from the reading that started it to the one that ended it."""

    reason: str
    started_at: float
    duration_s: float
    available_before: int
    available_after: int
    restored: bool
    steps: tuple[StepResult, ...]
    evicted_sessions: int = 0  # sessions this run removed

    @property
    def freed_bytes(self) -> int:
        """Available memory won back over the run (0 when other work took more meanwhile)."""
        return max(0, self.available_after - self.available_before)


def cooldown_after(run: EmergencyRun | None, cooldown_s: float) -> float:
    """Seconds the next run must wait after ``run``: the cooldown only when the run was
    futile (it ran steps, won nothing back and memory is still short) or could not read
    memory at all. A run that found memory already restored ran nothing and proves nothing,
    and one that evicted sessions did free them though allocation meanwhile hid the gain:
    holding the next after either let a steadily allocating process reach the OOM killer."""
    if run is None:
        return cooldown_s
    won = run.restored or run.freed_bytes > 0 or run.evicted_sessions > 0
    return 0.0 if won else cooldown_s


@dataclass
class EmergencyTotals:
    """Counters since start, for the exporters (a copy is handed out; never shared live)."""

    runs: int = 0
    freed_bytes: int = 0
    duration_sum_s: float = 0.0
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    callback_failures: Counter[str] = field(default_factory=Counter)
    callback_overruns: Counter[str] = field(default_factory=Counter)
    evicted_sessions: int = 0
    last: EmergencyRun | None = None
    #: Available memory each user callback won back, and for how many of its runs in a row
    #: it won back nothing (0 again once it frees something).
    callback_freed_bytes: Counter[str] = field(default_factory=Counter)
    callback_futile_runs: Counter[str] = field(default_factory=Counter)

    def record(self, run: EmergencyRun, callbacks: frozenset[str] = frozenset()) -> list[str]:
        """Count ``run``; the user callbacks (named in ``callbacks``) that have now freed
        nothing for ``FUTILE_AFTER`` runs in a row, to be flagged once per streak."""
        self.runs += 1
        self.freed_bytes += run.freed_bytes
        self.duration_sum_s += run.duration_s
        self.duration_buckets[bisect_left(DURATION_BUCKETS, run.duration_s)] += 1
        self.last = run
        flagged = []
        for step in run.steps:
            if step.name not in callbacks or step.status is not StepStatus.OK:
                continue
            self.callback_freed_bytes[step.name] += step.freed_bytes
            if step.freed_bytes > 0:
                self.callback_futile_runs[step.name] = 0
                continue
            self.callback_futile_runs[step.name] += 1
            if self.callback_futile_runs[step.name] == FUTILE_AFTER:
                flagged.append(step.name)
        return flagged

    def copy(self) -> EmergencyTotals:
        return EmergencyTotals(
            self.runs,
            self.freed_bytes,
            self.duration_sum_s,
            list(self.duration_buckets),
            Counter(self.callback_failures),
            Counter(self.callback_overruns),
            self.evicted_sessions,
            self.last,
            Counter(self.callback_freed_bytes),
            Counter(self.callback_futile_runs),
        )

    def cumulative_buckets(self) -> list[int]:
        """Cumulative counts per bound (Prometheus ``le`` order, +Inf last)."""
        return list(accumulate(self.duration_buckets))


def run_with_budget(
    cb: RegisteredCallback,
    budget_s: float,
    totals: EmergencyTotals,
    lock: threading.Lock,
    clock: Callable[[], float] = time.monotonic,
) -> StepStatus:
    """Run ``cb`` in its own thread, waiting at most ``budget_s``.

    A callback that raises is logged and counted. One that overruns is reported and left
    to finish on its own (a Python thread cannot be killed); until it does, later runs
    skip it rather than stack a second copy.
    """
    if cb.worker is not None and cb.worker.is_alive():
        return StepStatus.SKIPPED
    failed = threading.Event()

    def target() -> None:
        try:
            cb.fn()
        except Exception as exc:
            failed.set()
            with lock:
                totals.callback_failures[cb.name] += 1
            emit(  # type and place only: a message may hold a secret (see raised_at)
                ERROR,
                CLEANUP_CALLBACK_FAILED,
                callback=cb.name,
                error=type(exc).__name__,
                where=raised_at(exc),
            )

    worker = threading.Thread(target=target, name=f"pathoai-cleanup-{cb.name}", daemon=True)
    start = clock()
    worker.start()
    worker.join(budget_s)
    if worker.is_alive():
        cb.worker = worker
        with lock:
            totals.callback_overruns[cb.name] += 1
        emit(
            WARNING,
            CLEANUP_CALLBACK_OVERRAN,
            callback=cb.name,
            budget_s=budget_s,
            waited_s=round(clock() - start, 3),
        )
        return StepStatus.OVERRAN
    cb.worker = None
    return StepStatus.FAILED if failed.is_set() else StepStatus.OK

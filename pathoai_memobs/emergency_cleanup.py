"""EmergencyCleanup: the callback registry, the worker and its cooldown, and the plan.

The plan is data: the user's callbacks in priority order (each in its own thread within
its budget), then the built-in steps named by ``emergency.BUILTIN_STEPS``: expired
sessions, a full collection, least-recently-used eviction. ``emergency.run_plan`` runs it.
The cooldown holds the next run only after a futile one (``emergency.cooldown_after``): while
each run wins memory back, or finds it already restored, cleanup keeps up with the allocation.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .emergency import (
    BUILTIN_STEPS,
    FUTILE_AFTER,
    CleanupCallback,
    EmergencyRun,
    EmergencyTotals,
    RegisteredCallback,
    Step,
    StepStatus,
    cooldown_after,
    run_plan,
    run_with_budget,
)
from .forksafe import after_fork_in_child
from .logging import CLEANUP_CALLBACK_FUTILE, EMERGENCY_CLEANUP, WARNING, emit
from .reading import Reading
from .units import non_negative, positive

if TYPE_CHECKING:
    from .gc_manager import GarbageCollectionManager
    from .session_manager import SessionManager


def split_of(managed: int, reading: Reading) -> dict[str, int]:
    """The ``managed_bytes`` / ``unmanaged_bytes`` fields of an event: what is accounted
    for, and the rest of the working set."""
    return {"managed_bytes": managed, "unmanaged_bytes": max(0, reading.used_bytes - managed)}


#: Emergency runs kept one by one for exporters that record each run.
RUN_LOG = 64
WORKER_NAME = "pathoai-emergency-cleanup"


class EmergencyCleanup:
    """Runs emergency cleanups for one monitor: ``sample`` takes a fresh reading (and moves
    the monitor's level), ``target_bytes`` is the available memory a run aims for,
    ``sessions``/``gc_manager`` return what the built-in steps work on (or None), and
    ``count_error`` reports a failing built-in step. ``gpu_cleanup.GpuCleanup`` runs the
    same way for one GPU, with its own plan, measure and event."""

    event = EMERGENCY_CLEANUP

    def __init__(
        self,
        *,
        sample: Callable[[], Reading],
        target_bytes: int,
        sessions: Callable[[], SessionManager | None],
        gc_manager: Callable[[], GarbageCollectionManager | None],
        count_error: Callable[[str, BaseException], None],
        cooldown_s: float,
        callback_budget_s: float,
        clock: Callable[[], float] = time.monotonic,
        managed: Callable[[], int] = lambda: 0,
    ) -> None:
        self._sample = sample
        self._managed = managed  # the monitor's managed bytes, for the event
        self.target_bytes = target_bytes
        self._sessions = sessions
        self._gc_manager = gc_manager
        self._count_error = count_error
        self.cooldown_s = non_negative("emergency_cooldown_s", cooldown_s, maximum=86400)
        self.callback_budget_s = positive("callback_budget_s", callback_budget_s, maximum=3600)
        self._clock = clock
        self._lock = threading.Lock()  # registry, totals, run log, worker and cooldown
        self._run_lock = threading.Lock()  # held for a whole run: never two at once
        self._callbacks: list[RegisteredCallback] = []
        self._worker: threading.Thread | None = None
        self._next_start = 0.0
        self._totals = EmergencyTotals()
        self._runs: list[EmergencyRun] = []  # the last RUN_LOG runs
        self._runs_total = 0
        after_fork_in_child(self._forked)

    def _forked(self) -> None:
        """In a forked child: the parent's worker did not come along, nor may its locks."""
        self._lock, self._run_lock, self._worker = threading.Lock(), threading.Lock(), None

    # -- registry ---------------------------------------------------------------------------

    def register(self, fn: CleanupCallback, *, name: str, priority: int = 100) -> None:
        """Add a user step; lower ``priority`` runs first (ties: registration order)."""
        if not callable(fn):
            raise TypeError(f"cleanup callback must be callable, got {fn!r}")
        if not isinstance(name, str) or not name:
            raise ValueError("cleanup callback needs a non-empty name")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority must be an integer, got {priority!r}")
        with self._lock:
            if any(cb.name == name for cb in self._callbacks):
                raise ValueError(f"a cleanup callback named {name!r} is already registered")
            seq = len(self._callbacks)
            self._callbacks.append(RegisteredCallback(name, fn, priority, seq))
            self._callbacks.sort(key=lambda cb: (cb.priority, cb.seq))

    def unregister(self, name: str) -> bool:
        with self._lock:
            before = len(self._callbacks)
            self._callbacks = [cb for cb in self._callbacks if cb.name != name]
            return len(self._callbacks) != before

    @property
    def names(self) -> tuple[str, ...]:
        """Registered callback names, in the order they run."""
        with self._lock:
            return tuple(cb.name for cb in self._callbacks)

    # -- records ----------------------------------------------------------------------------

    @property
    def totals(self) -> EmergencyTotals:
        """A copy of the counters (runs, bytes freed, durations, failures)."""
        with self._lock:
            return self._totals.copy()

    def runs_since(self, since: int) -> tuple[list[EmergencyRun], int]:
        """Runs recorded after the first ``since`` (at most the last RUN_LOG), and the new
        ``since``."""
        with self._lock:
            total, runs = self._runs_total, list(self._runs)
        return runs[max(0, len(runs) - (total - since)) :] if total > since else [], total

    def cooldown_left_s(self) -> float:
        """Seconds until a new run may start (0 when it may now)."""
        return max(0.0, self._next_start - self._clock())

    # -- running ----------------------------------------------------------------------------

    def start(self, reason: str) -> None:
        """Run a cleanup in a worker thread unless one runs or the cooldown holds."""
        with self._lock:
            worker = self._worker
            if (worker is not None and worker.is_alive()) or self._clock() < self._next_start:
                return
            worker = threading.Thread(
                target=self.run, args=(reason,), name=WORKER_NAME, daemon=True
            )
            self._worker = worker
        worker.start()

    def run(self, reason: str = "manual") -> EmergencyRun | None:
        """One cleanup now, in this thread; None if one is already running, or if it could
        not read memory (counted as an ``emergency_run`` error)."""
        if not self._run_lock.acquire(blocking=False):
            return None
        run: EmergencyRun | None = None
        try:
            run = self._run(reason)
        except Exception as exc:  # a reading failed mid-run: counted, and the worker lives on
            self._count_error("emergency_run", exc)
        finally:
            self._run_lock.release()
        with self._lock:
            self._next_start = self._clock() + cooldown_after(run, self.cooldown_s)
        return run

    def plan(self) -> list[Step]:
        """The steps of a run, in order: user callbacks, then the built-in steps."""
        with self._lock:
            callbacks = list(self._callbacks)
        steps = [Step(cb.name, self._user_step(cb)) for cb in callbacks]
        builtin: dict[str, Callable[[], Any]] = {"full_collection": self._full_collection}
        if self._sessions() is not None:
            builtin["expired_sessions"] = self._expired_sessions
            builtin["evict_sessions"] = self._evict_sessions
        steps += [
            Step(name, self._builtin(builtin[name])) for name in BUILTIN_STEPS if name in builtin
        ]
        return steps

    def _run(self, reason: str) -> EmergencyRun:
        start = self._clock()
        started_at = time.time()
        evicted_before = self.totals.evicted_sessions
        outcome = run_plan(self.plan(), self._available, self.target_bytes, self._clock)
        run = EmergencyRun(
            reason,
            started_at,
            self._clock() - start,
            outcome.available_before,
            outcome.available_after,
            outcome.available_after >= self.target_bytes,
            outcome.steps,
            self.totals.evicted_sessions - evicted_before,
        )
        with self._lock:
            names = frozenset(cb.name for cb in self._callbacks)
            futile = self._totals.record(run, names)
            self._runs = [*self._runs[-(RUN_LOG - 1) :], run]
            self._runs_total += 1
        for name in futile:
            emit(WARNING, CLEANUP_CALLBACK_FUTILE, callback=name, runs=FUTILE_AFTER)
        emit(
            WARNING,
            self.event,
            reason=reason,
            restored=run.restored,
            freed_bytes=run.freed_bytes,
            duration_s=round(run.duration_s, 4),
            available_before=run.available_before,
            available_after=run.available_after,
            **self._event_fields(),
            steps=[
                {"name": s.name, "freed_bytes": s.freed_bytes, "duration_s": round(s.duration_s, 4)}
                | ({} if s.ok else {s.status.value: True})
                for s in run.steps
            ],
        )
        return run

    def _available(self) -> int:
        return self._sample().available_bytes

    def _event_fields(self) -> dict[str, object]:
        return dict(split_of(self._managed(), self._sample()))

    def _user_step(self, cb: RegisteredCallback) -> Callable[[], StepStatus]:
        return lambda: run_with_budget(
            cb, self.callback_budget_s, self._totals, self._lock, self._clock
        )

    def _builtin(self, fn: Callable[[], Any]) -> Callable[[], StepStatus]:
        """A built-in step: an error is counted and logged, and the run goes on."""

        def step() -> StepStatus:
            try:
                fn()
            except Exception as exc:
                self._count_error("emergency_step", exc)
                return StepStatus.FAILED
            return StepStatus.OK

        return step

    def _expired_sessions(self) -> None:
        sessions = self._sessions()
        if sessions is not None:
            sessions.cleanup_inactive_sessions()

    def _full_collection(self) -> None:
        manager = self._gc_manager()
        if manager is not None:
            manager.collect_with_stats(2, reason="emergency")
        else:
            gc.collect()

    def _evict_sessions(self) -> None:
        """Spill every unpinned session's large buffers where a spill store is set (nothing
        lost), then evict least-recently-used unpinned sessions, re-measuring after each."""
        sessions = self._sessions()
        if sessions is None:
            return
        while True:
            needed = self.target_bytes - self._available()
            if needed <= 0:
                return
            if sessions.spill_idle(needed, min_idle_s=0.0, waiting=True) > 0:
                continue  # re-measure: what went to disk may be enough
            before = sessions.removed_total("emergency")
            freed = sessions.evict_least_recently_used(needed, reason="emergency")
            evicted = sessions.removed_total("emergency") - before
            with self._lock:
                self._totals.evicted_sessions += evicted
            if evicted == 0:
                return  # nothing left that may be evicted (all pinned, or none)
            if freed == 0:
                gc.collect()  # sessions of zero accounted bytes: their memory is in cycles

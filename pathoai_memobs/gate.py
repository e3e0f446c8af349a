"""AdmissionGate: admit now, free idle memory and admit, or wait in line, then refuse.

A request that does not fit is not refused at once:

1. **Free before refusing.** Memory that no active request needs goes first: expired
   sessions, then idle sessions' large buffers spilled to disk where a spill store is set
   (nothing lost, so a session idle ``BUDGET_IDLE_S`` qualifies, and nothing is evicted
   here), else sessions idle for ``idle_free_s`` or more evicted (unpinned, least recently
   used first), as many as the request lacks; what is still lacking is asked of the other
   workers (``ledger.want``). Only one request frees at a time.
2. **Wait in line** (``wait_s`` > 0): in arrival order, until memory is released or freed,
   or the wait runs out. Only the first in line may be admitted, so small requests cannot
   starve a large one (``admission.Admission.admit_locked``). A blocking wait sleeps on the
   admission's condition; an async one polls without blocking the event loop.
3. **Refuse** with a retry hint from the line (how long holds last, how many wait ahead).

New work (a request for no existing session, ``new_work``) must also fit the session
budget (``session_budget``), after freeing least recently used unpinned sessions; while it
does not, it waits aside, and requests for existing sessions go ahead of it in line. What
it lacks beyond this worker's sessions it asks the other workers for through the shared
ledger (``ledger.want``); each serves that from its own idle sessions (``serve_peers``,
before each of its admissions and in its monitor's loop) and publishes what is left.

The decisions are the admission's and ``session_accounting.eviction_order``'s; this module
sequences them around fresh readings.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, cast

from .admission import Admission, GpuNeed
from .errors import ErrorCounts
from .pressure import Level
from .reading import Reading
from .session_budget import SessionBudget, over_budget

if TYPE_CHECKING:
    from .exceptions import InsufficientMemoryError
    from .session_manager import RemovalReason, SessionManager

#: A waiting request looks again at least this often (memory may be freed by anything).
POLL_S = 0.1
#: Sessions freed for the budget have been idle this long at least.
BUDGET_IDLE_S = 0.25
#: A want posted for other workers' sessions lasts this long unless renewed (a waiting
#: request renews it at each look, every POLL_S).
WANT_TTL_S = 1.0

Observe = Callable[[Reading, int, bool, int, "GpuNeed | None"], tuple[bool, int]]
#: GPU bytes a request asks for: (device, bytes), or None for none.
GpuAsk = tuple[int, int] | None


class AdmissionGate:
    """Admission with freeing and a fair line, for one monitor (see the module docstring)."""

    def __init__(
        self,
        *,
        sample: Callable[[], Reading],
        last: Callable[[], Reading | None],
        observe: Observe,
        level: Callable[[], Level],
        admission: Admission,
        errors: ErrorCounts,
        sessions: Callable[[], SessionManager | None],
        cooldown_left_s: Callable[[], float],
        start_cleanup: Callable[[str], None],
        idle_free_s: float,
        floor: Callable[[int], int],
        gpu: Callable[[int, int], GpuNeed] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sample, self._last, self._observe = sample, last, observe
        self._level, self._admission, self._errors = level, admission, errors
        self._sessions, self._cooldown_left_s = sessions, cooldown_left_s
        self._start_cleanup = start_cleanup
        self.idle_free_s = idle_free_s
        self._floor = floor  # the floor fitted to a limit
        self._gpu = gpu  # a device's free bytes, floor and level, read now
        self._clock = clock
        self._freeing = threading.Lock()
        self.start_gpu_cleanup: Callable[[int], None] | None = None  # set by the monitor
        self.freed_sessions = 0
        self.budget = SessionBudget()

    def admit(
        self, required: int, *, hold: bool, wait_s: float = 0.0, new_work: bool = False,
        gpu: GpuAsk = None,
    ) -> InsufficientMemoryError | None:  # fmt: skip
        """Admit ``required`` bytes (held when ``hold``), and ``gpu`` (device, bytes) in the
        same decision, freeing and waiting as above; the refusal, counted and logged, where
        it does not fit in time."""
        steps = self._steps(required, hold, wait_s, new_work, gpu)
        try:
            while True:
                self._admission.wait_for_change(next(steps))
        except StopIteration as done:
            return cast("InsufficientMemoryError | None", done.value)
        finally:  # interrupted while waiting: give the place in line up now
            steps.close()

    async def admit_async(
        self, required: int, *, wait_s: float, new_work: bool = False, gpu: GpuAsk = None
    ) -> InsufficientMemoryError | None:
        """``admit(required, hold=True, wait_s=...)`` for an event loop: the wait never
        blocks it (each look is a quick, non-blocking decision)."""
        steps = self._steps(required, True, wait_s, new_work, gpu)
        try:
            while True:
                await asyncio.sleep(next(steps))
        except StopIteration as done:
            return cast("InsufficientMemoryError | None", done.value)
        finally:  # cancelled (a client went away) while waiting: give the place up now
            steps.close()

    def _steps(
        self, required: int, hold: bool, wait_s: float, new_work: bool, gpu: GpuAsk = None
    ) -> Generator[float, None, InsufficientMemoryError | None]:
        """The decision, as a generator that yields how long to wait before looking again;
        it returns the refusal (or None). Sync and async callers differ only in the wait."""
        self._admission.count_request()
        self.serve_peers()  # another worker's new work may wait for sessions held here
        admitted, reading, reserved, need = self._try(required, hold, 0, new_work, gpu)
        if not admitted and self._free(required, reading, reserved, need):
            admitted, reading, reserved, need = self._try(required, hold, 0, new_work, gpu)
        if admitted:
            return None
        if not hold or wait_s <= 0:
            return self._refuse(required, reading, reserved, gpu=need)
        ticket, started = self._admission.join(), self._clock()
        try:
            while True:
                admitted, reading, reserved, need = self._try(required, hold, ticket, new_work,
                                                              gpu)  # fmt: skip
                if (not admitted and self._first(ticket)
                        and self._free(required, reading, reserved, need)):  # fmt: skip
                    admitted, reading, reserved, need = self._try(required, hold, ticket,
                                                                  new_work, gpu)  # fmt: skip
                if admitted:
                    self._waited("admitted", started)
                    return None
                left = started + wait_s - self._clock()
                if left <= 0:
                    return self._give_up(ticket, started, required, reading, reserved, need)
                yield min(left, POLL_S)
        except BaseException:  # interrupted while waiting (GeneratorExit included)
            self._admission.leave(ticket)
            raise

    @contextmanager
    def hold(
        self, required: int, wait_s: float, *, new_work: bool = False, gpu: GpuAsk = None
    ) -> Iterator[None]:
        """Admit and hold ``required`` bytes (and ``gpu``) for the block; a refusal raises."""
        error = self.admit(required, hold=True, wait_s=wait_s, new_work=new_work, gpu=gpu)
        if error is not None:
            raise error
        started = self._clock()
        try:
            yield
        finally:
            self._release(required, started, gpu)

    @asynccontextmanager
    async def hold_async(
        self, required: int, wait_s: float, *, new_work: bool = False, gpu: GpuAsk = None
    ) -> AsyncIterator[None]:
        """``hold`` for an event loop."""
        error = await self.admit_async(required, wait_s=wait_s, new_work=new_work, gpu=gpu)
        if error is not None:
            raise error
        started = self._clock()
        try:
            yield
        finally:
            self._release(required, started, gpu)

    def _release(self, required: int, started: float, gpu: GpuAsk) -> None:
        held = GpuNeed(gpu[0], gpu[1], 0, 0, Level.NORMAL) if gpu else None
        self._admission.release(required, self._clock() - started, held)
        self._publish()

    def _publish(self) -> None:
        """Publish this worker's session bytes once a request ends (an upload made one): the
        other workers' budgets would otherwise count it as the rest of the process until
        this worker next decides."""
        sessions = self._sessions()
        if sessions is not None and self.budget.active:
            ledger = self._admission.ledger
            with ledger.transaction():
                ledger.sessions(sessions.total_bytes)

    # -- steps ------------------------------------------------------------------------------

    def _try(
        self, required: int, hold: bool, ticket: int, new_work: bool = False, gpu: GpuAsk = None
    ) -> tuple[bool, Reading, int, GpuNeed | None]:
        """One decision against a fresh reading (or, where that fails, a recent one), and
        the GPU's where ``gpu`` asks for device bytes."""
        try:
            reading = self._sample()
        except (OSError, ValueError, KeyError) as exc:  # a counted error and a typed refusal
            self._errors.count("sample", exc)
            reading = self._admission.fallback(self._last(), time.monotonic(), exc)
        need = self._gpu(*gpu) if gpu and self._gpu is not None else None
        if new_work and not self._within_budget(required, reading):
            self._admission.hold_aside(ticket)  # requests for existing sessions go ahead
            _, reserved = self._observe(reading, 0, False, 0, None)  # the reading counts
            return False, reading, reserved, need
        self._admission.hold_aside(ticket, aside=False)
        admitted, reserved = self._observe(reading, required, hold, ticket, need)
        return admitted, reading, reserved, need

    def _within_budget(self, required: int, reading: Reading) -> bool:
        """Whether new work of ``required`` bytes fits the session budget, after freeing
        least recently used unpinned sessions (spilled, else evicted with reason "budget")
        to make it fit; what this worker cannot free it asks the other workers for."""
        sessions = self._sessions()
        if sessions is None or not self.budget.active:
            return True
        held, reserved, budget = self._budget(sessions, reading)
        need = over_budget(held + reserved, required, budget)  # in flight may become sessions
        if need == 0:
            return True
        with self._freeing:
            freed = self._free_idle(sessions, need)
        if freed < need:  # the rest are other workers' sessions: ask them (renewed per look)
            ledger = self._admission.ledger
            with ledger.transaction():
                ledger.want(need - freed, time.monotonic(), WANT_TTL_S)
        return over_budget(held - freed + reserved, required, budget) == 0

    @staticmethod
    def _free_idle(
        sessions: SessionManager, need: int, *, reason: RemovalReason = "budget",
        spill_idle_s: float = BUDGET_IDLE_S, evict_idle_s: float = BUDGET_IDLE_S,
    ) -> int:  # fmt: skip
        """Free ``need`` bytes of this worker's unpinned sessions, least recently used first:
        those idle ``spill_idle_s`` spilled where a store is set, and then never evicted, so
        nothing is lost (the request waits or is refused instead); without a store, those
        idle ``evict_idle_s`` evicted with ``reason``. The bytes freed. By default, for the
        budget: idle a moment at least, not one a request is filling now."""
        freed = sessions.spill_idle(need, min_idle_s=spill_idle_s)
        if freed < need and sessions.spill_store is None:
            freed += sessions.evict_least_recently_used(
                need - freed, reason=reason, min_idle_s=evict_idle_s
            )
        return freed

    def serve_peers(self) -> int:
        """Free this worker's idle sessions for new work another worker is waiting with
        (``ledger.want``), and publish what is left; the bytes freed. One mapped read when
        nobody waits; called from the monitor's loop and before each admission here."""
        sessions = self._sessions()
        ledger = self._admission.ledger
        if sessions is None or not self.budget.active or not ledger.wanted(time.monotonic()):
            return 0
        if not self._freeing.acquire(blocking=False):
            return 0
        try:
            with ledger.transaction():
                want = ledger.wanted(time.monotonic())
            freed = self._free_idle(sessions, min(want, sessions.total_bytes)) if want else 0
        finally:
            self._freeing.release()
        if freed:
            with ledger.transaction():
                ledger.served(freed)
                ledger.sessions(sessions.total_bytes)  # the waiting worker sees it at once
        return freed

    def budget_bytes(self) -> int | None:
        """The session budget at the last reading, over every worker (None while it is off
        or before the first reading): what the ``pathoai_sessions_budget_bytes`` gauge shows."""
        sessions, reading = self._sessions(), self._last()
        if sessions is None or reading is None or not self.budget.active:
            return None
        return self._budget(sessions, reading)[2]

    def _budget(self, sessions: SessionManager, reading: Reading) -> tuple[int, int, int]:
        """Every worker's session bytes and reservations (from the ledger), and the budget
        they make at ``reading``."""
        ledger = self._admission.ledger
        with ledger.transaction():
            held, reserved = ledger.sessions(sessions.total_bytes), ledger.total()
        floor = self._floor(reading.total_bytes)
        return held, reserved, self.budget.bytes(reading, floor, held, reserved)

    def _first(self, ticket: int) -> bool:
        return self._admission.position(ticket) == 0

    def _free(self, required: int, reading: Reading, reserved: int, need: GpuNeed | None) -> bool:
        """Free what no active request needs, up to what ``required`` lacks; True when
        anything was freed. Not in EMERGENCY (the cleanup does that), and one at a time.
        Where the GPU refused, its device's cleanup frees (in EMERGENCY only)."""
        if need is not None and need.short:
            if need.level is Level.EMERGENCY and self.start_gpu_cleanup is not None:
                self.start_gpu_cleanup(need.device)
            return False
        sessions = self._sessions()
        lacking = required + reserved + self._admission.floor_bytes - reading.available_bytes
        if sessions is None or lacking <= 0 or self._level() is Level.EMERGENCY:
            return False
        if not self._freeing.acquire(blocking=False):
            return False
        try:
            removed = sessions.cleanup_inactive_sessions()
            before = sessions.removed_total("idle")
            freed = self._free_idle(
                sessions, lacking, reason="idle", evict_idle_s=self.idle_free_s,
                spill_idle_s=min(self.idle_free_s, sessions.spill_idle_s, BUDGET_IDLE_S),
            )  # fmt: skip
            evicted = sessions.removed_total("idle") - before
            self.freed_sessions += evicted
            if freed < lacking and self.budget.active:  # the rest: other workers' sessions
                ledger = self._admission.ledger
                with ledger.transaction():
                    ledger.want(lacking - freed, time.monotonic(), WANT_TTL_S)
            return removed + evicted > 0 or freed > 0
        finally:
            self._freeing.release()

    def _waited(self, outcome: str, started: float) -> None:
        with self._admission.lock:
            self._admission.waits.record(outcome, self._clock() - started)

    def _give_up(  # noqa: PLR0917 -- the state of one wait, private
        self, ticket: int, started: float, required: int, reading: Reading, reserved: int,
        need: GpuNeed | None,
    ) -> InsufficientMemoryError:  # fmt: skip
        ahead = max(0, self._admission.position(ticket))
        self._admission.leave(ticket)
        self._waited("timeout", started)
        return self._refuse(required, reading, reserved, ahead=ahead, gpu=need)

    def _refuse(
        self, required: int, reading: Reading, reserved: int, *, ahead: int = -1,
        gpu: GpuNeed | None = None,
    ) -> InsufficientMemoryError:  # fmt: skip
        level = self._level()
        wait = self._cooldown_left_s()
        error = self._admission.refuse(required, reading, reserved, level, wait, ahead=ahead,
                                       gpu=gpu)  # fmt: skip
        if gpu is not None and gpu.short:
            return error
        if level is Level.EMERGENCY:
            self._start_cleanup("rejection")
        return error

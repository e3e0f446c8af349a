"""AdmissionGate: admit now, free idle memory and admit, or wait in line, then refuse.

1. **Free before refusing** what no active request needs (``freeing``: expired sessions,
   idle ones spilled, else evicted; the rest asked of the other workers). A request that
   may wait has it freed in the background while it waits.
2. **Wait in line** (``wait_s`` > 0), in arrival order, until memory is released or freed
   or the wait runs out. Only the first in line may be admitted, so small requests cannot
   starve a large one (``Admission.admit_locked``). A blocking wait sleeps on the
   admission's condition; an async one polls without blocking the event loop.
3. **Refuse** with a retry hint from the line (how long holds last, how many wait ahead).

New work (a request for no existing session, ``new_work``) waits aside while requests on
existing sessions wait (finishing started work frees its memory sooner; a new session is
more to hold), and must fit the session budget (``session_budget``), after freeing idle
sessions. A request on a session (``session=``) has that session's bytes on disk booked
with its own (``session_admission``).
Each worker serves the other workers' wants from a thread of its own (``Freeing.for_peers``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from .admission import Admission, GpuNeed
from .errors import ErrorCounts
from .freeing import Freeing
from .pressure import Level
from .reading import Reading
from .session_budget import SessionBudget, over_budget

if TYPE_CHECKING:
    from .exceptions import InsufficientMemoryError
    from .session_manager import SessionManager

#: A waiting request looks again at least this often (memory may be freed by anything).
POLL_S = 0.1

Observe = Callable[[Reading, int, bool, int, "GpuNeed | None"], tuple[bool, int]]
#: GPU bytes a request asks for: (device, bytes), or None for none.
GpuAsk = tuple[int, int] | None
Outcome = tuple["InsufficientMemoryError | None", int]


@dataclass
class Grant:
    """An admitted hold: ``extra`` bytes booked beyond the request's own at the look that
    admitted it (its session's spilled bytes then), held until ``AdmissionGate.give_back``."""

    extra: int = 0


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
        self._floor = floor  # the floor fitted to a limit
        self._gpu = gpu  # a device's free bytes, floor and level, read now
        self._clock = clock
        self.start_gpu_cleanup: Callable[[int], None] | None = None  # set by the monitor
        self.budget = SessionBudget()
        self.freeing = Freeing(admission=admission, sessions=sessions, errors=errors,
                               budget_active=lambda: self.budget.active,
                               idle_free_s=idle_free_s)  # fmt: skip

    def admit(
        self, required: int, *, hold: bool, wait_s: float = 0.0, new_work: bool = False,
        gpu: GpuAsk = None,
    ) -> InsufficientMemoryError | None:  # fmt: skip
        """Admit ``required`` bytes (held when ``hold``), and ``gpu`` (device, bytes) in the
        same decision, freeing and waiting as above; the refusal, counted and logged, where
        it does not fit in time."""
        return self._run(self._steps(required, hold, wait_s, new_work, gpu))[0]

    def _run(self, steps: Generator[float, None, Outcome]) -> Outcome:
        try:
            while True:
                self._admission.wait_for_change(next(steps))
        except StopIteration as done:
            return cast("Outcome", done.value)
        finally:  # interrupted while waiting: give the place in line up now
            steps.close()

    @staticmethod
    async def _run_async(steps: Generator[float, None, Outcome]) -> Outcome:
        try:
            while True:
                await asyncio.sleep(next(steps))
        except StopIteration as done:
            return cast("Outcome", done.value)
        finally:  # cancelled (a client went away) while waiting: give the place up now
            steps.close()

    def _steps(
        self, required: int, hold: bool, wait_s: float, new_work: bool, gpu: GpuAsk = None,
        *, session: str | None = None,
    ) -> Generator[float, None, Outcome]:  # fmt: skip
        """The decision, as a generator that yields how long to wait before looking again;
        it returns the refusal (or None) and the bytes admitted beyond ``required``: those
        of ``session`` on disk at that look (never spilled by this request's own freeing).
        Sync and async callers differ only in the wait."""
        self._admission.count_request()
        self.freeing.watch()  # the other workers' wants are served from here on
        since = time.monotonic()  # system-wide: the workers' wants are ordered by it
        inline = not hold or wait_s <= 0  # a request that cannot wait has it freed now
        look = self._look(required, hold, 0, new_work, gpu, session, since, inline)
        admitted, reading, reserved, need, more = look
        if admitted:
            return None, more
        if inline:
            return self._refuse(required + more, reading, reserved, gpu=need), 0
        ticket, started = self._admission.join(), self._clock()
        if session is not None:
            self.freeing.waiting[ticket] = since
        try:
            while True:
                look = self._look(required, hold, ticket, new_work, gpu, session, since, False)
                admitted, reading, reserved, need, more = look
                if admitted:
                    self._waited("admitted", started)
                    return None, more
                left = started + wait_s - self._clock()
                if left <= 0:
                    return self._give_up(ticket, started, required + more, reading, reserved,
                                         need), 0  # fmt: skip
                yield min(left, POLL_S)
        except BaseException:  # interrupted while waiting (GeneratorExit included)
            self._admission.leave(ticket)
            self._waited("gone", started)
            raise
        finally:
            self.freeing.waiting.pop(ticket, None)

    def _look(  # noqa: PLR0917 -- one look of _steps, private
        self, required: int, hold: bool, ticket: int, new_work: bool, gpu: GpuAsk,
        session: str | None, since: float, inline: bool,
    ) -> tuple[bool, Reading, int, GpuNeed | None, int]:  # fmt: skip
        """One look: decide, and where it does not fit and this request may go first, free
        (``inline``: now, and decide again); also the bytes of ``session`` on disk that it
        counted."""
        more = self._spilled(session)
        admitted, reading, reserved, need = self._try(required + more, hold, ticket, new_work,
                                                      gpu, inline)  # fmt: skip
        first = ticket == 0 or self._first(ticket)
        freed = (
            not admitted
            and first
            and self._free(
                required + more, reading, reserved, need, keep=session, since=since, inline=inline
            )
        )
        if freed:
            more = self._spilled(session)
            admitted, reading, reserved, need = self._try(required + more, hold, ticket,
                                                          new_work, gpu, inline)  # fmt: skip
        return admitted, reading, reserved, need, more

    def _spilled(self, session: str | None) -> int:
        sessions = self._sessions()
        return 0 if session is None or sessions is None else sessions.spilled_bytes(session)

    @contextmanager
    def hold(
        self, required: int, wait_s: float, *, new_work: bool = False, gpu: GpuAsk = None,
        session: str | None = None,
    ) -> Iterator[Grant]:  # fmt: skip
        """Admit and hold ``required`` bytes (and ``gpu``, and ``session``'s bytes on disk at
        the admitting look: ``session_admission``) for the block; a refusal raises."""
        error, more = self._run(self._steps(required, True, wait_s, new_work, gpu,
                                            session=session))  # fmt: skip
        if error is not None:
            raise error
        grant, started = Grant(more), self._clock()
        try:
            yield grant
        finally:
            self._release(required + grant.extra, started, gpu)

    @asynccontextmanager
    async def hold_async(
        self, required: int, wait_s: float, *, new_work: bool = False, gpu: GpuAsk = None,
        session: str | None = None,
    ) -> AsyncIterator[Grant]:  # fmt: skip
        """``hold`` for an event loop."""
        steps = self._steps(required, True, wait_s, new_work, gpu, session=session)
        error, more = await self._run_async(steps)
        if error is not None:
            raise error
        grant, started = Grant(more), self._clock()
        try:
            yield grant
        finally:
            self._release(required + grant.extra, started, gpu)

    def give_back(self, grant: Grant) -> None:
        """Release a hold's extra bytes before its block ends (a restored session's bytes
        are the session's from then on, counted in every reading)."""
        if grant.extra:
            self._admission.release(grant.extra)
            grant.extra = 0

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

    def _try(  # noqa: PLR0917 -- one decision of _look, private
        self, required: int, hold: bool, ticket: int, new_work: bool = False, gpu: GpuAsk = None,
        inline: bool = True,
    ) -> tuple[bool, Reading, int, GpuNeed | None]:  # fmt: skip
        """One decision against a fresh reading (or, where that fails, a recent one), and
        the GPU's where ``gpu`` asks for device bytes."""
        try:
            reading = self._sample()
        except (OSError, ValueError, KeyError) as exc:  # a counted error and a typed refusal
            self._errors.count("sample", exc)
            reading = self._admission.fallback(self._last(), time.monotonic(), exc)
        need = self._gpu(*gpu) if gpu and self._gpu is not None else None
        behind = new_work and bool(self.freeing.waiting)  # started work finishes first
        if behind or (new_work and not self._within_budget(required, reading, inline)):
            self._admission.hold_aside(ticket)  # requests for existing sessions go ahead
            _, reserved = self._observe(reading, 0, False, 0, None)  # the reading counts
            return False, reading, reserved, need
        self._admission.hold_aside(ticket, aside=False)
        admitted, reserved = self._observe(reading, required, hold, ticket, need)
        return admitted, reading, reserved, need

    def _within_budget(self, required: int, reading: Reading, inline: bool) -> bool:
        """Whether new work of ``required`` bytes fits the session budget, counting what is
        reserved in flight (it may become sessions), after freeing idle sessions to make it
        fit (``Freeing.for_budget``; ``inline``: now): only what it would lack once those
        requests end, so the write overlaps them instead of emptying memory of sessions."""
        sessions = self._sessions()
        if sessions is None or not self.budget.active:
            return True
        held, reserved, budget = self._budget(sessions, reading)
        need = over_budget(held + reserved, required, budget)
        if need == 0:
            return True
        after = over_budget(held, required, budget)  # once the requests in flight end
        freed = self.freeing.for_budget(after, inline=inline) if after else 0
        return over_budget(held - freed + reserved, required, budget) == 0

    def serve_peers(self) -> int:
        """Serve the other workers' wants from this worker's sessions now (``Freeing.
        for_peers``); the bytes freed. The monitor's loop calls it."""
        return self.freeing.for_peers(inline=True)

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

    def _free(
        self, required: int, reading: Reading, reserved: int, need: GpuNeed | None,
        *, keep: str | None, since: float, inline: bool,
    ) -> bool:  # fmt: skip
        """Free what no active request needs, up to what ``required`` lacks (``Freeing.
        for_line``); True when anything was freed now. Not in EMERGENCY (the cleanup does
        that). Where the GPU refused, its device's cleanup frees (in EMERGENCY only)."""
        if need is not None and need.short:
            if need.level is Level.EMERGENCY and self.start_gpu_cleanup is not None:
                self.start_gpu_cleanup(need.device)
            return False
        lacking = required + reserved + self._admission.floor_bytes - reading.available_bytes
        if lacking <= 0 or self._level() is Level.EMERGENCY:
            return False
        waiters = lacking > reserved  # what is in flight cannot end the wait: all wait
        return self.freeing.for_line(lacking, keep, since, waiters=waiters, inline=inline) > 0

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

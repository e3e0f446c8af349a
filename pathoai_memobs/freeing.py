"""Freeing memory no active request needs, for admission (the gate's first step).

What goes: expired sessions, then idle sessions spilled to disk where a spill store is set
(nothing lost, and then nothing is evicted), else evicted, in
``session_accounting.eviction_order``. For whom: the first in this worker's line (which may
spill the sessions that requests behind it wait for, never its own), new work over the
session budget (never those), and another worker's want (those too, where the want is
older than every request waiting here: one order across the workers). What this worker
cannot free is asked of the others (``ledger.want``).

One round at a time. A round for a request that may wait runs in a background thread: an
event loop never waits for a disk write, and the write overlaps the requests that hold the
memory now, so that memory is free when they end. The waiters look again when it ends.
Where workers share a ledger, a thread of each serves the others' wants within
``PEER_POLL_S`` (one mapped read per look while nobody wants anything): a worker that is
busy or idle still gives up its idle sessions promptly.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .admission import Admission
    from .errors import ErrorCounts
    from .session_manager import RemovalReason, SessionManager

#: Sessions freed for the budget, or for a peer, have been idle this long at least.
BUDGET_IDLE_S = 0.25
#: A want posted for other workers' sessions lasts this long unless renewed (a waiting
#: request renews it at each look).
WANT_TTL_S = 1.0
#: How often each worker looks for the others' wants (where the ledger is shared).
PEER_POLL_S = 0.1


class Freeing:
    """Freeing rounds for one monitor's admission (see the module docstring)."""

    def __init__(
        self, *, admission: Admission, sessions: Callable[[], SessionManager | None],
        budget_active: Callable[[], bool], errors: ErrorCounts, idle_free_s: float,
    ) -> None:  # fmt: skip
        self._admission, self._sessions = admission, sessions
        self._budget_active, self._errors = budget_active, errors
        self.idle_free_s = idle_free_s
        self._lock = threading.Lock()
        #: Tickets in this worker's line for a request on a session: since when they wait
        #: (system-wide monotonic clock, comparable with other workers' wants).
        self.waiting: dict[int, float] = {}
        self._watching = 0  # the pid whose thread serves peers' wants (0: none)

    def run(self, job: Callable[[], int], *, inline: bool) -> int:
        """One round: ``inline``, the bytes (or sessions) it freed; else started in the
        background, 0 now. 0 too where a round runs already (it may free what is needed)."""
        if not self._lock.acquire(blocking=False):
            return 0
        if inline:
            try:
                return job()
            finally:
                self._lock.release()
        thread = threading.Thread(target=self._background, args=(job,), daemon=True,
                                  name="pathoai-freeing")  # fmt: skip
        thread.start()
        return 0

    def _background(self, job: Callable[[], int]) -> None:
        try:
            job()
        except Exception as exc:  # a failed round frees nothing; the next look tries again
            self._errors.count("action", exc)
        finally:
            self._lock.release()
            self._admission.notify()  # blocking waiters look again now

    def for_line(
        self, lacking: int, keep: str | None, since: float, *, waiters: bool, inline: bool
    ) -> int:
        """Free ``lacking`` bytes for the first in line (a request on ``keep``, waiting
        ``since``): what it freed, inline. Sessions other requests wait for only where
        ``waiters`` (the requests in flight will not release enough when they end: every
        request waits on memory that others' sessions hold), here and in other workers."""
        sessions = self._sessions()
        if sessions is None or lacking <= 0:
            return 0

        def job() -> int:
            removed = sessions.cleanup_inactive_sessions()
            before = sessions.removed_total("idle")
            freed = free_idle(sessions, lacking, reason="idle", evict_idle_s=self.idle_free_s,
                              spill_idle_s=min(self.idle_free_s, sessions.spill_idle_s,
                                               BUDGET_IDLE_S), keep=keep,
                              waiting=waiters)  # fmt: skip
            if freed < lacking:
                self._want(lacking - freed, since if waiters else math.inf)
            return removed + sessions.removed_total("idle") - before + freed

        return self.run(job, inline=inline)

    def for_budget(self, need: int, *, inline: bool) -> int:
        """Free ``need`` bytes of sessions for new work over the session budget, never one
        a request waits for (those go ahead of new work): the bytes freed, inline."""
        sessions = self._sessions()
        if sessions is None:
            return 0

        def job() -> int:
            freed = free_idle(sessions, need, waiting=False)
            if freed < need:  # the rest are other workers' sessions: ask them
                self._want(need - freed, math.inf)
            return freed

        return self.run(job, inline=inline)

    def for_peers(self, *, inline: bool) -> int:
        """Serve another worker's want from this worker's sessions, and publish what is
        left: the bytes freed, inline. One mapped read when nobody wants anything."""
        sessions = self._sessions()
        ledger = self._admission.ledger
        if sessions is None or not self.watch() or not ledger.wanted(time.monotonic()):
            return 0

        def job() -> int:
            with ledger.transaction():
                want, since = ledger.wanted(now := time.monotonic()), ledger.wanted_since(now)
            older = since < min(self.waiting.values(), default=math.inf)
            need = min(want, sessions.total_bytes)
            freed = free_idle(sessions, need, waiting=older) if need else 0
            if freed:
                with ledger.transaction():
                    ledger.served(freed)
                    ledger.sessions(sessions.total_bytes)  # the waiting worker sees it at once
            return freed

        return self.run(job, inline=inline)

    def watch(self) -> bool:
        """Start this process's thread that serves the other workers' wants, where workers
        share a ledger and the session budget is on (once per process: a fork has none);
        whether it runs."""
        if not (self._admission.ledger.shared and self._budget_active()):
            return False
        if self._watching != os.getpid():
            self._watching = os.getpid()
            threading.Thread(target=_watch, args=(weakref.ref(self),), daemon=True,
                             name="pathoai-peers").start()  # fmt: skip
        return True

    def _want(self, nbytes: int, since: float) -> None:
        if self._budget_active():
            ledger = self._admission.ledger
            with ledger.transaction():
                ledger.want(nbytes, time.monotonic(), WANT_TTL_S, since)


def _watch(ref: weakref.ReferenceType[Freeing]) -> None:
    """Serve the other workers' wants every PEER_POLL_S, until the Freeing is gone."""
    while (freeing := ref()) is not None:
        try:
            freeing.for_peers(inline=True)
        except Exception as exc:  # a failed round frees nothing; the next look tries again
            freeing._errors.count("action", exc)
        del freeing
        time.sleep(PEER_POLL_S)


def free_idle(
    sessions: SessionManager, need: int, *, reason: RemovalReason = "budget",
    spill_idle_s: float = BUDGET_IDLE_S, evict_idle_s: float = BUDGET_IDLE_S,
    keep: str | None = None, waiting: bool = False,
) -> int:  # fmt: skip
    """Free ``need`` bytes of unpinned sessions: those idle ``spill_idle_s`` spilled where a
    store is set (``waiting``: and those requests wait for; never ``keep``), and then never
    evicted, so nothing is lost; without a store, those idle ``evict_idle_s`` evicted with
    ``reason``. The bytes freed."""
    freed = sessions.spill_idle(need, min_idle_s=spill_idle_s, keep=keep, waiting=waiting)
    if freed < need and sessions.spill_store is None:
        freed += sessions.evict_least_recently_used(need - freed, reason=reason,
                                                    min_idle_s=evict_idle_s)  # fmt: skip
    return freed

"""Spilling an idle session's large buffers to a SpillStore, and bringing them back
(what goes and how it is rebuilt: ``spill_plan``), admitted like any request.

The I/O runs outside the manager's lock (``SessionManager.spill_idle``): the plan is taken
under it, written without it, and committed only if the session was not changed or pinned
meanwhile, otherwise the files are discarded and the session keeps its memory.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .durations import Durations
from .exceptions import SpillCorruptError, SpillRefusedError
from .logging import SPILL_REFUSED, WARNING, emit
from .session_accounting import SessionRecord, apply, device_order, eviction_order, recount
from .sizeof import measure
from .spill_plan import Group, Spilled, read_back, spill_plan, spilled_files, write
from .spill_store import SpillCancelledError, SpillStore

if TYPE_CHECKING:
    from .gate import AdmissionGate
    from .session_hooks import RemovalHooks, Removed


class SpillingSessions:
    """The spill half of ``SessionManager`` (mixed into it): what it needs of the manager
    is declared here; the manager's lock guards every table change."""

    _lock: threading.RLock
    _sessions: dict[str, SessionRecord]
    _clock: Callable[[], float]
    _hooks: RemovalHooks
    _restoring: threading.Lock
    _spilling: threading.Lock
    spill_store: SpillStore | None
    spill_min_bytes: int
    spill_idle_s: float
    spill_refusals: collections.Counter[str]
    spill_durations: Durations  # "spill" (one session's buffers written) and "restore"
    _refusing: set[str]  # causes refused since the last spill that worked
    spilled_sessions: int  # sessions with buffers on disk now
    #: Admission for restores (the monitor's gate, set when the monitor gets the manager):
    #: a restore is a request for the session's spilled bytes, waiting up to
    #: ``restore_wait_s`` in line, refused with InsufficientMemoryError where it does not fit.
    restore_gate: AdmissionGate | None = None
    restore_wait_s: float = 10.0

    def _resize(self, session: SessionRecord, host: int, device: int) -> None:
        raise NotImplementedError

    def _detach(self, session: SessionRecord, reason: str) -> Removed:
        raise NotImplementedError

    def spill_idle(
        self, bytes_needed: int, *, min_idle_s: float | None = None, keep: str | None = None,
        waiting: bool = False,
    ) -> int:  # fmt: skip
        """Write the large buffers of unpinned sessions idle ``min_idle_s`` or more (default
        ``spill_idle_s``), in ``eviction_order`` (``waiting``: those requests wait for too;
        never ``keep``), to the spill store until ``bytes_needed`` are freed; the host bytes
        freed. 0 while spilling is off; a refusal
        is counted by cause (once while it lasts, see ``_refused``) and ends the round (the
        caller goes on to evict). I/O runs outside the lock."""
        store = self.spill_store
        if store is None or bytes_needed <= 0:
            return 0
        # One round at a time: a second caller (the emergency while the ladder's thread
        # writes) waits for it, then plans what is still in memory, instead of writing the
        # same sessions again and finding them taken.
        with self._spilling:
            return self._spill_round(store, bytes_needed, min_idle_s, keep, waiting)

    def _spill_round(
        self, store: SpillStore, bytes_needed: int, min_idle_s: float | None, keep: str | None,
        waiting: bool,
    ) -> int:  # fmt: skip
        idle = self.spill_idle_s if min_idle_s is None else min_idle_s
        with self._lock:
            chosen = eviction_order(self._sessions.values(), bytes_needed, now=self._clock(),
                                    min_idle_s=idle, waiting=waiting, keep=keep)  # fmt: skip
            plans = [(s, s.version, self._plan(s)) for s in chosen]
        freed = 0
        for session, version, plan in plans:
            if freed >= bytes_needed:
                break
            try:
                freed += self._spill_one(store, session, version, plan)
            except SpillRefusedError as exc:
                self._refused(exc)
                break
        if freed:
            self._refusing.clear()  # spilling works again: the next refusal is news
        return freed

    def _plan(self, session: SessionRecord, device: bool = False) -> list[Group]:
        return spill_plan(session.data, self.spill_min_bytes, session.refs, device=device)

    def free_device(self, bytes_needed: int) -> int:
        """Free GPU memory for the GPU ladder's emergency: unpinned sessions holding the most
        device bytes first, their CUDA tensors spilled where a store is set (they come back
        on the device at the next access), else the sessions evicted (reason "emergency",
        hooks run). The device bytes freed (torch caches them until ``empty_cache``)."""
        if bytes_needed <= 0:
            return 0
        with self._lock:
            chosen = device_order(self._sessions.values(), bytes_needed)
            before = {s.sid: s.device for s in chosen}
        store = self.spill_store
        if store is None:
            with self._lock:
                removed = [self._detach(s, "emergency") for s in chosen
                           if self._sessions.get(s.sid) is s and not s.pins]  # fmt: skip
            self._hooks.run_all(removed)
            return sum(before[r.sid] for r in removed)
        freed = 0
        with self._spilling:
            for session in chosen:
                if freed >= bytes_needed:
                    break
                with self._lock:
                    version, plan = session.version, self._plan(session, device=True)
                try:
                    self._spill_one(store, session, version, plan, device=True)
                except SpillRefusedError as exc:
                    self._refused(exc)
                    break
                freed += max(0, before[session.sid] - session.device)
        return freed

    def _refused(self, exc: SpillRefusedError) -> None:
        """Count and log a refusal once per cause, not once per attempt: the ladder tries
        again at every step, and a full disk stays full until a spill succeeds again."""
        with self._lock:
            if exc.cause in self._refusing:
                return
            self._refusing.add(exc.cause)
            self.spill_refusals[exc.cause] += 1
        emit(WARNING, SPILL_REFUSED, cause=exc.cause, detail=str(exc))

    def _spill_one(
        self, store: SpillStore, session: SessionRecord, version: int,
        plan: list[Group], device: bool = False,
    ) -> int:  # fmt: skip
        """Write one session's plan and commit it; the bytes freed. A session updated while
        it was written (still there, unpinned) is planned and written once more, rather
        than left for eviction to take."""
        for _ in range(2):
            if not plan:
                return 0

            def stale(version: int = version) -> bool:  # pinned, changed or gone: stop now
                gone = self._sessions.get(session.sid) is not session
                return gone or session.pins > 0 or session.version != version

            started, reused = time.monotonic(), store.reused
            try:
                marks = write(store, plan, stale)
            except SpillCancelledError:
                marks = None
            else:  # timed where a file was written (not every buffer's kept file reused)
                if store.reused - reused < len(plan):
                    self.spill_durations.record("spill", time.monotonic() - started)
            with self._lock:
                if marks is not None:  # written (None: given up midway)
                    committed = self._commit_spill(session, version, marks)
                    if committed is not None:
                        return committed
                if self._sessions.get(session.sid) is not session or session.pins:
                    return 0
                version, plan = session.version, self._plan(session, device)
        return 0

    def _commit_spill(
        self, session: SessionRecord, version: int, marks: dict[str, Spilled]
    ) -> int | None:
        """Swap spilled keys for placeholders (under the lock), unless the session changed or
        was pinned or removed while its files were written: then they go (None). Bytes
        freed."""
        store = self.spill_store
        assert store is not None
        if (
            self._sessions.get(session.sid) is not session
            or session.version != version
            or session.pins
        ):
            for ref in spilled_files(marks).values():
                store.discard(ref)
            return None
        measured = {key: measure(mark) for key, mark in marks.items()}
        before = session.host
        host, device = recount(session, measured)
        apply(session, marks, measured)
        self._resize(session, host, device)
        self.spilled_sessions += not session.spilled
        session.spilled.update(marks)
        return before - host

    def restore(self, session_id: str, booked: int = 0) -> None:
        """Bring a spilled session back, whole, once admitted for its bytes (see
        ``restore_gate``; not again where a reservation ``booked`` them already); the
        reading runs outside the manager's lock."""
        found = self._to_restore(session_id)
        if found is not None:
            session, need = found
            gate = self.restore_gate
            if gate is None or need <= booked:
                self._read_in(session_id, session)
                return
            with gate.hold(need, self.restore_wait_s):
                self._read_in(session_id, session)

    async def restore_async(self, session_id: str, booked: int = 0) -> None:
        """``restore`` for an event loop: the admission waits without blocking it and the
        files are read in a worker thread (disk I/O never stalls the loop). Nothing to do
        for a session that is not spilled; an async handler awaits this before it reads a
        session that may be (``MemoryMonitor.reserve_async(session=)`` does it)."""
        found = self._to_restore(session_id)
        if found is not None:
            session, need = found
            gate = self.restore_gate
            if gate is None or need <= booked:
                await asyncio.to_thread(self._read_in, session_id, session)
                return
            async with gate.hold_async(need, self.restore_wait_s):
                await asyncio.to_thread(self._read_in, session_id, session)

    def spilled_bytes(self, session_id: str) -> int:
        """Bytes a restore of the session would bring back (0: in memory, or gone)."""
        found = self._to_restore(session_id)
        return 0 if found is None else found[1]

    def _to_restore(self, session_id: str) -> tuple[SessionRecord, int] | None:
        """The session if it has buffers on disk, and their bytes (what a restore needs)."""
        session = self._sessions.get(session_id)
        if session is None or not session.spilled:  # the common case, without the lock
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not session.spilled or self.spill_store is None:
                return None
            return session, sum(r.nbytes for r in spilled_files(session.spilled).values())

    def _read_in(self, session_id: str, session: SessionRecord) -> None:
        """Read a spilled session's buffers back into it. A file that is not intact removes
        the session (reason "spill_corrupt", hooks run) and raises."""
        assert self.spill_store is not None
        with self._restoring:
            with self._lock:
                spilled = dict(session.spilled)
            if not spilled or self._sessions.get(session_id) is not session:
                return  # restored, or removed, meanwhile
            started = time.monotonic()
            try:
                values = read_back(self.spill_store, spilled)
            except SpillCorruptError:
                with self._lock:
                    gone = self._sessions.get(session_id) is not session
                    removed = None if gone else self._detach(session, "spill_corrupt")
                if removed is not None:
                    self._hooks.run(removed)
                raise
            self.spill_durations.record("restore", time.monotonic() - started)
            measured = {key: measure(value) for key, value in values.items()}
            with self._lock:
                session.spilled.clear()
                self.spilled_sessions -= 1
                host, device = recount(session, measured)
                apply(session, values, measured)
                self._resize(session, host, device)

"""SessionManager: sessions with timeouts, a per-session byte limit and exact accounting.

Accounting: each key's value is measured once, when it is set (``sizeof.measure``). A
session keeps, per identity (buffer, container), how many of its keys reach it; a buffer
counts while at least one key does. So views of one image, or one object under two keys,
are charged once, and an update costs the size of what it touches, never the number of
sessions. Values mutated in place after being stored are not re-measured: store them again.

Session ids are secrets: logs and metrics name a session by ``fingerprint`` (a keyed hash
that cannot be reversed), never by id.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Final, Literal

from .config import MemoryConfig
from .durations import Durations
from .exceptions import SessionMemoryLimitError, SessionNotFoundError
from .exporters.catalogue import REMOVAL_REASONS, SPILL_OPERATIONS
from .forksafe import after_fork_in_child
from .session_accounting import (
    SessionRecord,
    apply,
    eviction_order,
    measure_from_scratch,
    recount,
)
from .session_hooks import RemovalHook, RemovalHooks, Removed
from .session_spill import SpillingSessions
from .session_sweeper import Sweeper
from .session_top import TopSessions
from .session_view import LiveData, SessionAggregates, SessionData
from .sizeof import Charges, measure
from .spill_plan import Spilled, spilled_files
from .spill_store import SpillStore
from .units import GIB, MIB, non_negative, positive

__all__ = ["GIB", "SessionAggregates", "SessionData", "SessionManager", "fingerprint"]
RemovalReason = Literal["timeout", "explicit", "emergency", "idle", "budget", "spill_corrupt"]

#: Upper bounds (bytes) of the session-size distribution, 1 MiB to 16 GiB.
SIZE_BUCKETS: Final[tuple[int, ...]] = tuple(1 << p for p in range(20, 35, 2))

_FINGERPRINT_KEY: Final = secrets.token_bytes(32)


def fingerprint(session_id: str) -> str:
    """A short, non-reversible name for a session (keyed per process), safe for logs."""
    return hmac.new(_FINGERPRINT_KEY, session_id.encode(), hashlib.sha256).hexdigest()[:12]


def _bucket(nbytes: int) -> int:
    return bisect.bisect_left(SIZE_BUCKETS, nbytes)


class SessionManager(SpillingSessions):
    """User sessions with an idle timeout and a per-session memory limit (GiB)."""

    def __init__(
        self,
        timeout_minutes: float = 30,
        max_memory_gb: float = 2.0,
        *,
        cleanup_interval_minutes: float = 5,
        top_k: int = 10,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        spill: SpillStore | None = None,
        spill_min_bytes: int = 4 << 20,
        spill_idle_s: float = 30.0,
    ) -> None:
        self.timeout_s = positive("timeout_minutes", timeout_minutes, maximum=1e9) * 60
        self.max_memory_bytes = int(positive("max_memory_gb", max_memory_gb, maximum=1 << 32) * GIB)
        self.cleanup_interval_s = (
            positive("cleanup_interval_minutes", cleanup_interval_minutes, maximum=1e9) * 60
        )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
        self.top_k = top_k
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.RLock()
        self._sessions: dict[str, SessionRecord] = {}
        self._hooks = RemovalHooks()
        self._total_host = 0
        self._total_device = 0
        self._buckets = [0] * (len(SIZE_BUCKETS) + 1)
        self._created = 0
        self._removed: collections.Counter[str] = collections.Counter()
        self._sweeper = Sweeper(
            self.cleanup_inactive_sessions, name="pathoai-session-sweeper", where="session_sweep"
        )
        self._top = TopSessions(top_k, self._sessions)
        self.spill_store = spill
        self.spill_min_bytes = spill_min_bytes
        self.spill_idle_s = spill_idle_s
        self.spill_refusals: collections.Counter[str] = collections.Counter()
        self._refusing: set[str] = set()
        self.spill_durations = Durations(SPILL_OPERATIONS)
        self.spilled_sessions = 0
        self._restoring = threading.Lock()  # one restore at a time: each reads whole files
        self._spilling = threading.Lock()  # one spill round at a time (ladder, gate, emergency)
        after_fork_in_child(self._forked)

    @classmethod
    def from_config(cls, config: MemoryConfig, **kwargs: Any) -> SessionManager:
        """The manager ``config`` describes, spilling to ``spill_dir`` where it is set."""
        if config.spill_dir and "spill" not in kwargs:
            kwargs["spill"] = SpillStore(
                config.spill_dir, max_bytes=int(config.spill_max_gb * GIB),
                min_free_ratio=config.spill_min_free_percent / 100,
                variable=config.variable_of("spill_dir"),
            )  # fmt: skip
            kwargs.setdefault("spill_min_bytes", int(config.spill_min_buffer_mb * MIB))
            kwargs.setdefault("spill_idle_s", config.spill_idle_minutes * 60)
        return cls(
            config.session_timeout_minutes,
            config.max_session_memory_gb,
            cleanup_interval_minutes=config.session_cleanup_interval_minutes,
            **kwargs,
        )

    # -- the reference's API ----------------------------------------------------------------

    def create_session(self) -> str:
        """A new empty session; its id has 256 bits from ``secrets``."""
        sid = secrets.token_urlsafe(32)
        session = SessionRecord(sid, fingerprint(sid), self._clock(), self._wall())
        with self._lock:
            self._sessions[sid] = session
            self._created += 1
            self._buckets[_bucket(0)] += 1
            self._top.note(session, grew=True)
        return sid

    def update_session(self, session_id: str, **data: Any) -> None:
        """Merge ``data`` into the session; all or nothing.

        Raises SessionNotFoundError for an unknown or expired id, and SessionMemoryLimitError
        (leaving the session as it was) when the new total would exceed the limit.
        """
        self.restore(session_id)  # a spilled session comes back whole first
        measured = {key: measure(value) for key, value in data.items()}  # outside the lock
        expired = None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and self._expired(session, self._clock()):
                expired = self._detach(session, "timeout")
                session = None
            if session is not None:
                new_host, new_device = recount(session, measured)
                if new_host > self.max_memory_bytes:
                    raise SessionMemoryLimitError(new_host, self.max_memory_bytes, session.fp)
                self._apply(session, data, measured, new_host, new_device)
        if expired is not None:
            self._hooks.run(expired)
        if session is None:
            raise SessionNotFoundError()

    def get_session(self, session_id: str) -> SessionData | None:
        """The session (refreshing its last access), or None if unknown or expired. A
        spilled session is read back first (SpillCorruptError where it cannot be)."""
        self.restore(session_id)
        expired = None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            now = self._clock()
            if self._expired(session, now):
                expired = self._detach(session, "timeout")
            else:
                self._touch(session, now)
                return self._view(session)
        self._hooks.run(expired)
        return None

    def delete_session(self, session_id: str) -> bool:
        """Remove a session now (reason "explicit"); False if there was none."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return False
            removed = self._detach(session, "explicit")
        self._hooks.run(removed)
        return True

    def cleanup_inactive_sessions(self) -> int:
        """Remove sessions idle longer than the timeout (pinned ones stay); returns how many."""
        now = self._clock()
        with self._lock:
            removed = [
                self._detach(s, "timeout")
                for s in list(self._sessions.values())
                if self._expired(s, now)
            ]
        self._hooks.run_all(removed)
        return len(removed)

    # -- beyond the reference ---------------------------------------------------------------

    @contextmanager
    def use(
        self, session_id: str, *, restore: bool = True, waiting: bool = False
    ) -> Iterator[SessionData]:
        """Pin the session while a request works on it: no cleanup or eviction removes it.
        A spilled session is read back on entry, unless ``restore`` is False (an async
        caller then awaits ``restore_async``). ``waiting``: the request only waits for
        memory: the session is kept, but may be spilled meanwhile (and is not restored)."""
        expired = None
        with self._lock:
            session = self._sessions.get(session_id)
            now = self._clock()
            if session is not None and self._expired(session, now):
                expired = self._detach(session, "timeout")
                session = None
        if session is None:
            if expired is not None:
                self._hooks.run(expired)
            raise SessionNotFoundError()
        with self._lock:
            if self._sessions.get(session_id) is not session:  # removed in between
                raise SessionNotFoundError()
            if waiting:
                session.waiters += 1
            else:
                session.pins += 1
            self._touch(session, now)
            view = self._view(session)
        try:
            if restore and not waiting and session.spilled:  # pinned: back before it is seen
                self.restore(session_id)
            yield view
        finally:
            with self._lock:
                if waiting:
                    session.waiters -= 1
                else:
                    session.pins -= 1
                self._touch(session, self._clock())

    def on_remove(self, callback: RemovalHook) -> None:
        """Call ``callback(session_id, data, reason)`` on every removal (outside the lock)."""
        with self._lock:
            self._hooks.add(callback)

    def evict_least_recently_used(
        self, bytes_needed: int, *, reason: RemovalReason = "emergency", min_idle_s: float = 0.0
    ) -> int:
        """Remove unpinned sessions, least recently used first, until ``bytes_needed`` are freed
        (only those idle for ``min_idle_s`` or more, when given). Returns the host bytes freed.
        Pinned sessions are never evicted. A bad argument raises ValueError and removes
        nothing."""
        if isinstance(bytes_needed, bool) or not isinstance(bytes_needed, int):
            raise ValueError(f"bytes_needed must be an integer of bytes, got {bytes_needed!r}")
        if bytes_needed < 0:
            raise ValueError(f"bytes_needed must be >= 0, got {bytes_needed!r}")
        if reason not in REMOVAL_REASONS:
            raise ValueError(f"reason must be one of {', '.join(REMOVAL_REASONS)}, got {reason!r}")
        idle = non_negative("min_idle_s", min_idle_s, maximum=1e10)
        with self._lock:
            chosen = eviction_order(
                self._sessions.values(), bytes_needed, now=self._clock(), min_idle_s=idle
            )
            freed = sum(s.host for s in chosen)
            removed = [self._detach(s, reason) for s in chosen]
        self._hooks.run_all(removed)
        return freed

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def total_bytes(self) -> int:
        """Host bytes held by all sessions now."""
        return self._total_host

    def removed_total(self, reason: str) -> int:
        """Sessions removed so far for ``reason`` (timeout, explicit, emergency, idle)."""
        return self._removed[reason]

    def aggregates(self) -> SessionAggregates:
        """Counts and sizes for the exporters; top-K by bytes named by fingerprint only.

        O(K) while the largest sessions only grow; one O(sessions) pass after a member of
        the top set shrank or left.
        """
        with self._lock:
            ranked = [(s.fp, s.host) for s in self._top.ranked()]
            active = len(self._sessions)
            buckets = tuple(self._buckets)
            total, device = self._total_host, self._total_device
            created, removed, failures = self._created, dict(self._removed), self._hooks.failures
        return SessionAggregates(
            active=active,
            total_bytes=total,
            device_bytes=device,
            largest_bytes=ranked[0][1] if ranked else 0,
            size_buckets=buckets,
            top=tuple(ranked[: self.top_k]),
            created_total=created,
            removed_total=MappingProxyType(removed),
            hook_failures_total=failures,
        )

    def recount_from_scratch(self) -> int:
        """Total host bytes re-measured from the stored data (for checks, O(all data))."""
        with self._lock:
            return sum(measure_from_scratch(s) for s in self._sessions.values())

    # -- background sweeper -----------------------------------------------------------------

    def start_sweeper(self, interval_s: float | None = None) -> None:
        """Remove expired sessions every ``interval_s`` (default: the cleanup interval)."""
        interval = (
            self.cleanup_interval_s
            if interval_s is None
            else positive("interval_s", interval_s, maximum=1e9)
        )
        self._sweeper.start(interval)

    def stop_sweeper(self, timeout_s: float = 5.0) -> None:
        self._sweeper.stop(timeout_s)

    # -- internals --------------------------------------------------------------------------

    def _forked(self) -> None:
        """In a forked child: a request thread may have held the lock (the sweeper renews
        itself)."""
        self._lock = threading.RLock()
        self._restoring, self._spilling = threading.Lock(), threading.Lock()

    def _expired(self, session: SessionRecord, now: float) -> bool:
        idle = session.pins == 0 and session.waiters == 0
        return idle and now - session.last_mono > self.timeout_s

    def _touch(self, session: SessionRecord, now: float) -> None:
        session.last_mono = now
        session.last_access = self._wall()

    def _view(self, session: SessionRecord) -> SessionData:
        sid = session.sid
        return SessionData(
            sid,
            session.created_at,
            session.last_access,
            LiveData(session.data, lambda: self.restore(sid), Spilled),
            session.host,
            session.device,
            session.fp,
        )

    def _apply(
        self,
        session: SessionRecord,
        data: Mapping[str, Any],
        measured: Mapping[str, Charges],
        host: int,
        device: int,
    ) -> None:
        apply(session, data, measured)
        self._resize(session, host, device)
        self._touch(session, self._clock())

    def _resize(self, session: SessionRecord, host: int, device: int) -> None:
        self._buckets[_bucket(session.host)] -= 1
        self._buckets[_bucket(host)] += 1
        self._total_host += host - session.host
        self._total_device += device - session.device
        grew = host >= session.host
        session.host, session.device = host, device
        self._top.note(session, grew=grew)

    def _detach(self, session: SessionRecord, reason: str) -> Removed:
        """Remove from the tables (under the lock); hooks run later, outside it."""
        del self._sessions[session.sid]
        if self.spill_store is not None:
            self.spilled_sessions -= bool(session.spilled)
            for ref in spilled_files(session.spilled).values():
                self.spill_store.discard(ref)
        self._top.left(session)
        self._buckets[_bucket(session.host)] -= 1
        self._total_host -= session.host
        self._total_device -= session.device
        self._removed[reason] += 1
        return Removed(
            session.sid, MappingProxyType(session.data), reason, session.fp, session.host
        )

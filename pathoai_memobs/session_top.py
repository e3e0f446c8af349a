"""The largest sessions, kept incrementally so a scrape costs O(K), not O(sessions).

Growth enters the set directly; a member shrinking or leaving while others wait outside
marks it stale, and the next read rebuilds it in one pass. Runs under the manager's lock.
"""

from __future__ import annotations

import heapq

from .session_accounting import SessionRecord


class TopSessions:
    """The ``size`` largest sessions by host bytes, out of ``sessions``."""

    def __init__(self, size: int, sessions: dict[str, SessionRecord]) -> None:
        self.size = max(size, 1)  # the largest is always tracked, for its own gauge
        self._sessions = sessions
        self._top: dict[str, SessionRecord] = {}
        self._stale = False

    def note(self, session: SessionRecord, *, grew: bool) -> None:
        """Keep the set right after ``session`` changed size (or was created)."""
        if self._stale:
            return
        top = self._top
        if session.sid in top:
            if not grew and len(self._sessions) > len(top):
                self._stale = True  # an outsider may now be larger
            return
        if len(top) < self.size:
            top[session.sid] = session
            return
        smallest = min(top.values(), key=lambda s: s.host)
        if session.host > smallest.host:
            del top[smallest.sid]
            top[session.sid] = session

    def left(self, session: SessionRecord) -> None:
        """``session`` was removed from the manager's table."""
        if self._top.pop(session.sid, None) is not None and len(self._sessions) > len(self._top):
            self._stale = True  # a member left while others wait outside

    def ranked(self) -> list[SessionRecord]:
        """The tracked largest sessions, largest first (rebuilt here when stale)."""
        if self._stale:
            best = heapq.nlargest(self.size, self._sessions.values(), key=lambda s: s.host)
            self._top = {s.sid: s for s in best}
            self._stale = False
        return sorted(self._top.values(), key=lambda s: s.host, reverse=True)

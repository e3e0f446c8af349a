"""SessionBudget: sessions may not crowd out the largest request.

Session memory persists after the request that made it. Once sessions hold so much that
the largest marked request can no longer fit above the floor, no amount of waiting helps:
every request that would work on those sessions waits behind them (the slide service of
the serving issue admitted four uploads and then not one analysis). So sessions get a
budget: the limit, less the floor, the largest request (``keep_room_for``) and the rest of
the process (the baseline: working set less session bytes, read while nothing is
reserved). New work (a request for no existing session) is admitted only while sessions
plus its size stay within it, after freeing the least recently used unpinned sessions
(reason "budget"); requests for existing sessions are never held by it.
"""

from __future__ import annotations

from .reading import Reading


def budget_bytes(total: int, floor: int, largest: int, baseline: int) -> int:
    """Bytes sessions may hold: what is left of ``total`` after the floor, the largest
    request and the rest of the process (0 when nothing is)."""
    return max(0, total - floor - largest - baseline)


def over_budget(sessions: int, required: int, budget: int) -> int:
    """Bytes of sessions to free before new work of ``required`` bytes may start (0: none)."""
    return max(0, sessions + required - budget)


class SessionBudget:
    """The budget's inputs; off (``active`` False) until a largest request is declared."""

    def __init__(self) -> None:
        self.largest_bytes = 0
        self._baseline: int | None = None

    @property
    def active(self) -> bool:
        return self.largest_bytes > 0

    def keep_room_for(self, nbytes: int) -> None:
        """Declare a request of ``nbytes`` that must always be able to fit (the largest
        declared wins; the admission middleware declares its largest fixed route)."""
        self.largest_bytes = max(self.largest_bytes, nbytes)

    def baseline(self, reading: Reading, sessions: int, reserved: int) -> int:
        """The rest of the process: the working set less sessions, taken while nothing is
        reserved (requests in flight inflate it); until then, the working set less sessions
        and reservations."""
        rest = max(0, reading.used_bytes - sessions)
        if reserved == 0:
            self._baseline = rest
        if self._baseline is None:
            return max(0, rest - reserved)
        return self._baseline

    def bytes(self, reading: Reading, floor: int, sessions: int, reserved: int) -> int:
        """The budget now (see the module docstring)."""
        base = self.baseline(reading, sessions, reserved)
        return budget_bytes(reading.total_bytes, floor, self.largest_bytes, base)

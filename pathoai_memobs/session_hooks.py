"""Removal hooks: what runs when a session goes, outside the manager's lock.

Every hook runs for every removed session even when one fails: an exception is counted and
logged by type and place only (``logging.raised_at``), since its message may hold the id
(``cache.pop(sid)`` raises ``KeyError(sid)``); KeyboardInterrupt and SystemExit wait until
all the others ran, then propagate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .logging import ERROR, INFO, SESSION_HOOK_FAILED, SESSION_REMOVED, emit, raised_at

RemovalHook = Callable[[str, Mapping[str, Any], str], None]


class Removed(NamedTuple):
    """A session just taken out of the tables, whose hooks are still to run."""

    sid: str
    data: Mapping[str, Any]
    reason: str
    fp: str
    nbytes: int


class RemovalHooks:
    """The registered hooks and how many of their calls failed."""

    def __init__(self) -> None:
        self._hooks: list[RemovalHook] = []
        self._lock = threading.Lock()
        self.failures = 0

    def add(self, hook: RemovalHook) -> None:
        with self._lock:
            self._hooks.append(hook)

    def run_all(self, removed: list[Removed]) -> None:
        """Every removed session's hooks; an interrupt is re-raised once all have run."""
        interrupt: BaseException | None = None
        for item in removed:
            try:
                self.run(item)
            except BaseException as exc:
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt

    def run(self, removed: Removed) -> None:
        """Each hook for one removal (see the module docstring for failures)."""
        fp, reason = removed.fp, removed.reason
        emit(INFO, SESSION_REMOVED, session=fp, reason=reason, bytes=removed.nbytes)
        interrupt: BaseException | None = None
        for hook in list(self._hooks):
            try:
                hook(removed.sid, removed.data, reason)
            except Exception as exc:
                with self._lock:
                    self.failures += 1
                emit(
                    ERROR,
                    SESSION_HOOK_FAILED,
                    session=fp,
                    reason=reason,
                    error=type(exc).__name__,
                    where=raised_at(exc),
                )
            except BaseException as exc:
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt

"""ErrorCounts: errors the monitor's parts survived, counted by where and logged once each."""

from __future__ import annotations

import threading
from collections import Counter

from .forksafe import after_fork_in_child
from .logging import ERROR, MONITOR_ERROR, emit


class ErrorCounts:
    """A counter per place (sample, action, wakeups, emergency_step, ...), exported as
    ``pathoai_monitor_errors_total{where}``; each error is logged as ``monitor_error``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        after_fork_in_child(self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()

    def count(self, where: str, exc: BaseException) -> None:
        with self._lock:
            self._counts[where] += 1
        emit(ERROR, MONITOR_ERROR, where=where, error=type(exc).__name__, exc_info=exc)

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

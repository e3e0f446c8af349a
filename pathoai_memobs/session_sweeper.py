"""Sweeper: a background thread that runs one cleanup function every interval, and never dies."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .forksafe import after_fork_in_child
from .logging import ERROR, MONITOR_ERROR, emit


class Sweeper:
    """Calls ``sweep`` every ``interval_s`` in a daemon thread until stopped; an exception
    is logged (as a monitor error at ``where``) and the next interval comes as usual."""

    def __init__(self, sweep: Callable[[], object], *, name: str, where: str) -> None:
        self._sweep = sweep
        self._name = name
        self._where = where
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        after_fork_in_child(self._forked)

    def _forked(self) -> None:
        """In a forked child the thread is gone and its lock may have been held."""
        self._lock, self._thread, self._stop = threading.Lock(), None, threading.Event()

    def start(self, interval_s: float) -> None:
        """Start (idempotent while running)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, args=(interval_s,), name=self._name, daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self._sweep()
            except Exception as exc:  # the sweeper must never die
                emit(
                    ERROR, MONITOR_ERROR, where=self._where, error=type(exc).__name__, exc_info=exc
                )

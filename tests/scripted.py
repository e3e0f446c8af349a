"""Test doubles for the monitor: memory a test scripts, and small waiting/log helpers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.reading import Reading, combine
from pathoai_memobs.session_manager import SessionManager

from .fstree import GIB, MIB, v2_tree


class Scripted:
    """Memory the test sets; sessions' accounted bytes count as used, as they would."""

    def __init__(self, available: int, total: int = 8 * GIB) -> None:
        self.available = available
        self.total = total
        self.sessions: SessionManager | None = None
        self.fail: Exception | None = None
        self.calls = 0

    def sample(self) -> Reading:
        self.calls += 1
        if self.fail is not None:
            raise self.fail.with_traceback(None)  # a fresh traceback each time
        held = self.sessions.aggregates().total_bytes if self.sessions else 0
        avail = max(0, self.available - held)
        return combine(self.total, avail, None, None, None, 0, time.time(), time.monotonic())


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg["event"] == name]


def started_in_v2_tree(tmp_path: Path, monitors: list[MemoryMonitor]) -> MemoryMonitor:
    """A started 50 Hz monitor reading a v2 fixture tree: 512 MiB used of a 2 GiB limit."""
    v2_tree(
        tmp_path,
        current=512 * MIB,
        inactive_file=0,
        limits={"/system.slice/app.service": str(2 * GIB)},
    )
    m = MemoryMonitor(MemoryConfig(monitoring_interval_sec=0.02), root=str(tmp_path))
    monitors.append(m)
    m.start()
    return m

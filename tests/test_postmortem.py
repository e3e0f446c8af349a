"""The post-mortem file: a run killed without a stop is told at the next start as gone
(or OOM-killed, where the cgroup's count rose), at the level it was last seen at; a clean
stop is told as clean; a live process's file is left alone; the file is bounded and holds
no session id. Real child processes (SIGKILLed) over a cgroup v2 fixture tree."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.exporters.prometheus import instrument
from pathoai_memobs.postmortem import KEEP_READINGS, ending

from .fstree import GIB, MIB, v2_tree
from .scripted import events

FORK = multiprocessing.get_context("fork")
OWN = "sys/fs/cgroup/system.slice/app.service"


def test_an_ending_is_judged_from_the_file_and_the_oom_count() -> None:
    seen = {"level": "CRITICAL", "oom_kills": 1, "updated_at": 5.0,
            "readings": [{"used_ratio": 0.93, "available_bytes": 7}]}  # fmt: skip
    assert ending({**seen, "clean_stop": True}, 1)["ending"] == "clean"
    gone = ending(seen, 1)
    assert gone["ending"] == "gone" and gone["last_level"] == "CRITICAL"
    assert gone["last_used_ratio"] == 0.93 and gone["oom_kills_since"] == 0
    killed = ending(seen, 3)
    assert killed["ending"] == "oom_killed" and killed["oom_kills_since"] == 2
    assert ending({}, None)["ending"] == "gone"  # a file that said nothing: gone


def tree(tmp_path: Path, current: int) -> Path:
    return v2_tree(tmp_path / "root", limits={"/system.slice/app.service": str(2 * GIB)},
                   current=current, inactive_file=0)  # fmt: skip


def config(state: Path) -> MemoryConfig:
    return MemoryConfig(state_dir=str(state), enable_background_monitoring=False)


def run_child(root: Path, state: Path, *, stop: bool, ticks: int = 3) -> None:
    """A worker: a monitor over the tree for a few steps, then stopped or SIGKILLed."""

    def child() -> None:
        m = MemoryMonitor(config(state), root=str(root), sessions=SessionManager())
        m.sessions.update_session(m.sessions.create_session(), x=np.ones(MIB, np.uint8))  # type: ignore[union-attr]
        m.start()
        for _ in range(ticks):
            m.tick()
        if stop:
            m.stop()
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)

    proc = FORK.Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == (0 if stop else -signal.SIGKILL)


def test_a_killed_run_is_told_at_the_next_start_with_its_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, state = tree(tmp_path, current=int(1.9 * GIB)), tmp_path / "state"  # EMERGENCY
    run_child(root, state, stop=False)
    (left,) = list(state.glob("postmortem-*.json"))
    assert (
        oct(left.stat().st_mode & 0o777) == "0o600" and oct(state.stat().st_mode & 0o777) == "0o700"
    )
    caplog.set_level("INFO", logger="pathoai_memobs")
    m = MemoryMonitor(config(state), root=str(root))
    (told,) = events(caplog, "previous_run")
    assert told["ending"] == "gone" and told["last_level"] == "EMERGENCY"
    assert m.previous_run == {k: v for k, v in told.items() if k != "event"}
    assert not left.exists()  # told once
    registry = CollectorRegistry()
    instrument(m, registry=registry)
    assert (
        registry.get_sample_value(
            "pathoai_previous_run_info", {"ending": "gone", "level": "EMERGENCY"}
        )
        == 1
    )


def test_an_oom_count_that_rose_says_oom_killed_and_a_clean_stop_says_clean(
    tmp_path: Path,
) -> None:
    root, state = tree(tmp_path, current=int(1.9 * GIB)), tmp_path / "state"
    run_child(root, state, stop=False)
    events_file = root / OWN / "memory.events"
    events_file.write_text(events_file.read_text().replace("oom_kill 1", "oom_kill 2"))
    killed = MemoryMonitor(config(state), root=str(root)).previous_run
    assert killed is not None and killed["ending"] == "oom_killed"
    assert killed["oom_kills_since"] == 1
    run_child(root, state, stop=True)
    clean = MemoryMonitor(config(state), root=str(root)).previous_run
    assert clean is not None and clean["ending"] == "clean"


def test_a_live_process_file_is_left_alone_and_files_are_bounded(tmp_path: Path) -> None:
    root, state = tree(tmp_path, current=GIB), tmp_path / "state"
    live = MemoryMonitor(config(state), root=str(root), sessions=SessionManager())
    sid = live.sessions.create_session()  # type: ignore[union-attr]
    live.start()
    for _ in range(KEEP_READINGS + 10):
        live.tick()
    live._postmortem.keep(live.sample(), live.level, clean_stop=False)  # type: ignore[union-attr]
    assert live._postmortem is not None
    live._postmortem.file.write(None)
    other = MemoryMonitor(config(state), root=str(root))
    assert other.previous_run is None  # the live one's file is locked: not a past run
    (path,) = [p for p in state.glob("postmortem-*.json") if str(os.getpid()) in p.name]
    doc: dict[str, Any] = json.loads(path.read_text())
    assert len(doc["readings"]) == KEEP_READINGS and sid not in path.read_text()
    live.stop()
    assert json.loads(path.read_text())["clean_stop"] is True

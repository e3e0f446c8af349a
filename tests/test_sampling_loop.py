"""The background sampling loop in-process: thread, faults, the ladder acted on."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.pressure import Level
from pathoai_memobs.reading import Reading
from pathoai_memobs.sampling_loop import THREAD_NAME

from .fstree import GIB, MIB
from .scripted import Scripted, events, started_in_v2_tree, wait_for

# -- background thread --------------------------------------------------------------------


def test_thread_starts_stops_and_is_named(fast: MemoryConfig) -> None:
    s = Scripted(6 * GIB)
    m = MemoryMonitor(fast, sampler=s)
    assert not m.running and m.last_sample_timestamp == 0
    with m:
        m.start()  # idempotent
        names = [t.name for t in threading.enumerate()]
        assert names.count(THREAD_NAME) == 1
        assert all(t.daemon for t in threading.enumerate() if t.name == THREAD_NAME)
        wait_for(lambda: m.samples_total >= 3)
        assert m.last_sample_timestamp == pytest.approx(time.time(), abs=2)
    assert not m.running
    assert THREAD_NAME not in [t.name for t in threading.enumerate()]
    m.stop()  # idempotent


def test_background_monitoring_from_config_starts_on_its_own(
    monitors: list[MemoryMonitor],
) -> None:
    cfg = MemoryConfig(enable_background_monitoring=True, monitoring_interval_sec=0.02)
    m = MemoryMonitor(cfg, sampler=Scripted(6 * GIB))
    monitors.append(m)
    assert m.running
    wait_for(lambda: m.samples_total >= 2)


def test_a_failing_reading_is_counted_and_the_loop_goes_on(
    fast: MemoryConfig, monitors: list[MemoryMonitor], caplog: pytest.LogCaptureFixture
) -> None:
    s = Scripted(6 * GIB)
    m = MemoryMonitor(fast, sampler=s)
    monitors.append(m)
    m.start()
    wait_for(lambda: m.samples_total >= 2)
    s.fail = OSError(19, "No such device")
    wait_for(lambda: m.errors_total.get("sample", 0) >= 3)
    stale = m.last_sample_timestamp
    time.sleep(0.05)
    assert m.last_sample_timestamp == stale  # a stuck monitor shows as an old timestamp
    s.fail = None
    good = m.samples_total
    wait_for(lambda: m.samples_total > good + 2)
    assert m.running
    assert events(caplog, "monitor_error")[0]["where"] == "sample"


def test_an_unparseable_cgroup_file_mid_run(tmp_path: Path, monitors: list[MemoryMonitor]) -> None:
    m = started_in_v2_tree(tmp_path, monitors)
    wait_for(lambda: m.samples_total >= 2)
    current = next(tmp_path.rglob("memory.current"))
    current.write_text("garbage\n")
    wait_for(lambda: m.errors_total.get("sample", 0) >= 2)
    current.write_text(str(600 * MIB))
    wait_for(lambda: (m.last_reading or Reading(*[0] * 9)).used_bytes == 600 * MIB)
    assert m.running


# -- the ladder in the loop ---------------------------------------------------------------


def test_level_changes_are_logged_once_per_crossing(
    fast: MemoryConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = Scripted(int(0.5 * 8 * GIB))
    m = MemoryMonitor(fast, sampler=s)
    for used in (0.5, 0.851, 0.849, 0.852, 0.849, 0.91, 0.895, 0.5):
        s.available = int((1 - used) * s.total)
        m.sample()
    changes = [
        (e["previous_level"], e["pressure_level"]) for e in events(caplog, "memory_level_changed")
    ]
    assert changes == [("NORMAL", "WARNING"), ("WARNING", "CRITICAL"), ("CRITICAL", "NORMAL")]


def test_critical_runs_a_throttled_proactive_collection(
    fast: MemoryConfig, monitors: list[MemoryMonitor]
) -> None:
    from pathoai_memobs.gc_manager import GarbageCollectionManager

    gcm = GarbageCollectionManager()
    s = Scripted(700 * MIB)  # 91 % of 8 GiB used, above the floor
    m = MemoryMonitor(fast, sampler=s, gc_manager=gcm, proactive_gc_interval_s=60)
    monitors.append(m)
    m.start()
    wait_for(lambda: gcm.triggered["proactive"] >= 1)
    time.sleep(0.1)
    assert m.level is Level.CRITICAL
    assert gcm.triggered["proactive"] == 1  # once per crossing, then every 60 s


def test_no_proactive_collection_when_disabled(monitors: list[MemoryMonitor]) -> None:
    from pathoai_memobs.gc_manager import GarbageCollectionManager

    gcm = GarbageCollectionManager()
    cfg = MemoryConfig(monitoring_interval_sec=0.02, enable_proactive_gc=False)
    m = MemoryMonitor(cfg, sampler=Scripted(700 * MIB), gc_manager=gcm)
    monitors.append(m)
    m.start()
    wait_for(lambda: m.samples_total >= 5)
    assert gcm.triggered["proactive"] == 0

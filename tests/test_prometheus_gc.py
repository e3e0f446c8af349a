"""The GC collector: exposition parsed back, and checked by the real promtool."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pathoai_memobs import GarbageCollectionManager
from pathoai_memobs.exporters.prometheus import GCCollector
from pathoai_memobs.gc_pauses import PauseTimer


def _exposition(timer: PauseTimer, manager: GarbageCollectionManager) -> bytes:
    registry = CollectorRegistry()
    was_installed = timer.installed
    registry.register(GCCollector(timer, manager))  # installs the timer
    try:
        return generate_latest(registry)
    finally:
        if not was_installed:
            timer.uninstall()


def test_histogram_matches_the_collections_timed() -> None:
    timer = PauseTimer()
    manager = GarbageCollectionManager()
    timer.install()
    try:
        gc.disable()
        for g in (0, 2, 2):
            gc.collect(g)
        manager.collect_with_stats(2)
        snap = timer.snapshot()
    finally:
        timer.uninstall()
        gc.enable()
    families = {
        f.name: f for f in text_string_to_metric_families(_exposition(timer, manager).decode())
    }
    hist = families["pathoai_gc_duration_seconds"]
    count = {s.labels["generation"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert count == {"0": 1.0, "1": 0.0, "2": 3.0}
    inf = [
        s for s in hist.samples if s.labels.get("le") == "+Inf" and s.labels["generation"] == "2"
    ]
    assert inf[0].value == 3.0 == snap.count[2]
    buckets = [
        s.labels["le"]
        for s in hist.samples
        if s.name.endswith("_bucket") and s.labels["generation"] == "0"
    ]
    assert buckets[0] == "0.0001" and buckets[-2] == "10.0"
    trig = {
        s.labels["reason"]: s.value
        for s in families["pathoai_gc_manager_collections"].samples
        if s.name.endswith("_total")
    }
    assert trig["manual"] == 1.0 and trig["proactive"] == 0.0


def test_promtool_finds_nothing_to_report() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: make test should have installed Debian's prometheus")
        pytest.skip("promtool not installed (make test installs Debian's prometheus)")
    text = _exposition(PauseTimer(), GarbageCollectionManager())
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out

"""A real Prometheus scrapes the exporter; its query API agrees with the Python API."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pathoai_memobs import GarbageCollectionManager, MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.exporters.prometheus import MetricsServer, instrument, start_http_server
from pathoai_memobs.gc_pauses import GC_PAUSES

from .promstack import Prometheus


@dataclass
class Stack:
    prometheus: Prometheus
    exporter: MetricsServer
    monitor: MemoryMonitor
    sessions: SessionManager


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sessions = SessionManager()
    monitor = MemoryMonitor(MemoryConfig(), sessions=sessions)
    registry = CollectorRegistry()
    instrument(monitor, sessions, GarbageCollectionManager(), registry=registry)
    exporter = start_http_server(0, registry=registry)
    prom = Prometheus(tmp_path_factory.mktemp("prom"), [f"127.0.0.1:{exporter.port}"])
    try:
        prom.wait_value('up{job="pathoai"}', lambda v: v == 1, timeout=60)
        yield Stack(prom, exporter, monitor, sessions)
    finally:
        prom.stop()
        exporter.stop()


def test_session_count_is_exact(stack: Stack) -> None:
    ids = [stack.sessions.create_session() for _ in range(7)]
    for sid in ids[:3]:
        stack.sessions.update_session(sid, image=np.ones(2 << 20, np.uint8))
    stack.sessions.delete_session(ids[-1])
    assert stack.prometheus.wait_value("pathoai_sessions_active", lambda v: v == 6) == 6
    removed = stack.prometheus.value('pathoai_sessions_removed_total{reason="explicit"}')
    assert removed == 1
    total = stack.prometheus.value("pathoai_session_memory_bytes_gsum")
    assert total == stack.sessions.aggregates().total_bytes
    for sid in ids:
        assert not stack.prometheus.query(f'{{session="{sid}"}}')  # never an id in a label


def test_used_ratio_within_one_percent(stack: Stack) -> None:
    stack.prometheus.wait_value("pathoai_memory_used_ratio", lambda v: 0 < v <= 1)
    theirs = stack.prometheus.value("pathoai_memory_used_ratio")
    ours = stack.monitor.sample().used_ratio
    assert theirs is not None and abs(theirs - ours) <= 0.01
    limit = stack.prometheus.value("pathoai_memory_limit_bytes")
    assert limit == stack.monitor.sample().total_bytes


def test_gc_histogram_count_equals_the_collections_timed(stack: Stack) -> None:
    was_enabled = gc.isenabled()
    gc.disable()  # no automatic collections: the count holds still while we compare
    try:
        for _ in range(3):
            gc.collect(2)
        timed = GC_PAUSES.snapshot().total_count
        got = stack.prometheus.wait_value(
            "sum(pathoai_gc_duration_seconds_count)", lambda v: v == timed
        )
        assert got == timed
        gen2 = GC_PAUSES.snapshot().count[2]
        assert stack.prometheus.value('pathoai_gc_duration_seconds_count{generation="2"}') == gen2
    finally:
        if was_enabled:
            gc.enable()


def test_thresholds_in_force_are_scraped(stack: Stack) -> None:
    assert stack.prometheus.value("pathoai_memory_warning_threshold_ratio") == 0.85
    assert stack.prometheus.value("pathoai_memory_critical_threshold_ratio") == 0.9
    assert stack.prometheus.value("pathoai_memory_emergency_threshold_bytes") == 500 * 2**20

"""Prometheus collectors over the live state; they read at scrape time and hold no copy.

Names follow Prometheus conventions: prefix ``pathoai_``, base units (seconds), ``_total``
on counters. Register on any ``CollectorRegistry``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..gc_manager import GarbageCollectionManager
from ..gc_pauses import GC_PAUSES, GENERATIONS, PAUSE_BUCKETS, PauseTimer


class GCCollector(Collector):
    """Collection pauses of every collection, by generation, and the manager's own actions."""

    def __init__(
        self, timer: PauseTimer = GC_PAUSES, manager: GarbageCollectionManager | None = None
    ) -> None:
        self.timer = timer
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        snap = self.timer.snapshot()
        duration = HistogramMetricFamily(
            "pathoai_gc_duration_seconds",
            "Pause of each garbage collection the interpreter ran, by generation.",
            labels=["generation"],
            unit="seconds",
        )
        collected = CounterMetricFamily(
            "pathoai_gc_collected_objects",
            "Objects freed by the garbage collector, by generation.",
            labels=["generation"],
        )
        uncollectable = CounterMetricFamily(
            "pathoai_gc_uncollectable_objects",
            "Objects the garbage collector found uncollectable, by generation.",
            labels=["generation"],
        )
        bounds = [repr(b) for b in PAUSE_BUCKETS] + ["+Inf"]
        for g in range(GENERATIONS):
            label = [str(g)]
            cumulative = snap.cumulative(g)
            duration.add_metric(
                label, list(zip(bounds, map(float, cumulative), strict=True)), snap.sum_seconds[g]
            )
            collected.add_metric(label, snap.collected[g])
            uncollectable.add_metric(label, snap.uncollectable[g])
        yield duration
        yield collected
        yield uncollectable
        yield GaugeMetricFamily(
            "pathoai_gc_frozen_objects",
            "Objects moved out of the collector's reach by freeze().",
            value=GarbageCollectionManager.frozen_count(),
        )
        if self.manager is not None:
            triggered = CounterMetricFamily(
                "pathoai_gc_manager_collections",
                "Collections the manager ran, by reason; skipped ones are counted apart.",
                labels=["reason"],
            )
            skipped = CounterMetricFamily(
                "pathoai_gc_manager_skipped_collections",
                "Proactive collections skipped because GC already took too much time.",
                labels=["reason"],
            )
            for reason in ("manual", "proactive", "emergency"):
                triggered.add_metric([reason], self.manager.triggered.get(reason, 0))
                skipped.add_metric([reason], self.manager.skipped.get(reason, 0))
            for reason, n in self.manager.triggered.items():
                if reason not in ("manual", "proactive", "emergency"):
                    triggered.add_metric([reason], n)
            yield triggered
            yield skipped

"""Prometheus exposition of the live state: collectors, an HTTP server, app mounts.

Collectors read at scrape time and hold no copy; names, units and help come from
``catalogue.CATALOGUE`` (see docs/metrics.md). Register them on any
``CollectorRegistry``; ``instrument()`` does it for the usual trio.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import make_asgi_app as _prom_asgi_app
from prometheus_client import make_wsgi_app as _prom_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..emergency import DURATION_BUCKETS
from ..gc_pauses import GC_PAUSES, GENERATIONS, PAUSE_BUCKETS, PauseTimer
from ..logging import MONITOR_ERROR, emit
from ..pressure import rungs_in_order
from ..session_manager import SIZE_BUCKETS
from .catalogue import (
    BY_NAME,
    CACHE_EVICTION_CAUSES,
    CHARGE_KINDS,
    ERROR_PLACES,
    GC_REASONS,
    HEAP_STATES,
    PROCESS_KINDS,
    REMOVAL_REASONS,
    SPILL_REFUSAL_CAUSES,
    family_name,
)
from .gpu_samples import gpu_families
from .server import DEFAULT_PORT, MetricsServer, start_http_server  # the names stay here too

if TYPE_CHECKING:
    from ..gc_manager import GarbageCollectionManager
    from ..monitor import MemoryMonitor
    from ..session_manager import SessionManager


def _gauge(name: str, value: float | None = None) -> GaugeMetricFamily:
    spec = BY_NAME[name]
    if value is None:
        return GaugeMetricFamily(name, spec.help, labels=list(spec.labels))
    return GaugeMetricFamily(name, spec.help, value=value)


def _counter(name: str, value: float | None = None) -> CounterMetricFamily:
    spec = BY_NAME[name]
    if value is None:
        return CounterMetricFamily(family_name(spec), spec.help, labels=list(spec.labels))
    return CounterMetricFamily(family_name(spec), spec.help, value=value)


def _bounds(buckets: Iterable[float]) -> list[str]:
    return [repr(float(b)) for b in buckets] + ["+Inf"]


class GCCollector(Collector):
    """Collection pauses of every collection, by generation, and the manager's own actions."""

    def __init__(
        self, timer: PauseTimer = GC_PAUSES, manager: GarbageCollectionManager | None = None
    ) -> None:
        self.timer = timer
        self.manager = manager
        timer.install()  # exporting pauses means timing every collection (idempotent)

    def collect(self) -> Iterator[Metric]:
        snap = self.timer.snapshot()
        spec = BY_NAME["pathoai_gc_duration_seconds"]
        duration = HistogramMetricFamily(spec.name, spec.help, labels=["generation"])
        collections = _counter("pathoai_gc_collections_total")
        collected = _counter("pathoai_gc_collected_objects_total")
        uncollectable = _counter("pathoai_gc_uncollectable_objects_total")
        bounds = _bounds(PAUSE_BUCKETS)
        for g, stats in enumerate(gc.get_stats()[:GENERATIONS]):  # counted whether timed or not
            label = [str(g)]
            cumulative = snap.cumulative(g)
            duration.add_metric(
                label, list(zip(bounds, map(float, cumulative), strict=True)), snap.sum_seconds[g]
            )
            collections.add_metric(label, stats["collections"])
            collected.add_metric(label, stats["collected"])
            uncollectable.add_metric(label, stats["uncollectable"])
        yield duration
        yield collections
        yield collected
        yield uncollectable
        from ..gc_manager import GarbageCollectionManager  # noqa: PLC0415

        yield _gauge("pathoai_gc_frozen_objects", GarbageCollectionManager.frozen_count())
        if self.manager is not None:
            triggered = _counter("pathoai_gc_manager_collections_total")
            skipped = _counter("pathoai_gc_manager_skipped_collections_total")
            reasons = dict.fromkeys(GC_REASONS) | dict.fromkeys(self.manager.triggered)
            for reason in reasons:
                triggered.add_metric([reason], self.manager.triggered.get(reason, 0))
            for reason in dict.fromkeys(GC_REASONS) | dict.fromkeys(self.manager.skipped):
                skipped.add_metric([reason], self.manager.skipped.get(reason, 0))
            yield triggered
            yield skipped


class MemobsCollector(Collector):
    """Every pathoai_ metric over a monitor, a session manager and the GC state.

    Any of the three may be None; their metrics are then left out. The reading is the
    background thread's latest while it runs (so a stuck thread shows as an old
    ``pathoai_monitor_last_sample_timestamp_seconds``), else a fresh one per scrape.
    """

    def __init__(
        self,
        monitor: MemoryMonitor | None = None,
        sessions: SessionManager | None = None,
        gc_manager: GarbageCollectionManager | None = None,
        *,
        timer: PauseTimer | None = GC_PAUSES,
        breakdown: bool = True,
    ) -> None:
        self.monitor = monitor
        self.breakdown = breakdown  # the charge breakdown, allocator, OOM count: a few preads
        self.sessions = sessions
        self.gc = GCCollector(timer, gc_manager) if timer is not None else None
        self._scrape_errors = 0

    def collect(self) -> Iterator[Metric]:
        info = _gauge("pathoai_memobs_build_info")
        info.add_metric([__version__], 1)
        yield info
        if self.monitor is not None:
            yield from self._monitor(self.monitor)
        if self.sessions is not None:
            yield from self._sessions(self.sessions)
        if self.gc is not None:
            yield from self.gc.collect()

    def _reading(self, monitor: MemoryMonitor) -> Any:
        last = monitor.last_reading
        if monitor.running and last is not None:
            return last
        try:
            return monitor.sample()
        except Exception as exc:
            self._scrape_errors += 1
            emit(logging.ERROR, MONITOR_ERROR, where="scrape", error=type(exc).__name__)
            return None

    def _monitor(self, m: MemoryMonitor) -> Iterator[Metric]:
        r = self._reading(m)
        if r is not None:
            yield _gauge("pathoai_memory_limit_bytes", r.total_bytes)
            yield _gauge("pathoai_memory_used_bytes", r.used_bytes)
            yield _gauge("pathoai_memory_available_bytes", r.available_bytes)
            yield _gauge("pathoai_memory_used_ratio", r.used_ratio)
            source = _gauge("pathoai_memory_source_info")
            source.add_metric([r.source], 1)
            yield source
        pressure = m.pressure
        if pressure is not None:
            stall = _gauge("pathoai_memory_pressure_stall_ratio")
            stall.add_metric(["some"], pressure.some_avg10)
            stall.add_metric(["full"], pressure.full_avg10)
            yield stall
        t = m.thresholds.for_total(r.total_bytes) if r is not None else m.thresholds
        yield _gauge("pathoai_memory_pressure_level", int(m.level))
        if r is not None:
            yield _gauge("pathoai_memory_rungs_in_order", int(rungs_in_order(t, r.total_bytes)))
        yield _gauge("pathoai_memory_warning_threshold_ratio", t.warning_ratio)
        yield _gauge("pathoai_memory_critical_threshold_ratio", t.critical_ratio)
        yield _gauge("pathoai_memory_emergency_threshold_bytes", t.floor_bytes)
        yield _gauge("pathoai_memory_reserved_bytes", m.reserved_bytes)
        yield _counter("pathoai_requests_rejected_total", m.requests_rejected_total)
        budget = m.gate.budget_bytes()
        if budget is not None:
            yield _gauge("pathoai_sessions_budget_bytes", budget)
        yield from _admission(m)
        yield from _emergency(m)
        yield from _caches(m)
        if self.breakdown:
            yield from _breakdown(m, r)
        yield from gpu_families(m)
        yield _gauge("pathoai_monitor_last_sample_timestamp_seconds", m.last_sample_timestamp)
        yield _gauge("pathoai_monitor_interval_seconds", m.config.monitoring_interval_sec)
        yield _gauge("pathoai_monitor_running", 1 if m.running else 0)
        errors = _counter("pathoai_monitor_errors_total")
        counted = m.errors_total
        counted["scrape"] = counted.get("scrape", 0) + self._scrape_errors
        for where in dict.fromkeys(ERROR_PLACES) | dict.fromkeys(counted):
            errors.add_metric([where], counted.get(where, 0))
        yield errors

    def _sessions(self, s: SessionManager) -> Iterator[Metric]:
        agg = s.aggregates()
        yield _gauge("pathoai_sessions_active", agg.active)
        yield _counter("pathoai_sessions_created_total", agg.created_total)
        removed = _counter("pathoai_sessions_removed_total")
        for reason in dict.fromkeys(REMOVAL_REASONS) | dict.fromkeys(agg.removed_total):
            removed.add_metric([reason], agg.removed_total.get(reason, 0))
        yield removed
        spec = BY_NAME["pathoai_session_memory_bytes"]
        sizes = GaugeHistogramMetricFamily(spec.name, spec.help)
        cumulative = map(float, accumulate(agg.size_buckets))
        sizes.add_metric(
            [], list(zip(_bounds(SIZE_BUCKETS), cumulative, strict=True)), agg.total_bytes
        )
        yield sizes
        yield _gauge("pathoai_session_device_memory_bytes", agg.device_bytes)
        yield _gauge("pathoai_session_memory_limit_bytes", s.max_memory_bytes)
        yield _gauge("pathoai_session_memory_max_bytes", agg.largest_bytes)
        if s.top_k:
            top = _gauge("pathoai_session_top_memory_bytes")
            for fp, nbytes in agg.top:
                top.add_metric([fp], nbytes)
            yield top
        yield _counter("pathoai_session_removal_hook_failures_total", agg.hook_failures_total)
        yield from _spill(s)


def _spill(s: SessionManager) -> Iterator[Metric]:
    """What is on disk, the store's budget (while spilling is on), and refusals by cause."""
    store = s.spill_store
    yield _gauge("pathoai_sessions_spilled", s.spilled_sessions)
    yield _gauge("pathoai_session_spilled_bytes", 0 if store is None else store.spilled_bytes)
    if store is not None:
        yield _gauge("pathoai_session_spill_budget_bytes", store.max_bytes)
        free, size = store.disk()  # one statvfs, at scrape time only
        yield _gauge("pathoai_session_spill_disk_free_bytes", free)
        yield _gauge("pathoai_session_spill_disk_size_bytes", size)
    refusals = _counter("pathoai_session_spill_refusals_total")
    for cause in dict.fromkeys(SPILL_REFUSAL_CAUSES) | dict.fromkeys(s.spill_refusals):
        refusals.add_metric([cause], s.spill_refusals.get(cause, 0))
    yield refusals
    spec = BY_NAME["pathoai_session_spill_duration_seconds"]
    hist = HistogramMetricFamily(spec.name, spec.help, labels=["operation"])
    for op, (buckets, total) in s.spill_durations.snapshot().items():
        cumulative = map(float, accumulate(buckets))
        bounds = _bounds(s.spill_durations.bounds)
        hist.add_metric([op], list(zip(bounds, cumulative, strict=True)), total)
    yield hist


def _breakdown(m: MemoryMonitor, reading: Any) -> Iterator[Metric]:
    """What the memory is: the cgroup's charge and this process's memory by kind, managed
    and unmanaged (read now: these files are read only when scraped)."""
    charged, process = m.memory_breakdown()
    if charged is not None:
        family = _gauge("pathoai_memory_charged_bytes")
        for kind in CHARGE_KINDS:
            family.add_metric([kind], charged[kind])
        yield family
    allocator = m.allocator
    heap = allocator.heap()
    if heap is not None:
        family = _gauge("pathoai_allocator_heap_bytes")
        for state, nbytes in zip(HEAP_STATES, heap, strict=True):
            family.add_metric([state], nbytes)
        yield family
        arenas = allocator.arenas()
        if arenas is not None:
            yield _gauge("pathoai_allocator_arenas", arenas)
        yield _counter("pathoai_allocator_trims_total", allocator.trims)
        yield _counter("pathoai_allocator_trimmed_bytes_total", allocator.trimmed_bytes)
    previous = m.previous_run
    if previous is not None:
        family = _gauge("pathoai_previous_run_info")
        family.add_metric([str(previous["ending"]), str(previous["last_level"])], 1)
        yield family
    kills = m.oom_kills()
    if kills is not None:
        yield _counter("pathoai_oom_kills_total", kills)
    managed = m.managed_bytes()
    yield _gauge("pathoai_memory_managed_bytes", managed)
    if reading is not None:
        yield _gauge("pathoai_memory_unmanaged_bytes", max(0, reading.used_bytes - managed))
    if process is not None:
        family = _gauge("pathoai_process_memory_bytes")
        for kind in PROCESS_KINDS:
            family.add_metric([kind], process[kind])
        yield family


def _caches(m: MemoryMonitor) -> Iterator[Metric]:
    """Each registered bounded cache: its bytes, bound, evictions by cause, lookups."""
    held, bound = _gauge("pathoai_cache_memory_bytes"), _gauge("pathoai_cache_memory_limit_bytes")
    evicted, lookups = (
        _counter("pathoai_cache_evictions_total"),
        _counter("pathoai_cache_requests_total"),
    )
    for cache in m.caches:
        held.add_metric([cache.name], cache.nbytes)
        bound.add_metric([cache.name], cache.max_bytes)
        for cause in CACHE_EVICTION_CAUSES:
            evicted.add_metric([cache.name, cause], cache.evictions.get(cause, 0))
        lookups.add_metric([cache.name, "hit"], cache.hits)
        lookups.add_metric([cache.name, "miss"], cache.misses)
    yield from (held, bound, evicted, lookups)


def _emergency(m: MemoryMonitor) -> Iterator[Metric]:
    """Emergency runs and what each cleanup callback did in them."""
    totals = m.emergency_totals
    yield _counter("pathoai_emergency_cleanups_total", totals.runs)
    spec = BY_NAME["pathoai_emergency_cleanup_duration_seconds"]
    hist = HistogramMetricFamily(spec.name, spec.help)
    cumulative = map(float, totals.cumulative_buckets())
    hist.add_metric(
        [], list(zip(_bounds(DURATION_BUCKETS), cumulative, strict=True)), totals.duration_sum_s
    )
    yield hist
    yield _counter("pathoai_emergency_cleanup_freed_bytes_total", totals.freed_bytes)
    failures = _counter("pathoai_cleanup_callback_failures_total")
    overruns = _counter("pathoai_cleanup_callback_overruns_total")
    names = dict.fromkeys(m.cleanup_callback_names)
    for name in names | dict.fromkeys(totals.callback_failures):
        failures.add_metric([name], totals.callback_failures.get(name, 0))
    for name in names | dict.fromkeys(totals.callback_overruns):
        overruns.add_metric([name], totals.callback_overruns.get(name, 0))
    yield failures
    yield overruns
    freed = _counter("pathoai_cleanup_callback_freed_bytes_total")
    futile = _gauge("pathoai_cleanup_callback_futile_runs")
    for name in names | dict.fromkeys(totals.callback_freed_bytes):
        freed.add_metric([name], totals.callback_freed_bytes.get(name, 0))
        futile.add_metric([name], totals.callback_futile_runs.get(name, 0))
    yield freed
    yield futile


def _admission(m: MemoryMonitor) -> Iterator[Metric]:
    """Requests asked for, the line, and how long holds waited in it."""
    a = m.admission
    yield _counter("pathoai_requests_total", a.requests_total)
    yield _gauge("pathoai_admission_queue_length", a.queue_length)
    yield _counter("pathoai_admission_waits_total", sum(a.waits.buckets))
    yield _counter("pathoai_admission_wait_seconds_total", a.waits.sum_s)
    yield _counter("pathoai_admission_abandoned_total", a.waits.gone)


def instrument(
    monitor: MemoryMonitor | None = None,
    sessions: SessionManager | None = None,
    gc_manager: GarbageCollectionManager | None = None,
    *,
    registry: CollectorRegistry = REGISTRY,
    breakdown: bool = True,
) -> MemobsCollector:
    """Register a ``MemobsCollector`` on ``registry`` (the default one) and return it;
    ``breakdown=False`` leaves out what is read from /proc and the cgroup at scrape time."""
    collector = MemobsCollector(monitor, sessions, gc_manager, breakdown=breakdown)
    registry.register(collector)
    return collector


# -- serving ------------------------------------------------------------------------------


def make_wsgi_app(registry: CollectorRegistry = REGISTRY) -> Callable[..., Any]:
    """A WSGI app serving the registry (mount it at /metrics)."""
    return _prom_wsgi_app(registry)


def make_asgi_app(registry: CollectorRegistry = REGISTRY) -> Callable[..., Any]:
    """An ASGI app serving the registry (``app.mount("/metrics", make_asgi_app())``)."""
    return _prom_asgi_app(registry)


__all__ = [
    "DEFAULT_PORT",
    "GCCollector",
    "MemobsCollector",
    "MetricsServer",
    "instrument",
    "make_asgi_app",
    "make_wsgi_app",
    "start_http_server",
]

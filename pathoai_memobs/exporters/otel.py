"""OpenTelemetry: the same live state as OTel instruments, pushed over OTLP.

``instrument()`` registers one instrument per OpenTelemetry name the catalogue declares
(``catalogue.Metric.otel``: name, UCUM unit, kind, attribute names), fed by the value of
the Prometheus metric behind it, so both exporters come from one table. Names follow the
semantic conventions where one exists (``container.memory.*`` when the reading comes
from a cgroup, ``system.memory.*`` otherwise, ``process.memory.usage``, ``cpython.gc.*``)
and ``pathoai.*`` elsewhere. The two histograms (GC pauses, emergency runs) are fed
outside the gc callback: the pause timer keeps recent pauses in a lock-free ring, and
the collection callbacks drain it into the histogram.

``setup_otlp()`` builds a MeterProvider exporting over OTLP, configured only by the
standard ``OTEL_*`` variables. OpenTelemetry is imported only when this module is.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .. import __version__
from ..durations import IO_BUCKETS
from ..emergency import DURATION_BUCKETS
from ..gc_pauses import GC_PAUSES, GENERATIONS, PAUSE_BUCKETS, PauseTimer
from ..pressure import Thresholds
from .catalogue import (
    CACHE_EVICTION_CAUSES,
    CATALOGUE,
    ERROR_PLACES,
    GC_REASONS,
    GEN,
    HEAP_STATES,
    OTEL_ONLY,
    REMOVAL_REASONS,
    SPILL_REFUSAL_CAUSES,
    OTel,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider

    from ..gc_manager import GarbageCollectionManager
    from ..monitor import MemoryMonitor
    from ..session_manager import SessionManager

#: A value function: a number, or (label values, number) pairs for a labelled metric.
Values = Callable[[], Any]


@dataclass
class OTelInstruments:
    """What ``instrument()`` registered; keep it alive as long as the exports should run."""

    names: list[str] = field(default_factory=list)
    lost_pauses: int = 0
    _pause_since: int = 0
    _runs_since: int = 0
    _spills_since: int = 0
    _drain_lock: threading.Lock = field(default_factory=threading.Lock)
    _keep: list[Any] = field(default_factory=list)


def instrument(
    meter_provider: metrics.MeterProvider | None = None,
    *,
    monitor: MemoryMonitor | None = None,
    sessions: SessionManager | None = None,
    gc_manager: GarbageCollectionManager | None = None,
    timer: PauseTimer = GC_PAUSES,
) -> OTelInstruments:
    """Register our instruments on ``meter_provider`` (the global one by default)."""
    provider = meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter("pathoai_memobs", __version__)
    out = OTelInstruments()
    timer.install()
    out._pause_since = timer.recent(0)[1]
    values: dict[str, Values] = _gc_values(gc_manager)
    scope = "host"
    if monitor is not None:
        first = monitor.last_reading or monitor.sample()
        scope = "cgroup" if first.source.startswith("cgroup") else "host"
        values |= _monitor_values(monitor)
    if sessions is not None:
        values |= _session_values(sessions)
    reg = _Registrar(meter, out)
    # The histograms first: the counters' callbacks below drain into them.
    pauses = reg.histogram(_spec("pathoai.gc.duration"), PAUSE_BUCKETS)

    def drain_pauses() -> None:
        with out._drain_lock:
            found, out._pause_since, lost = timer.recent(out._pause_since)
            out.lost_pauses += lost
        for seconds, generation in found:
            pauses.record(seconds, {GEN: generation})

    before: dict[str, Callable[[], None]] = {"cpython.gc.collections": drain_pauses}
    if monitor is not None:
        runs = reg.histogram(_spec("pathoai.emergency.cleanup.duration"), DURATION_BUCKETS)
        out._runs_since = monitor.emergency_runs_since(0)[1]

        def drain_runs() -> None:
            with out._drain_lock:
                found_runs, out._runs_since = monitor.emergency_runs_since(out._runs_since)
            for run in found_runs:
                runs.record(run.duration_s)

        before["pathoai.emergency.cleanups"] = drain_runs
    if sessions is not None:
        spills = reg.histogram(_spec("pathoai.session.spill.duration"), IO_BUCKETS)
        out._spills_since = sessions.spill_durations.since(0)[1]

        def drain_spills() -> None:
            with out._drain_lock:
                found_ops, out._spills_since = sessions.spill_durations.since(out._spills_since)
            for op, seconds in found_ops:
                spills.record(seconds, {"pathoai.spill.operation": op})

        before["pathoai.session.spilled"] = drain_spills
    for spec, sources in _observed(values, scope):
        reg.observable(spec, _callback(sources, before.get(spec.name)))
    return out


def _spec(name: str) -> OTel:
    """The catalogue's declaration of one OpenTelemetry instrument."""
    for metric in CATALOGUE:
        for spec in metric.otel:
            if spec.name == name:
                return spec
    raise KeyError(name)


def _observed(
    values: dict[str, Values], scope: str
) -> list[tuple[OTel, list[tuple[OTel, Values]]]]:
    """Each observable instrument in scope, with the (declaration, values) feeding it: one
    OpenTelemetry name may gather several metrics (``system.memory.usage`` by state)."""
    grouped: dict[str, list[tuple[OTel, Values]]] = {}
    declared = [(spec, metric.name) for metric in CATALOGUE for spec in metric.otel]
    declared += [(spec, spec.name) for spec, _ in OTEL_ONLY]
    for spec, source in declared:
        if spec.instrument != "histogram" and spec.scope in ("any", scope) and source in values:
            grouped.setdefault(spec.name, []).append((spec, values[source]))
    return [(feeds[0][0], feeds) for feeds in grouped.values()]


def _callback(
    sources: list[tuple[OTel, Values]], before: Callable[[], None] | None
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """Observations of ``sources``: label values become the declared attributes."""
    if len(sources) == 1 and not sources[0][0].attributes and not sources[0][0].fixed:
        fn = sources[0][1]  # the common case: one number, no attributes

        def single(_: CallbackOptions) -> Iterable[Observation]:
            if before is not None:
                before()
            value = fn()  # None: nothing to report now (a gauge that is off)
            # None, not {}: the SDK copies and cleans every attributes mapping, even empty.
            return [] if value is None else [Observation(value, None)]

        return single

    def labelled(_: CallbackOptions) -> Iterable[Observation]:
        if before is not None:
            before()
        found: list[Observation] = []
        for spec, fn in sources:
            fixed = dict(spec.fixed)
            if not spec.attributes:
                found.append(Observation(fn(), fixed or None))
                continue
            names = spec.attributes
            for labels, number in fn():
                found.append(Observation(number, dict(zip(names, labels, strict=True)) | fixed))
        return found

    return labelled


def _labelled(counts: Any, known: Iterable[str]) -> list[tuple[tuple[str], int]]:
    """One pair per known key (0 when unseen) and per key seen beyond them."""
    keys = dict.fromkeys(known) | dict.fromkeys(counts)
    return [((k,), counts.get(k, 0)) for k in keys]


class _Registrar:
    """Creates the instruments the catalogue declares and keeps their names and references."""

    def __init__(self, meter: Any, out: OTelInstruments) -> None:
        self.meter, self.out = meter, out

    def _keep(self, name: str, instrument: Any) -> Any:
        self.out.names.append(name)
        self.out._keep.append(instrument)
        return instrument

    def observable(self, spec: OTel, fn: Any) -> None:
        create = {
            "gauge": self.meter.create_observable_gauge,
            "updown": self.meter.create_observable_up_down_counter,
            "counter": self.meter.create_observable_counter,
        }[spec.instrument]
        self._keep(spec.name, create(spec.name, [fn], unit=spec.unit, description=_help(spec)))

    def histogram(self, spec: OTel, bounds: Iterable[float]) -> Any:
        """A histogram with ``bounds`` as its advisory bucket boundaries (seconds-scale where
        the SDK's defaults are milliseconds)."""
        instrument = self.meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=_help(spec),
            explicit_bucket_boundaries_advisory=list(bounds),
        )
        return self._keep(spec.name, instrument)


def _help(spec: OTel) -> str:
    for metric in CATALOGUE:
        if spec in metric.otel:
            return metric.help
    return next(note for o, note in OTEL_ONLY if o == spec)


class _Memo:
    """A value shared by the callbacks of one collection: computed once per ``ttl_s``."""

    def __init__(self, fn: Any, ttl_s: float = 0.05) -> None:
        self.fn, self.ttl_s = fn, ttl_s
        self.value: Any = None
        self.until = -1.0

    def __call__(self) -> Any:
        now = time.monotonic()
        if now >= self.until:
            self.value, self.until = self.fn(), now + self.ttl_s
        return self.value


def _gc_values(gc_manager: GarbageCollectionManager | None) -> dict[str, Values]:
    from ..gc_manager import GarbageCollectionManager  # noqa: PLC0415

    stats = _Memo(gc.get_stats)

    def per_generation(key: str) -> Values:
        return lambda: [((g,), s[key]) for g, s in enumerate(stats()[:GENERATIONS])]

    out: dict[str, Values] = {
        "pathoai_gc_collections_total": per_generation("collections"),
        "pathoai_gc_collected_objects_total": per_generation("collected"),
        "pathoai_gc_uncollectable_objects_total": per_generation("uncollectable"),
        "pathoai_gc_frozen_objects": GarbageCollectionManager.frozen_count,
    }
    if gc_manager is not None:
        manager = gc_manager
        out["pathoai_gc_manager_collections_total"] = lambda: _labelled(
            manager.triggered, GC_REASONS
        )
    return out


def _monitor_values(m: MemoryMonitor) -> dict[str, Values]:
    reading = _Memo(lambda: m.last_reading if m.running and m.last_reading else m.sample())
    totals = _Memo(lambda: m.emergency_totals)
    breakdown = _Memo(m.memory_breakdown)
    heap = _Memo(m.allocator.heap)
    t = m.thresholds

    def fitted() -> Thresholds:
        return t.for_total(reading().total_bytes)

    def stall() -> list[tuple[tuple[str], float]]:
        p = m.pressure
        return [] if p is None else [(("some",), p.some_avg10), (("full",), p.full_avg10)]

    return {
        "pathoai_memory_limit_bytes": lambda: reading().total_bytes,
        "pathoai_memory_used_bytes": lambda: reading().used_bytes,
        "pathoai_memory_available_bytes": lambda: reading().available_bytes,
        "pathoai_memory_used_ratio": lambda: reading().used_ratio,
        "process.memory.usage": lambda: reading().process_rss_bytes,
        "pathoai_memory_pressure_level": lambda: int(m.level),
        "pathoai_memory_pressure_stall_ratio": stall,
        "pathoai_memory_warning_threshold_ratio": lambda: fitted().warning_ratio,
        "pathoai_memory_critical_threshold_ratio": lambda: fitted().critical_ratio,
        "pathoai_memory_emergency_threshold_bytes": lambda: t.floor_bytes,
        "pathoai_memory_reserved_bytes": lambda: m.reserved_bytes,
        "pathoai_requests_rejected_total": lambda: m.requests_rejected_total,
        "pathoai_requests_total": lambda: m.admission.requests_total,
        "pathoai_sessions_budget_bytes": m.gate.budget_bytes,
        "pathoai_admission_queue_length": lambda: m.admission.queue_length,
        "pathoai_emergency_cleanups_total": lambda: totals().runs,
        "pathoai_emergency_cleanup_freed_bytes_total": lambda: totals().freed_bytes,
        "pathoai_cleanup_callback_failures_total": lambda: _labelled(
            totals().callback_failures, m.cleanup_callback_names
        ),
        "pathoai_cleanup_callback_freed_bytes_total": lambda: _labelled(
            totals().callback_freed_bytes, m.cleanup_callback_names
        ),
        "pathoai_monitor_last_sample_timestamp_seconds": lambda: m.last_sample_timestamp,
        "pathoai_monitor_errors_total": lambda: _labelled(m.errors_total, ERROR_PLACES),
        "pathoai_memory_charged_bytes": lambda: [
            ((k,), n) for k, n in (breakdown()[0] or {}).items()
        ],
        "pathoai_process_memory_bytes": lambda: [
            ((k,), n) for k, n in (breakdown()[1] or {}).items()
        ],
        "pathoai_memory_managed_bytes": m.managed_bytes,
        "pathoai_oom_kills_total": m.oom_kills,
        "pathoai_previous_run_info": lambda: (
            [] if (p := m.previous_run) is None else [((str(p["ending"]), str(p["last_level"])), 1)]
        ),
        "pathoai_allocator_heap_bytes": lambda: [
            ((state,), n) for state, n in zip(HEAP_STATES, heap() or (), strict=False)
        ],
        "pathoai_allocator_arenas": m.allocator.arenas,
        "pathoai_allocator_trims_total": lambda: m.allocator.trims if heap() else None,
        "pathoai_allocator_trimmed_bytes_total": lambda: (
            m.allocator.trimmed_bytes if heap() else None
        ),
        "pathoai_memory_unmanaged_bytes": lambda: (
            None if (p := breakdown()[1]) is None else max(0, sum(p.values()) - m.managed_bytes())
        ),
        "pathoai_cache_memory_bytes": lambda: [((c.name,), c.nbytes) for c in m.caches],
        "pathoai_cache_memory_limit_bytes": lambda: [((c.name,), c.max_bytes) for c in m.caches],
        "pathoai_cache_evictions_total": lambda: [
            ((c.name, cause), c.evictions.get(cause, 0))
            for c in m.caches
            for cause in CACHE_EVICTION_CAUSES
        ],
        "pathoai_cache_requests_total": lambda: [
            pair
            for c in m.caches
            for pair in (((c.name, "hit"), c.hits), ((c.name, "miss"), c.misses))
        ],
    }


def _session_values(s: SessionManager) -> dict[str, Values]:
    agg = _Memo(s.aggregates)
    return {
        "pathoai_sessions_active": lambda: agg().active,
        "pathoai_sessions_created_total": lambda: agg().created_total,
        "pathoai_sessions_removed_total": lambda: _labelled(agg().removed_total, REMOVAL_REASONS),
        "pathoai_session_memory_bytes": lambda: agg().total_bytes,
        "pathoai_session_memory_max_bytes": lambda: agg().largest_bytes,
        "pathoai_session_memory_limit_bytes": lambda: s.max_memory_bytes,
        "pathoai_session_top_memory_bytes": lambda: [((fp,), n) for fp, n in agg().top],
        "pathoai_sessions_spilled": lambda: s.spilled_sessions,
        "pathoai_session_spilled_bytes": lambda: (
            0 if s.spill_store is None else s.spill_store.spilled_bytes
        ),
        "pathoai_session_spill_refusals_total": lambda: _labelled(
            s.spill_refusals, SPILL_REFUSAL_CAUSES
        ),
        "pathoai_session_spill_disk_free_bytes": lambda: (
            None if s.spill_store is None else s.spill_store.disk()[0]
        ),
        "pathoai_session_spill_disk_size_bytes": lambda: (
            None if s.spill_store is None else s.spill_store.disk()[1]
        ),
    }


def setup_otlp(readers: Sequence[Any] = ()) -> MeterProvider:
    """A MeterProvider exporting over OTLP, configured by the standard variables only.

    ``OTEL_EXPORTER_OTLP_(METRICS_)PROTOCOL`` picks ``grpc`` or ``http/protobuf`` (the
    default, as the specification says); endpoint, headers, timeout and temporality are
    read by the exporter (``OTEL_EXPORTER_OTLP_*``), the export interval by the reader
    (``OTEL_METRIC_EXPORT_INTERVAL``), service name and resource attributes by the
    resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``). Under gunicorn call it
    in ``post_fork``: the exporting thread belongs to the process that built it.
    """
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as HttpExporter,
        )

        exporter = HttpExporter()
    else:
        from ..exceptions import ConfigError  # noqa: PLC0415

        raise ConfigError("OTEL_EXPORTER_OTLP_PROTOCOL", protocol, "expected grpc or http/protobuf")
    reader = PeriodicExportingMetricReader(exporter)
    # process.pid tells workers of one service apart (their series would otherwise collide).
    resource = Resource.create({"process.pid": os.getpid()})
    return MeterProvider(resource=resource, metric_readers=[reader, *readers])

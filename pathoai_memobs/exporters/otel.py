"""OpenTelemetry: the same live state as OTel instruments, pushed over OTLP.

``instrument()`` registers observable instruments over a monitor, a session manager and
the GC state, and two histograms (GC pauses, emergency runs) fed outside the gc callback:
the pause timer keeps recent pauses in a lock-free ring, and the collection callbacks
drain it into the histogram. Names follow the semantic conventions where one exists
(``container.memory.*`` when the reading comes from a cgroup, ``system.memory.*``
otherwise, ``process.memory.usage``, ``cpython.gc.*``) and ``pathoai.*`` elsewhere;
units are UCUM. The mapping to the Prometheus names is in docs/metrics.md.

``setup_otlp()`` builds a MeterProvider exporting over OTLP, configured only by the
standard ``OTEL_*`` variables. OpenTelemetry is imported only when this module is.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .. import __version__
from ..emergency import DURATION_BUCKETS
from ..gc_pauses import GC_PAUSES, GENERATIONS, PAUSE_BUCKETS, PauseTimer
from .prometheus import ERROR_PLACES, GC_REASONS, REMOVAL_REASONS

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider

    from ..gc_manager import GarbageCollectionManager
    from ..monitor import MemoryMonitor
    from ..session_manager import SessionManager

GEN = "cpython.gc.generation"


@dataclass
class OTelInstruments:
    """What ``instrument()`` registered; keep it alive as long as the exports should run."""

    names: list[str] = field(default_factory=list)
    lost_pauses: int = 0
    _pause_since: int = 0
    _runs_since: int = 0
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

    reg = _Registrar(meter, out)
    gauge, counter, one = reg.gauge, reg.counter, _one

    # -- GC first: its callback drains pauses into the histogram created right after ---------
    pauses = reg.histogram(
        "pathoai.gc.duration",
        "s",
        "Pause of each garbage collection, by generation.",
        PAUSE_BUCKETS,
    )

    def drain_pauses() -> None:
        with out._drain_lock:
            values, out._pause_since, lost = timer.recent(out._pause_since)
            out.lost_pauses += lost
        for seconds, generation in values:
            pauses.record(seconds, {GEN: generation})

    def gc_collections(_: CallbackOptions) -> Iterable[Observation]:
        drain_pauses()
        snap = timer.snapshot()
        return [Observation(snap.count[g], {GEN: g}) for g in range(GENERATIONS)]

    counter("cpython.gc.collections", "{collection}", "Collections, by generation.", gc_collections)
    counter(
        "cpython.gc.collected_objects",
        "{object}",
        "Objects freed by the collector, by generation.",
        lambda _: [Observation(n, {GEN: g}) for g, n in enumerate(timer.snapshot().collected)],
    )
    counter(
        "cpython.gc.uncollectable_objects",
        "{object}",
        "Objects the collector found uncollectable, by generation.",
        lambda _: [Observation(n, {GEN: g}) for g, n in enumerate(timer.snapshot().uncollectable)],
    )
    from ..gc_manager import GarbageCollectionManager  # noqa: PLC0415

    gauge(
        "pathoai.gc.frozen_objects",
        "{object}",
        "Objects frozen out of the collector's reach.",
        lambda _: one(GarbageCollectionManager.frozen_count()),
    )
    if gc_manager is not None:
        manager = gc_manager
        counter(
            "pathoai.gc.manager.collections",
            "{collection}",
            "Collections the GC manager ran, by reason.",
            lambda _: [
                Observation(manager.triggered.get(r, 0), {"pathoai.gc.reason": r})
                for r in dict.fromkeys(GC_REASONS) | dict.fromkeys(manager.triggered)
            ],
        )

    if monitor is not None:
        _monitor_instruments(reg, monitor)
    if sessions is not None:
        _session_instruments(reg, sessions)
    return out


def _labelled(counts: Any, known: Iterable[str], attribute: str) -> list[Observation]:
    """One observation per known key (0 when unseen) and per key seen beyond them."""
    keys = dict.fromkeys(known) | dict.fromkeys(counts)
    return [Observation(counts.get(k, 0), {attribute: k}) for k in keys]


def _states(r: Any) -> list[Observation]:
    return [
        Observation(r.used_bytes, {"system.memory.state": "used"}),
        Observation(r.available_bytes, {"system.memory.state": "free"}),
    ]


def _one(value: float, attrs: dict[str, Any] | None = None) -> list[Observation]:
    # None, not {}: the SDK copies and cleans every attributes mapping, even an empty one.
    return [Observation(value, attrs or None)]


class _Registrar:
    """Creates instruments (observable ones, and histograms fed by a callback's drain) and
    keeps their names and references."""

    def __init__(self, meter: Any, out: OTelInstruments) -> None:
        self.meter, self.out = meter, out

    def _keep(self, name: str, instrument: Any) -> None:
        self.out.names.append(name)
        self.out._keep.append(instrument)

    def gauge(self, name: str, unit: str, desc: str, fn: Any) -> None:
        self._keep(
            name, self.meter.create_observable_gauge(name, [fn], unit=unit, description=desc)
        )

    def updown(self, name: str, unit: str, desc: str, fn: Any) -> None:
        self._keep(
            name,
            self.meter.create_observable_up_down_counter(name, [fn], unit=unit, description=desc),
        )

    def counter(self, name: str, unit: str, desc: str, fn: Any) -> None:
        self._keep(
            name, self.meter.create_observable_counter(name, [fn], unit=unit, description=desc)
        )

    def histogram(self, name: str, unit: str, desc: str, bounds: Iterable[float]) -> Any:
        """A histogram with ``bounds`` as its advisory bucket boundaries (seconds-scale where
        the SDK's defaults are milliseconds)."""
        instrument = self.meter.create_histogram(
            name, unit=unit, description=desc, explicit_bucket_boundaries_advisory=list(bounds)
        )
        self._keep(name, instrument)
        return instrument


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


def _monitor_instruments(reg: _Registrar, m: MemoryMonitor) -> None:
    out = reg.out
    gauge, updown, counter, one = reg.gauge, reg.updown, reg.counter, _one
    first = m.last_reading or m.sample()
    prefix = "container.memory" if first.source.startswith("cgroup") else "system.memory"

    reading = _Memo(lambda: m.last_reading if m.running and m.last_reading else m.sample())
    totals = _Memo(lambda: m.emergency_totals)

    if prefix == "container.memory":
        updown(
            "container.memory.usage",
            "By",
            "Working set of the container (usage minus inactive file cache).",
            lambda _: one(reading().used_bytes),
        )
        updown(
            "container.memory.available",
            "By",
            "Memory available before the limit.",
            lambda _: one(reading().available_bytes),
        )
        updown(
            "pathoai.memory.limit",
            "By",
            "The lowest cgroup limit up the tree.",
            lambda _: one(reading().total_bytes),
        )
    else:
        updown(
            "system.memory.usage",
            "By",
            "Host memory by state (used, free).",
            lambda _: _states(reading()),
        )
        updown(
            "system.memory.limit", "By", "Total host memory.", lambda _: one(reading().total_bytes)
        )
    gauge(
        f"{prefix}.utilization",
        "1",
        "Used over the limit, 0..1.",
        lambda _: one(reading().used_ratio),
    )
    updown(
        "process.memory.usage",
        "By",
        "Resident memory of this process.",
        lambda _: one(reading().process_rss_bytes),
    )
    gauge(
        "pathoai.memory.pressure.level",
        "1",
        "0 normal, 1 warning, 2 critical, 3 emergency.",
        lambda _: one(int(m.level)),
    )

    def stall(_: CallbackOptions) -> Iterable[Observation]:
        p = m.pressure
        if p is None:
            return []
        return [
            Observation(p.some_avg10, {"pathoai.psi.kind": "some"}),
            Observation(p.full_avg10, {"pathoai.psi.kind": "full"}),
        ]

    gauge("pathoai.memory.pressure.stall", "1", "PSI memory avg10, 0..1.", stall)
    t = m.thresholds
    gauge(
        "pathoai.memory.warning_threshold",
        "1",
        "Warning used ratio.",
        lambda _: one(t.warning_ratio),
    )
    gauge(
        "pathoai.memory.critical_threshold",
        "1",
        "Critical used ratio.",
        lambda _: one(t.critical_ratio),
    )
    gauge(
        "pathoai.memory.emergency_threshold",
        "By",
        "Emergency floor of available memory.",
        lambda _: one(t.floor_bytes),
    )
    updown(
        "pathoai.memory.reserved",
        "By",
        "Memory reserved by requests in flight.",
        lambda _: one(m.reserved_bytes),
    )
    counter(
        "pathoai.requests.rejected",
        "{request}",
        "Requests refused by admission control.",
        lambda _: one(m.requests_rejected_total),
    )
    durations = reg.histogram(
        "pathoai.emergency.cleanup.duration",
        "s",
        "Duration of each emergency cleanup run.",
        DURATION_BUCKETS,
    )
    out._runs_since = m.emergency_runs_since(0)[1]

    def cleanups(_: CallbackOptions) -> Iterable[Observation]:
        with out._drain_lock:
            runs, out._runs_since = m.emergency_runs_since(out._runs_since)
        for run in runs:
            durations.record(run.duration_s)
        return one(totals().runs)

    counter("pathoai.emergency.cleanups", "{run}", "Emergency cleanup runs.", cleanups)
    counter(
        "pathoai.emergency.freed",
        "By",
        "Available memory won back by emergency runs.",
        lambda _: one(totals().freed_bytes),
    )

    def failures(_: CallbackOptions) -> Iterable[Observation]:
        counted = totals().callback_failures
        return _labelled(counted, m.cleanup_callback_names, "pathoai.cleanup_callback.name")

    counter(
        "pathoai.cleanup_callback.failures",
        "{failure}",
        "Emergency cleanup callbacks that raised, by callback.",
        failures,
    )
    gauge(
        "pathoai.monitor.last_sample_time",
        "s",
        "Unix time of the last good reading.",
        lambda _: one(m.last_sample_timestamp),
    )
    counter(
        "pathoai.monitor.errors",
        "{error}",
        "Errors the monitor survived, by where.",
        lambda _: _labelled(m.errors_total, ERROR_PLACES, "pathoai.monitor.error.where"),
    )


def _session_instruments(reg: _Registrar, s: SessionManager) -> None:
    gauge, updown, counter, one = reg.gauge, reg.updown, reg.counter, _one
    agg = _Memo(s.aggregates)
    updown(
        "pathoai.session.active",
        "{session}",
        "Live sessions.",
        lambda _: one(agg().active),
    )
    counter(
        "pathoai.session.created",
        "{session}",
        "Sessions created.",
        lambda _: one(agg().created_total),
    )
    counter(
        "pathoai.session.removed",
        "{session}",
        "Sessions removed, by reason.",
        lambda _: _labelled(agg().removed_total, REMOVAL_REASONS, "pathoai.session.removal_reason"),
    )
    updown(
        "pathoai.session.memory",
        "By",
        "Accounted host memory of all live sessions.",
        lambda _: one(agg().total_bytes),
    )
    gauge(
        "pathoai.session.memory.max",
        "By",
        "Accounted memory of the largest session.",
        lambda _: one(agg().largest_bytes),
    )
    gauge(
        "pathoai.session.memory.limit",
        "By",
        "Per-session memory limit.",
        lambda _: one(s.max_memory_bytes),
    )
    gauge(
        "pathoai.session.top.memory",
        "By",
        "Accounted memory of the largest sessions, by fingerprint (never the id).",
        lambda _: [Observation(n, {"pathoai.session.fingerprint": fp}) for fp, n in agg().top],
    )


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

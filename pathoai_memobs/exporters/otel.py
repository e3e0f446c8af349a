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

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .. import __version__
from ..durations import IO_BUCKETS
from ..emergency import DURATION_BUCKETS
from ..gc_pauses import GC_PAUSES, PAUSE_BUCKETS, PauseTimer
from .catalogue import CATALOGUE, GEN, OTEL_ONLY, OTel
from .otel_values import Values, gc_values, monitor_values, session_values

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider

    from ..gc_manager import GarbageCollectionManager
    from ..monitor import MemoryMonitor
    from ..session_manager import SessionManager


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
    values: dict[str, Values] = gc_values(gc_manager)
    scope = "host"
    if monitor is not None:
        first = monitor.last_reading or monitor.sample()
        scope = "cgroup" if first.source.startswith("cgroup") else "host"
        values |= monitor_values(monitor)
    if sessions is not None:
        values |= session_values(sessions)
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

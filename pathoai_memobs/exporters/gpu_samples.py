"""What the GPU part exports, for both exporters: each GPU metric of the catalogue as
(label values, number) pairs, from one read of the devices (the loop's latest while it
runs), so Prometheus and OpenTelemetry show the same numbers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..gpu_errors import CAUGHT
from .catalogue import BY_NAME, family_name

if TYPE_CHECKING:
    from ..monitor import MemoryMonitor

Samples = dict[str, list[tuple[tuple[str, ...], float]]]

#: The catalogue's GPU metrics, in exposition order.
GPU_METRICS = tuple(name for name in BY_NAME if name.startswith("pathoai_gpu_"))


def gpu_samples(m: MemoryMonitor) -> Samples:
    """Every GPU metric's samples now (empty lists where no GPU is read)."""
    watch = m.gpu
    devices = watch.devices if m.running and watch.devices else watch.read()
    out: Samples = {name: [] for name in GPU_METRICS}
    uuids = {d.index: d.uuid for d in devices}
    reserved = m.admission.gpu_reserved
    for d in devices:
        key = (str(d.index), d.uuid)
        floor = watch.ladder.floor_bytes(d.total)
        for name, value in (
            ("limit_bytes", d.total), ("used_bytes", d.used), ("available_bytes", d.free),
            ("used_ratio", d.used_ratio), ("pressure_level", int(watch.ladder.level(d.index))),
            ("emergency_threshold_bytes", floor), ("reserved_bytes", reserved.get(d.index, 0)),
        ):  # fmt: skip
            out[f"pathoai_gpu_memory_{name}"].append((key, value))
        if d.process is not None:
            out["pathoai_gpu_process_memory_bytes"].append((key, d.process))
        t = d.torch
        if t is not None:
            for name, value in (
                ("allocated_bytes", t.allocated), ("reserved_bytes", t.reserved),
                ("peak_allocated_bytes", t.peak), ("fragmentation_ratio", t.fragmentation),
                ("alloc_retries_total", t.alloc_retries), ("ooms_total", t.ooms),
            ):  # fmt: skip
                out[f"pathoai_gpu_torch_{name}"].append((key, value))
    for index, cleanup in sorted(watch.cleanups.items()):
        key = (str(index), uuids.get(index, ""))
        out["pathoai_gpu_emergency_cleanups_total"].append((key, cleanup.totals.runs))
        out["pathoai_gpu_cache_returned_bytes_total"].append((key, cleanup.cache_returned_bytes))
    out["pathoai_gpu_oom_errors_total"] = [((d,), n) for d, n in sorted(CAUGHT.totals().items())]
    return out


def gpu_families(m: MemoryMonitor) -> Iterator[Metric]:
    """The Prometheus families of ``gpu_samples``; those with no sample are left out,
    but for the caught-OOM counter, exported from the start."""
    for name, samples in gpu_samples(m).items():
        if not samples and name != "pathoai_gpu_oom_errors_total":
            continue
        spec = BY_NAME[name]
        family: GaugeMetricFamily | CounterMetricFamily
        if spec.kind == "counter":
            family = CounterMetricFamily(family_name(spec), spec.help, labels=list(spec.labels))
        else:
            family = GaugeMetricFamily(name, spec.help, labels=list(spec.labels))
        for labels, value in samples:
            family.add_metric(list(labels), value)
        yield family

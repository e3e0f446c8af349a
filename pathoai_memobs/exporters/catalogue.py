"""Every exported metric: name, type, unit, labels, meaning, and how workers combine.

One catalogue serves both exporters (Prometheus names here; OpenTelemetry names beside
them) and docs/metrics.md, which a test keeps equal to it. Names are public API.
``merge`` says how the multiprocess collector combines workers: ``sum`` (counters,
histograms, per-worker quantities), ``max``/``min`` (one shared quantity seen by every
worker, e.g. the container's memory), ``union`` (label sets such as info metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["gauge", "counter", "histogram", "gaugehistogram"]
Merge = Literal["sum", "max", "min", "union", "top"]


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed (counters with their _total)
    kind: Kind
    unit: str  # "bytes", "seconds", "ratio", "" (a count or a level)
    labels: tuple[str, ...]
    help: str
    merge: Merge


CATALOGUE: Final[tuple[Metric, ...]] = (
    # memory, as the OOM killer sees it
    Metric(
        "pathoai_memory_limit_bytes",
        "gauge",
        "bytes",
        (),
        "Memory this process may use: the lowest cgroup limit up the tree, or the host's total.",
        "max",
    ),
    Metric(
        "pathoai_memory_used_bytes",
        "gauge",
        "bytes",
        (),
        "Memory in use against the limit: the cgroup working set (usage minus inactive file cache), or the host's total minus available.",
        "max",
    ),
    Metric(
        "pathoai_memory_available_bytes",
        "gauge",
        "bytes",
        (),
        "Memory still available before the limit (the lower of the cgroup's and the host's).",
        "min",
    ),
    Metric("pathoai_memory_used_ratio", "gauge", "ratio", (), "Used over limit, 0..1.", "max"),
    Metric(
        "pathoai_memory_source_info",
        "gauge",
        "",
        ("source",),
        "Where the reading comes from: cgroup_v1, cgroup_v2 or host (always 1).",
        "union",
    ),
    Metric(
        "pathoai_memory_pressure_stall_ratio",
        "gauge",
        "ratio",
        ("kind",),
        "PSI memory avg10: share of the last 10 s in which some (or all) tasks stalled on memory.",
        "max",
    ),
    Metric(
        "pathoai_memory_pressure_level",
        "gauge",
        "",
        (),
        "Pressure level: 0 normal, 1 warning, 2 critical, 3 emergency.",
        "max",
    ),
    Metric(
        "pathoai_memory_warning_threshold_ratio",
        "gauge",
        "ratio",
        (),
        "Used ratio at which the warning level starts (MAX_MEMORY_PERCENT / 100).",
        "max",
    ),
    Metric(
        "pathoai_memory_critical_threshold_ratio",
        "gauge",
        "ratio",
        (),
        "Used ratio at which the critical level (proactive GC) starts.",
        "max",
    ),
    Metric(
        "pathoai_memory_emergency_threshold_bytes",
        "gauge",
        "bytes",
        (),
        "Available memory below which the emergency level (cleanup, rejection) starts.",
        "max",
    ),
    Metric(
        "pathoai_memory_reserved_bytes",
        "gauge",
        "bytes",
        (),
        "Memory reserved by admitted requests still in flight.",
        "sum",
    ),
    Metric(
        "pathoai_requests_rejected_total",
        "counter",
        "",
        (),
        "Requests refused by admission control.",
        "sum",
    ),
    # sessions
    Metric("pathoai_sessions_active", "gauge", "", (), "Live sessions.", "sum"),
    Metric("pathoai_sessions_created_total", "counter", "", (), "Sessions created.", "sum"),
    Metric(
        "pathoai_sessions_removed_total",
        "counter",
        "",
        ("reason",),
        "Sessions removed, by reason: timeout, explicit, emergency.",
        "sum",
    ),
    Metric(
        "pathoai_session_memory_bytes",
        "gaugehistogram",
        "bytes",
        (),
        "Distribution of the live sessions' accounted host memory (gauge histogram; _gsum is the total).",
        "sum",
    ),
    Metric(
        "pathoai_session_device_memory_bytes",
        "gauge",
        "bytes",
        (),
        "Accounted device (GPU) memory of all live sessions.",
        "sum",
    ),
    Metric(
        "pathoai_session_memory_limit_bytes",
        "gauge",
        "bytes",
        (),
        "Per-session memory limit (MAX_SESSION_MEMORY_GB).",
        "max",
    ),
    Metric(
        "pathoai_session_memory_max_bytes",
        "gauge",
        "bytes",
        (),
        "Accounted memory of the largest live session.",
        "max",
    ),
    Metric(
        "pathoai_session_top_memory_bytes",
        "gauge",
        "bytes",
        ("session",),
        "Accounted memory of the largest sessions, by fingerprint (never the id).",
        "top",
    ),
    Metric(
        "pathoai_session_removal_hook_failures_total",
        "counter",
        "",
        (),
        "Session removal hooks that raised.",
        "sum",
    ),
    # garbage collection
    Metric(
        "pathoai_gc_duration_seconds",
        "histogram",
        "seconds",
        ("generation",),
        "Pause of each garbage collection the interpreter ran, by generation.",
        "sum",
    ),
    Metric(
        "pathoai_gc_collected_objects_total",
        "counter",
        "",
        ("generation",),
        "Objects freed by the garbage collector, by generation.",
        "sum",
    ),
    Metric(
        "pathoai_gc_uncollectable_objects_total",
        "counter",
        "",
        ("generation",),
        "Objects the garbage collector found uncollectable, by generation.",
        "sum",
    ),
    Metric(
        "pathoai_gc_frozen_objects",
        "gauge",
        "",
        (),
        "Objects moved out of the collector's reach by freeze().",
        "sum",
    ),
    Metric(
        "pathoai_gc_manager_collections_total",
        "counter",
        "",
        ("reason",),
        "Collections the GC manager ran, by reason (manual, proactive, emergency).",
        "sum",
    ),
    Metric(
        "pathoai_gc_manager_skipped_collections_total",
        "counter",
        "",
        ("reason",),
        "Proactive collections skipped because collections already took too much time.",
        "sum",
    ),
    # emergency cleanup
    Metric("pathoai_emergency_cleanups_total", "counter", "", (), "Emergency cleanup runs.", "sum"),
    Metric(
        "pathoai_emergency_cleanup_duration_seconds",
        "histogram",
        "seconds",
        (),
        "Duration of each emergency cleanup run.",
        "sum",
    ),
    Metric(
        "pathoai_emergency_cleanup_freed_bytes_total",
        "counter",
        "bytes",
        (),
        "Available memory won back by emergency cleanup runs.",
        "sum",
    ),
    Metric(
        "pathoai_cleanup_callback_failures_total",
        "counter",
        "",
        ("callback",),
        "Emergency cleanup callbacks that raised, by callback name.",
        "sum",
    ),
    Metric(
        "pathoai_cleanup_callback_overruns_total",
        "counter",
        "",
        ("callback",),
        "Emergency cleanup callbacks that overran their time budget, by callback name.",
        "sum",
    ),
    # the monitor itself
    Metric(
        "pathoai_monitor_last_sample_timestamp_seconds",
        "gauge",
        "seconds",
        (),
        "Unix time of the monitor's last good reading (the oldest across workers).",
        "min",
    ),
    Metric(
        "pathoai_monitor_interval_seconds",
        "gauge",
        "seconds",
        (),
        "Configured sampling interval (MemoryConfig.monitoring_interval_sec).",
        "max",
    ),
    Metric(
        "pathoai_monitor_running",
        "gauge",
        "",
        (),
        "1 while the background monitor thread runs (summed over workers).",
        "sum",
    ),
    Metric(
        "pathoai_monitor_errors_total",
        "counter",
        "",
        ("where",),
        "Errors the monitor survived, by where: sample, action, wakeups (kernel event set-up or poll), emergency_step, scrape.",
        "sum",
    ),
    Metric(
        "pathoai_memobs_build_info",
        "gauge",
        "",
        ("version",),
        "pathoai-memobs version (always 1).",
        "union",
    ),
    Metric(
        "pathoai_multiprocess_workers",
        "gauge",
        "",
        (),
        "Worker processes whose state reached this exposition (multiprocess mode only).",
        "sum",
    ),
)

BY_NAME: Final = {m.name: m for m in CATALOGUE}


def family_name(metric: Metric) -> str:
    """The name prometheus_client families take (counters without ``_total``)."""
    return metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name

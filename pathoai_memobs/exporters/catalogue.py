"""Every exported metric: name, type, unit, labels, meaning, and how workers combine.

One catalogue serves both exporters and docs/metrics.md: each metric declares its
Prometheus name, type, unit and labels, and its OpenTelemetry instruments (name, UCUM
unit, kind, attribute names); the label values known in advance are here too. Tests keep
docs/metrics.md and what each exporter registers equal to it. Names are public API.
``merge`` says how the multiprocess collector combines workers: ``sum`` (counters,
histograms, per-worker quantities), ``max``/``min`` (one shared quantity seen by every
worker, e.g. the container's memory), ``union`` (label sets such as info metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["gauge", "counter", "histogram", "gaugehistogram"]
Merge = Literal["sum", "max", "min", "union", "top"]


Instrument = Literal["gauge", "updown", "counter", "histogram"]
Scope = Literal["any", "cgroup", "host"]

#: The generation attribute of the semantic conventions' cpython.gc.* metrics.
GEN: Final = "cpython.gc.generation"


@dataclass(frozen=True)
class OTel:
    """How one metric is exported to OpenTelemetry: instrument name (semantic conventions
    where one exists, ``pathoai.*`` otherwise), UCUM unit, instrument kind, the attribute
    name of each Prometheus label (in order), attributes every point carries, and for which
    readings it applies (``cgroup``: the reading comes from a cgroup; ``host``: not)."""

    name: str
    unit: str
    instrument: Instrument
    attributes: tuple[str, ...] = ()
    fixed: tuple[tuple[str, str], ...] = ()
    scope: Scope = "any"


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed (counters with their _total)
    kind: Kind
    unit: str  # "bytes", "seconds", "ratio", "" (a count or a level)
    labels: tuple[str, ...]
    help: str
    merge: Merge
    otel: tuple[OTel, ...] = ()  # its OpenTelemetry instruments (none: Prometheus only)


#: Label values known before they are seen: exported at 0 from the start by both exporters.
GC_REASONS: Final = ("manual", "proactive", "emergency")
#: Why a spill was refused (the session stays in memory), exported from the start.
SPILL_REFUSAL_CAUSES: Final = ("budget", "disk_full", "memory_fs", "io_error")
SPILL_OPERATIONS: Final = ("spill", "restore")
CACHE_EVICTION_CAUSES: Final = ("bound", "pressure", "explicit")
CACHE_RESULTS: Final = ("hit", "miss")
#: Kinds of the memory breakdown (readers.charges), exported from the start.
CHARGE_KINDS: Final = ("anon", "file_active", "file_inactive", "shmem", "kernel")
PROCESS_KINDS: Final = ("anon", "file", "shmem")
HEAP_STATES: Final = ("in_use", "free", "mmapped")
REMOVAL_REASONS: Final = ("timeout", "explicit", "emergency", "idle", "budget", "spill_corrupt")
ERROR_PLACES: Final = (
    "sample", "action", "wakeups", "emergency_step", "emergency_run", "scrape", "gpu",
)  # fmt: skip


#: GPU metrics' attributes (for the gpu and uuid labels), and those the hw.gpu.* semantic
#: conventions require on every point.
GPU_ATTRS: Final = ("pathoai.gpu.index", "hw.id")
GPU_FIXED: Final = (("hw.type", "gpu"),)


# A table: one metric a line reads better than each wrapped over eight.
# fmt: off
CATALOGUE: Final[tuple[Metric, ...]] = (
    # memory, as the OOM killer sees it
    Metric("pathoai_memory_limit_bytes", "gauge", "bytes", (), "Memory this process may use: the lowest cgroup limit up the tree, or the host's total.", "max", otel=(OTel("pathoai.memory.limit", "By", "updown", scope="cgroup"), OTel("system.memory.limit", "By", "updown", scope="host"),)),
    Metric("pathoai_memory_used_bytes", "gauge", "bytes", (), "Memory in use against the limit: the cgroup working set (usage minus inactive file cache), or the host's total minus available.", "max", otel=(OTel("container.memory.usage", "By", "updown", scope="cgroup"), OTel("system.memory.usage", "By", "updown", fixed=(("system.memory.state", "used"),), scope="host"),)),
    Metric("pathoai_memory_available_bytes", "gauge", "bytes", (), "Memory still available before the limit (the lower of the cgroup's and the host's).", "min", otel=(OTel("container.memory.available", "By", "updown", scope="cgroup"), OTel("system.memory.usage", "By", "updown", fixed=(("system.memory.state", "free"),), scope="host"),)),
    Metric("pathoai_memory_used_ratio", "gauge", "ratio", (), "Used over limit, 0..1.", "max", otel=(OTel("container.memory.utilization", "1", "gauge", scope="cgroup"), OTel("system.memory.utilization", "1", "gauge", scope="host"),)),
    Metric("pathoai_memory_source_info", "gauge", "", ("source",), "Where the reading comes from: cgroup_v1, cgroup_v2 or host (always 1).", "union"),
    Metric("pathoai_memory_pressure_stall_ratio", "gauge", "ratio", ("kind",), "PSI memory avg10: share of the last 10 s in which some (or all) tasks stalled on memory.", "max", otel=(OTel("pathoai.memory.pressure.stall", "1", "gauge", ("pathoai.psi.kind",)),)),
    Metric("pathoai_memory_pressure_level", "gauge", "", (), "Pressure level: 0 normal, 1 warning, 2 critical, 3 emergency.", "max", otel=(OTel("pathoai.memory.pressure.level", "1", "gauge"),)),
    Metric("pathoai_memory_rungs_in_order", "gauge", "", (), "1 when used memory reaches warning, then critical, then the emergency floor at this limit; 0 when a configuration puts the floor first (those levels can never show).", "min"),
    Metric("pathoai_memory_warning_threshold_ratio", "gauge", "ratio", (), "Used ratio at which the warning level starts (MAX_MEMORY_PERCENT / 100, fitted below the floor in small containers).", "max", otel=(OTel("pathoai.memory.warning_threshold", "1", "gauge"),)),
    Metric("pathoai_memory_critical_threshold_ratio", "gauge", "ratio", (), "Used ratio at which the critical level (proactive GC) starts.", "max", otel=(OTel("pathoai.memory.critical_threshold", "1", "gauge"),)),
    Metric("pathoai_memory_emergency_threshold_bytes", "gauge", "bytes", (), "Available memory below which the emergency level (cleanup, rejection) starts.", "max", otel=(OTel("pathoai.memory.emergency_threshold", "By", "gauge"),)),
    Metric("pathoai_memory_reserved_bytes", "gauge", "bytes", (), "Memory reserved by admitted requests still in flight.", "sum", otel=(OTel("pathoai.memory.reserved", "By", "updown"),)),
    Metric("pathoai_requests_rejected_total", "counter", "", (), "Requests refused by admission control.", "sum", otel=(OTel("pathoai.requests.rejected", "{request}", "counter"),)),
    Metric("pathoai_requests_total", "counter", "", (), "Requests that asked admission for memory (admitted or refused, each once): the denominator of the refusal ratio.", "sum", otel=(OTel("pathoai.requests", "{request}", "counter"),)),
    Metric("pathoai_admission_queue_length", "gauge", "", (), "Reservations waiting in line for memory now.", "sum", otel=(OTel("pathoai.admission.queue.length", "{request}", "updown"),)),
    Metric("pathoai_admission_waits_total", "counter", "", (), "Reservations that waited in line, admitted or not (those that ran out are also refusals).", "sum"),
    Metric("pathoai_admission_wait_seconds_total", "counter", "seconds", (), "Seconds reservations spent waiting in line, all together (over the waits: the average wait).", "sum"),
    Metric("pathoai_admission_abandoned_total", "counter", "", (), "Waits in line abandoned, mostly by a client that went away (a proxy timeout shorter than the wait shows here).", "sum"),
    # sessions
    Metric("pathoai_sessions_active", "gauge", "", (), "Live sessions.", "sum", otel=(OTel("pathoai.session.active", "{session}", "updown"),)),
    Metric("pathoai_sessions_created_total", "counter", "", (), "Sessions created.", "sum", otel=(OTel("pathoai.session.created", "{session}", "counter"),)),
    Metric("pathoai_sessions_removed_total", "counter", "", ("reason",), "Sessions removed, by reason: timeout, explicit, emergency, idle (freed to admit a request), budget (freed so new work fits the session budget), spill_corrupt (its spilled buffers could not be read back intact).", "sum", otel=(OTel("pathoai.session.removed", "{session}", "counter", ("pathoai.session.removal_reason",)),)),
    Metric("pathoai_sessions_budget_bytes", "gauge", "bytes", (), "Bytes all sessions of the container may hold so that the largest marked request still fits above the floor (limit - floor - largest request - the rest of the processes); absent while no largest request is declared.", "min", otel=(OTel("pathoai.session.budget", "By", "gauge"),)),
    Metric("pathoai_session_memory_bytes", "gaugehistogram", "bytes", (), "Distribution of the live sessions' accounted host memory (gauge histogram; _gsum is the total).", "sum", otel=(OTel("pathoai.session.memory", "By", "updown"),)),
    Metric("pathoai_session_device_memory_bytes", "gauge", "bytes", (), "Accounted device (GPU) memory of all live sessions.", "sum"),
    Metric("pathoai_session_memory_limit_bytes", "gauge", "bytes", (), "Per-session memory limit (MAX_SESSION_MEMORY_GB).", "max", otel=(OTel("pathoai.session.memory.limit", "By", "gauge"),)),
    Metric("pathoai_session_memory_max_bytes", "gauge", "bytes", (), "Accounted memory of the largest live session.", "max", otel=(OTel("pathoai.session.memory.max", "By", "gauge"),)),
    Metric("pathoai_session_top_memory_bytes", "gauge", "bytes", ("session",), "Accounted memory of the largest sessions, by fingerprint (never the id).", "top", otel=(OTel("pathoai.session.top.memory", "By", "gauge", ("pathoai.session.fingerprint",)),)),
    Metric("pathoai_sessions_spilled", "gauge", "", (), "Sessions whose large buffers are on disk now (SESSION_SPILL_DIR).", "sum", otel=(OTel("pathoai.session.spilled", "{session}", "updown"),)),
    Metric("pathoai_session_spilled_bytes", "gauge", "bytes", (), "Bytes of session buffers on disk now (not in memory).", "sum", otel=(OTel("pathoai.session.spilled.size", "By", "updown"),)),
    Metric("pathoai_session_spill_budget_bytes", "gauge", "bytes", (), "Bytes the spill store may hold (SESSION_SPILL_MAX_GB).", "max"),
    Metric("pathoai_session_spill_refusals_total", "counter", "", ("cause",), "Spills refused, the session kept in memory, by cause: budget, disk_full, memory_fs (tmpfs would free nothing), io_error.", "sum", otel=(OTel("pathoai.session.spill.refusals", "{spill}", "counter", ("pathoai.spill.cause",)),)),
    Metric("pathoai_session_spill_duration_seconds", "histogram", "seconds", ("operation",), "Duration of each spill (one session's buffers written to disk, none left in the page cache) and each restore (read back and checked), by operation.", "sum", otel=(OTel("pathoai.session.spill.duration", "s", "histogram", ("pathoai.spill.operation",)),)),
    Metric("pathoai_session_spill_disk_free_bytes", "gauge", "bytes", (), "Free bytes of the spill directory's filesystem (while spilling is on); spills stop short of SESSION_SPILL_MIN_FREE_PERCENT of its size.", "min", otel=(OTel("pathoai.session.spill.disk.free", "By", "gauge"),)),
    Metric("pathoai_session_spill_disk_size_bytes", "gauge", "bytes", (), "Size of the spill directory's filesystem (while spilling is on).", "max", otel=(OTel("pathoai.session.spill.disk.size", "By", "gauge"),)),
    # what the memory is (read at scrape time)
    Metric("pathoai_memory_charged_bytes", "gauge", "bytes", ("kind",), "The cgroup's memory charge by kind (memory.stat): anon, file_active, file_inactive (page cache the working set leaves out), shmem (tmpfs, /dev/shm), kernel (slab, sockets, page tables); absent outside a cgroup.", "max", otel=(OTel("pathoai.memory.charged", "By", "gauge", ("pathoai.memory.kind",)),)),
    Metric("pathoai_process_memory_bytes", "gauge", "bytes", ("kind",), "This process's resident memory by kind (/proc/self/status): anon, file (mapped files), shmem.", "sum", otel=(OTel("pathoai.process.memory", "By", "gauge", ("pathoai.memory.kind",)),)),
    Metric("pathoai_oom_kills_total", "counter", "", (), "Processes the OOM killer took in this container (memory.events / memory.oom_control oom_kill, siblings of this process included), or on the host outside a cgroup.", "max", otel=(OTel("pathoai.oom.kills", "{process}", "counter"),)),
    Metric("pathoai_worker_recycles_total", "counter", "", (), "gunicorn workers recycled for memory (WorkerRecycler): each finished its requests and exited after its unmanaged memory grew past the threshold.", "max"),
    Metric("pathoai_allocator_heap_bytes", "gauge", "bytes", ("state",), "glibc malloc's bytes (mallinfo2): in_use, free (held in its heaps: what malloc_trim may return), mmapped; absent where the C library is not glibc.", "sum", otel=(OTel("pathoai.allocator.heap", "By", "gauge", ("pathoai.allocator.state",)),)),
    Metric("pathoai_allocator_arenas", "gauge", "", (), "glibc malloc's arenas (malloc_info); far more than the threads need means MALLOC_ARENA_MAX would help.", "sum", otel=(OTel("pathoai.allocator.arenas", "{arena}", "gauge"),)),
    Metric("pathoai_allocator_trims_total", "counter", "", (), "malloc_trim(0) calls by the ladder (at WARNING and above, or after large session removals, with at least 64 MiB free in the heaps).", "sum", otel=(OTel("pathoai.allocator.trims", "{trim}", "counter"),)),
    Metric("pathoai_allocator_trimmed_bytes_total", "counter", "bytes", (), "Resident bytes those trims returned to the kernel.", "sum", otel=(OTel("pathoai.allocator.trimmed", "By", "counter"),)),
    Metric("pathoai_previous_run_info", "gauge", "", ("ending", "level"), "How the previous run in MEMORY_STATE_DIR ended (1 for the latest read at start): ending clean, gone (no stop: a crash, SIGKILL) or oom_killed (gone while the cgroup's OOM count rose), at the level it was last seen at; absent without a state directory or a previous run.", "max", otel=(OTel("pathoai.previous_run", "1", "gauge", ("pathoai.run.ending", "pathoai.pressure.level")),)),
    Metric("pathoai_memory_managed_bytes", "gauge", "bytes", (), "Memory accounted for: session bytes, reservations in flight, what registered bounded caches hold and what cleanup callbacks with a size report.", "sum", otel=(OTel("pathoai.memory.managed", "By", "gauge"),)),
    Metric("pathoai_memory_unmanaged_bytes", "gauge", "bytes", (), "The working set that nothing managed accounts for (working set less managed, at least 0): the interpreter, libraries, models outside caches, leaks, the allocator's free lists, page cache in use, tmpfs; under several workers, the others' memory too.", "sum", otel=(OTel("pathoai.memory.unmanaged", "By", "gauge"),)),
    # bounded caches (BoundedCache, shrunk by the ladder)
    Metric("pathoai_cache_memory_bytes", "gauge", "bytes", ("cache",), "Bytes held by each registered bounded cache.", "sum", otel=(OTel("pathoai.cache.memory", "By", "updown", ("pathoai.cache.name",)),)),
    Metric("pathoai_cache_memory_limit_bytes", "gauge", "bytes", ("cache",), "Each registered bounded cache's bound.", "sum", otel=(OTel("pathoai.cache.memory.limit", "By", "updown", ("pathoai.cache.name",)),)),
    Metric("pathoai_cache_evictions_total", "counter", "", ("cache", "cause"), "Entries evicted from each bounded cache, by cause: bound (to make room), pressure (the ladder at WARNING and above, or an emergency cleanup), explicit.", "sum", otel=(OTel("pathoai.cache.evictions", "{entry}", "counter", ("pathoai.cache.name", "pathoai.cache.eviction_cause")),)),
    Metric("pathoai_cache_requests_total", "counter", "", ("cache", "result"), "Lookups in each bounded cache, by result: hit, miss.", "sum", otel=(OTel("pathoai.cache.requests", "{request}", "counter", ("pathoai.cache.name", "pathoai.cache.result")),)),
    Metric("pathoai_session_removal_hook_failures_total", "counter", "", (), "Session removal hooks that raised.", "sum"),
    # garbage collection
    Metric("pathoai_gc_duration_seconds", "histogram", "seconds", ("generation",), "Pause of each garbage collection the interpreter ran, by generation (where the compiled timer is built).", "sum", otel=(OTel("pathoai.gc.duration", "s", "histogram", (GEN,)),)),
    Metric("pathoai_gc_collections_total", "counter", "", ("generation",), "Collections the interpreter ran, by generation (gc.get_stats: timed or not).", "sum", otel=(OTel("cpython.gc.collections", "{collection}", "counter", (GEN,)),)),
    Metric("pathoai_gc_collected_objects_total", "counter", "", ("generation",), "Objects freed by the garbage collector, by generation (gc.get_stats).", "sum", otel=(OTel("cpython.gc.collected_objects", "{object}", "counter", (GEN,)),)),
    Metric("pathoai_gc_uncollectable_objects_total", "counter", "", ("generation",), "Objects the garbage collector found uncollectable, by generation (gc.get_stats).", "sum", otel=(OTel("cpython.gc.uncollectable_objects", "{object}", "counter", (GEN,)),)),
    Metric("pathoai_gc_frozen_objects", "gauge", "", (), "Objects moved out of the collector's reach by freeze().", "sum", otel=(OTel("pathoai.gc.frozen_objects", "{object}", "gauge"),)),
    Metric("pathoai_gc_manager_collections_total", "counter", "", ("reason",), "Collections the GC manager ran, by reason (manual, proactive, emergency).", "sum", otel=(OTel("pathoai.gc.manager.collections", "{collection}", "counter", ("pathoai.gc.reason",)),)),
    Metric("pathoai_gc_manager_skipped_collections_total", "counter", "", ("reason",), "Proactive collections skipped because collections already took too much time.", "sum"),
    # emergency cleanup
    Metric("pathoai_emergency_cleanups_total", "counter", "", (), "Emergency cleanup runs.", "sum", otel=(OTel("pathoai.emergency.cleanups", "{run}", "counter"),)),
    Metric("pathoai_emergency_cleanup_duration_seconds", "histogram", "seconds", (), "Duration of each emergency cleanup run.", "sum", otel=(OTel("pathoai.emergency.cleanup.duration", "s", "histogram"),)),
    Metric("pathoai_emergency_cleanup_freed_bytes_total", "counter", "bytes", (), "Available memory won back by emergency cleanup runs.", "sum", otel=(OTel("pathoai.emergency.freed", "By", "counter"),)),
    Metric("pathoai_cleanup_callback_failures_total", "counter", "", ("callback",), "Emergency cleanup callbacks that raised, by callback name.", "sum", otel=(OTel("pathoai.cleanup_callback.failures", "{failure}", "counter", ("pathoai.cleanup_callback.name",)),)),
    Metric("pathoai_cleanup_callback_overruns_total", "counter", "", ("callback",), "Emergency cleanup callbacks that overran their time budget, by callback name.", "sum"),
    Metric("pathoai_cleanup_callback_freed_bytes_total", "counter", "bytes", ("callback",), "Available memory each emergency cleanup callback won back, by callback name.", "sum", otel=(OTel("pathoai.cleanup_callback.freed", "By", "counter", ("pathoai.cleanup_callback.name",)),)),
    Metric("pathoai_cleanup_callback_futile_runs", "gauge", "", ("callback",), "Runs in a row in which a cleanup callback ran and freed nothing (0 once it frees something; flagged at 5).", "max"),
    # GPU memory, per visible device (gpu: NVML's index, uuid: the device's UUID; both as dcgm-exporter's gpu and UUID labels), with a GPU only
    Metric("pathoai_gpu_memory_limit_bytes", "gauge", "bytes", ("gpu", "uuid"), "Memory of each GPU (NVML total, or torch's where NVML is absent).", "max", otel=(OTel("hw.gpu.memory.limit", "By", "updown", GPU_ATTRS, GPU_FIXED),)),
    Metric("pathoai_gpu_memory_used_bytes", "gauge", "bytes", ("gpu", "uuid"), "Memory in use on each GPU, by every process (NVML used).", "max", otel=(OTel("hw.gpu.memory.usage", "By", "updown", GPU_ATTRS, GPU_FIXED),)),
    Metric("pathoai_gpu_memory_available_bytes", "gauge", "bytes", ("gpu", "uuid"), "Memory still free on each GPU (NVML free): what GPU admission weighs.", "min", otel=(OTel("pathoai.gpu.memory.available", "By", "updown", GPU_ATTRS),)),
    Metric("pathoai_gpu_memory_used_ratio", "gauge", "ratio", ("gpu", "uuid"), "Used over total memory of each GPU, 0..1.", "max", otel=(OTel("hw.gpu.memory.utilization", "1", "gauge", GPU_ATTRS, GPU_FIXED),)),
    Metric("pathoai_gpu_memory_pressure_level", "gauge", "", ("gpu", "uuid"), "GPU ladder level of each device: 0 normal, 1 warning, 2 critical, 3 emergency (GPU_MEMORY_* thresholds).", "max", otel=(OTel("pathoai.gpu.memory.pressure.level", "1", "gauge", GPU_ATTRS),)),
    Metric("pathoai_gpu_memory_emergency_threshold_bytes", "gauge", "bytes", ("gpu", "uuid"), "Free GPU memory below which the device is in EMERGENCY (GPU_MEMORY_FLOOR_MB).", "max"),
    Metric("pathoai_gpu_memory_reserved_bytes", "gauge", "bytes", ("gpu", "uuid"), "GPU memory reserved on each device by admitted requests still in flight (this process's).", "sum", otel=(OTel("pathoai.gpu.memory.reserved", "By", "updown", GPU_ATTRS),)),
    Metric("pathoai_gpu_process_memory_bytes", "gauge", "bytes", ("gpu", "uuid"), "This process's memory on each GPU as the driver counts it (NVML's per-process figure; absent where the driver hides it, as in many containers).", "sum", otel=(OTel("pathoai.gpu.process.memory", "By", "updown", GPU_ATTRS),)),
    Metric("pathoai_gpu_torch_allocated_bytes", "gauge", "bytes", ("gpu", "uuid"), "Bytes of live tensors on each GPU (torch.cuda.memory_stats allocated_bytes.all.current); with torch only.", "sum", otel=(OTel("pathoai.gpu.torch.allocated", "By", "updown", GPU_ATTRS),)),
    Metric("pathoai_gpu_torch_reserved_bytes", "gauge", "bytes", ("gpu", "uuid"), "Bytes torch's caching allocator holds on each GPU (reserved_bytes.all.current): allocated plus cached blocks, what nvidia-smi shows less the CUDA context.", "sum", otel=(OTel("pathoai.gpu.torch.reserved", "By", "updown", GPU_ATTRS),)),
    Metric("pathoai_gpu_torch_peak_allocated_bytes", "gauge", "bytes", ("gpu", "uuid"), "Peak bytes of live tensors on each GPU since start or torch's last reset.", "sum", otel=(OTel("pathoai.gpu.torch.peak_allocated", "By", "gauge", GPU_ATTRS),)),
    Metric("pathoai_gpu_torch_fragmentation_ratio", "gauge", "ratio", ("gpu", "uuid"), "Share of torch's reserved GPU bytes not holding tensors (1 - allocated/reserved): cached or fragmented.", "max", otel=(OTel("pathoai.gpu.torch.fragmentation", "1", "gauge", GPU_ATTRS),)),
    Metric("pathoai_gpu_torch_alloc_retries_total", "counter", "", ("gpu", "uuid"), "Allocations torch retried after freeing its cache (num_alloc_retries): the sign of fragmentation or a nearly full device.", "sum", otel=(OTel("pathoai.gpu.torch.alloc_retries", "{retry}", "counter", GPU_ATTRS),)),
    Metric("pathoai_gpu_torch_ooms_total", "counter", "", ("gpu", "uuid"), "CUDA out-of-memory errors torch raised on each GPU (num_ooms), caught or not.", "sum", otel=(OTel("pathoai.gpu.torch.ooms", "{error}", "counter", GPU_ATTRS),)),
    Metric("pathoai_gpu_oom_errors_total", "counter", "", ("gpu",), "CUDA out-of-memory errors that escaped a handler and the error mapping answered 503, by the device the error names (or unknown).", "sum", otel=(OTel("pathoai.gpu.oom_errors", "{error}", "counter", ("pathoai.gpu.index",)),)),
    Metric("pathoai_gpu_emergency_cleanups_total", "counter", "", ("gpu", "uuid"), "GPU emergency cleanup runs on each device (in its EMERGENCY, after a caught CUDA OOM, or for a refusal there).", "sum", otel=(OTel("pathoai.gpu.emergency.cleanups", "{run}", "counter", GPU_ATTRS),)),
    Metric("pathoai_gpu_cache_returned_bytes_total", "counter", "bytes", ("gpu", "uuid"), "Bytes torch's empty_cache gave back to the driver in GPU cleanups, by device.", "sum", otel=(OTel("pathoai.gpu.cache.returned", "By", "counter", GPU_ATTRS),)),
    # the monitor itself
    Metric("pathoai_monitor_last_sample_timestamp_seconds", "gauge", "seconds", (), "Unix time of the monitor's last good reading (the oldest across workers).", "min", otel=(OTel("pathoai.monitor.last_sample_time", "s", "gauge"),)),
    Metric("pathoai_monitor_interval_seconds", "gauge", "seconds", (), "Configured sampling interval (MemoryConfig.monitoring_interval_sec).", "max"),
    Metric("pathoai_monitor_running", "gauge", "", (), "1 while the background monitor thread runs (summed over workers).", "sum"),
    Metric("pathoai_monitor_errors_total", "counter", "", ("where",), "Errors the monitor survived, by where: sample, action, wakeups (kernel event set-up or poll), emergency_step, emergency_run (a reading failed mid-run), scrape.", "sum", otel=(OTel("pathoai.monitor.errors", "{error}", "counter", ("pathoai.monitor.error.where",)),)),
    Metric("pathoai_memobs_build_info", "gauge", "", ("version",), "pathoai-memobs version (always 1).", "union"),
    Metric("pathoai_multiprocess_workers", "gauge", "", (), "Worker processes whose state reached this exposition (multiprocess mode only).", "sum"),
    Metric("pathoai_multiprocess_malformed_files_total", "counter", "", (), "Worker files skipped because they did not hold what a worker writes (multiprocess mode only).", "sum"),
)
# fmt: on

BY_NAME: Final = {m.name: m for m in CATALOGUE}

#: OpenTelemetry instruments with no metric of ours behind them, and what stands for them
#: on the Prometheus side.
OTEL_ONLY: Final[tuple[tuple[OTel, str], ...]] = (
    (
        OTel("process.memory.usage", "By", "updown"),
        "prometheus_client's own process_resident_memory_bytes",
    ),
)


def otel_names() -> set[str]:
    """Every OpenTelemetry instrument name the catalogue declares."""
    return {o.name for m in CATALOGUE for o in m.otel} | {o.name for o, _ in OTEL_ONLY}


def family_name(metric: Metric) -> str:
    """The name prometheus_client families take (counters without ``_total``)."""
    return metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name

"""Generate the Grafana dashboards from code: ``python grafana/generate.py`` rewrites
``grafana/dashboards/*.json``; ``--check`` exits 1 if the committed JSON differs.

Plain Python, no dependency: a dashboard is data, and this keeps every panel's PromQL,
unit and layout in one reviewable place (tests run every query against a real Prometheus).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
SEL = 'job=~"$job", instance=~"$instance"'
DS = {"type": "prometheus", "uid": "${datasource}"}

Panel = dict[str, Any]


class Layout:
    """Places panels left to right on a 24-column grid, rows top to bottom."""

    def __init__(self) -> None:
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[Panel] = []

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def add(self, panel: Panel, w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend, **extra}


def panel(
    kind: str,
    title: str,
    unit: str,
    targets: list[dict[str, Any]],
    description: str,
    **options: Any,
) -> Panel:
    refs = "ABCDEFGH"
    for i, t in enumerate(targets):
        t["refId"] = refs[i]
    p: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    p.update(options)
    return p


def timeseries(
    title: str, unit: str, targets: list[dict[str, Any]], description: str, **defaults: Any
) -> Panel:
    p = panel("timeseries", title, unit, targets, description)
    p["fieldConfig"]["defaults"].update(defaults)
    p["options"] = {
        "legend": {"displayMode": "list", "placement": "bottom"},
        "tooltip": {"mode": "multi"},
    }
    return p


def heatmap(title: str, unit: str, expr: str, description: str, **extra: Any) -> Panel:
    p = panel("heatmap", title, unit, [target(expr, "{{le}}", format="heatmap")], description)
    p["options"] = {
        "calculate": False,
        "yAxis": {"unit": unit},
        "cellGap": 1,
        "color": {"scheme": "Oranges", "mode": "scheme"},
    }
    p.update(extra)
    return p


def variables() -> list[dict[str, Any]]:
    query = {
        "type": "query",
        "datasource": DS,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".+",
        "current": {"text": "All", "value": "$__all"},
    }
    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
        },
        {
            **query,
            "name": "job",
            "label": "Job",
            "definition": "label_values(pathoai_memobs_build_info, job)",
            "query": {"query": "label_values(pathoai_memobs_build_info, job)", "refId": "job"},
        },
        {
            **query,
            "name": "instance",
            "label": "Instance",
            "definition": 'label_values(pathoai_memobs_build_info{job=~"$job"}, instance)',
            "query": {
                "query": 'label_values(pathoai_memobs_build_info{job=~"$job"}, instance)',
                "refId": "instance",
            },
        },
        {
            "type": "custom",
            "name": "generation",
            "label": "GC generation",
            "query": "0,1,2",
            "multi": True,
            "includeAll": True,
            "hide": 2,
            "current": {"text": "All", "value": "$__all"},
            "options": [{"text": g, "value": g, "selected": False} for g in ("0", "1", "2")],
        },
    ]


def overview() -> dict[str, Any]:
    lay = Layout()
    lay.row("Memory")
    lay.add(
        timeseries(
            "Memory used",
            "percentunit",
            [
                target(f"pathoai_memory_used_ratio{{{SEL}}}", "used {{instance}}"),
                target(f"pathoai:memory_warning_threshold_ratio{{{SEL}}}", "warning {{instance}}"),
                target(
                    f"pathoai:memory_critical_threshold_ratio{{{SEL}}}", "critical {{instance}}"
                ),
                target(
                    f"1 - pathoai:memory_emergency_threshold_bytes{{{SEL}}}"
                    f" / on (job, instance) pathoai_memory_limit_bytes{{{SEL}}}",
                    "emergency floor {{instance}}",
                ),
            ],
            "Used over the limit the OOM killer applies (cgroup limit, else host), with the three "
            "rungs of the ladder in force.",
            min=0,
            max=1,
        )
    )
    lay.add(
        timeseries(
            "Available memory",
            "bytes",
            [
                target(f"pathoai_memory_available_bytes{{{SEL}}}", "available {{instance}}"),
                target(f"pathoai:memory_emergency_threshold_bytes{{{SEL}}}", "floor {{instance}}"),
                target(f"pathoai_memory_reserved_bytes{{{SEL}}}", "reserved {{instance}}"),
            ],
            "Memory left before the limit, against the emergency floor; reserved is held by "
            "admitted requests in flight.",
            min=0,
        )
    )
    lay.add(
        panel(
            "state-timeline",
            "Pressure level",
            "none",
            [target(f"pathoai_memory_pressure_level{{{SEL}}}", "{{instance}}")],
            "0 normal, 1 warning, 2 critical, 3 emergency.",
            options={"showValue": "auto", "mergeValues": True},
        )
    )
    lay.panels[-1]["fieldConfig"]["defaults"]["mappings"] = [
        {
            "type": "value",
            "options": {
                "0": {"text": "normal", "color": "green"},
                "1": {"text": "warning", "color": "yellow"},
                "2": {"text": "critical", "color": "orange"},
                "3": {"text": "emergency", "color": "red"},
            },
        }
    ]
    lay.add(
        timeseries(
            "Memory pressure stall (PSI avg10)",
            "percentunit",
            [target(f"pathoai_memory_pressure_stall_ratio{{{SEL}}}", "{{kind}} {{instance}}")],
            "Share of time tasks stalled waiting for memory (some: at least one; full: all).",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Process RSS",
            "bytes",
            [target(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}")],
            "Resident memory of the service process (prometheus_client's process collector).",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Requests rejected",
            "reqps",
            [
                target(
                    f"sum by (instance) (rate(pathoai_requests_rejected_total{{{SEL}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
            "Requests refused by admission control (503 with Retry-After).",
            min=0,
        )
    )
    lay.row("Sessions")
    lay.add(
        timeseries(
            "Active sessions",
            "short",
            [target(f"sum by (instance) (pathoai_sessions_active{{{SEL}}})", "{{instance}}")],
            "Live sessions.",
            min=0,
        )
    )
    lay.add(
        heatmap(
            "Session sizes",
            "bytes",
            f"sum by (le) (pathoai_session_memory_bytes_bucket{{{SEL}}})",
            "How many live sessions hold how much memory (gauge histogram of accounted bytes).",
        )
    )
    lay.add(
        panel(
            "bargauge",
            "Largest sessions",
            "bytes",
            [
                target(
                    f"topk(10, pathoai_session_top_memory_bytes{{{SEL}}})",
                    "{{session}}",
                    instant=True,
                )
            ],
            "The largest live sessions, by fingerprint (never by id), against the session limit.",
            options={"displayMode": "gradient", "orientation": "horizontal"},
        )
    )
    lay.add(
        timeseries(
            "Sessions removed by reason",
            "ops",
            [
                target(
                    f"sum by (reason) (rate(pathoai_sessions_removed_total{{{SEL}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            "Removals per second: timeout, explicit (deleted by the app), emergency (evicted).",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Session memory and limit",
            "bytes",
            [
                target(
                    f"sum by (instance) (pathoai_session_memory_bytes_gsum{{{SEL}}})",
                    "all sessions {{instance}}",
                ),
                target(f"pathoai_session_memory_max_bytes{{{SEL}}}", "largest {{instance}}"),
                target(
                    f"pathoai_session_memory_limit_bytes{{{SEL}}}", "per-session limit {{instance}}"
                ),
            ],
            "Accounted session memory: the total, the largest session and the per-session limit.",
            min=0,
        )
    )
    lay.row("What the memory is")
    lay.add(
        timeseries(
            "Charged memory by kind",
            "bytes",
            [target(f"pathoai_memory_charged_bytes{{{SEL}}}", "{{instance}} {{kind}}")],
            "The container's charge (memory.stat): anon (heaps, arrays), file_active and"
            " file_inactive (page cache; the working set leaves inactive out), shmem (tmpfs,"
            " /dev/shm: memory), kernel.",
            min=0,
            custom={"stacking": {"mode": "normal"}, "fillOpacity": 30},
        )
    )
    lay.add(
        timeseries(
            "Managed and unmanaged memory",
            "bytes",
            [
                target(f"pathoai_memory_managed_bytes{{{SEL}}}", "managed {{instance}}"),
                target(f"pathoai_memory_unmanaged_bytes{{{SEL}}}", "unmanaged {{instance}}"),
            ],
            "Managed: session bytes, reservations and bounded caches. Unmanaged: the rest of"
            " the resident set (interpreter, libraries, models outside caches, leaks, malloc's"
            " free lists). Unmanaged growing is what to look at first.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Process memory by kind",
            "bytes",
            [target(f"pathoai_process_memory_bytes{{{SEL}}}", "{{instance}} {{kind}}")],
            "Each process's resident memory (/proc/self/status): anon, file (mapped files,"
            " mmapped models), shmem.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Allocator heap",
            "bytes",
            [target(f"pathoai_allocator_heap_bytes{{{SEL}}}", "{{instance}} {{state}}")],
            "glibc malloc: in use, free in its heaps (what malloc_trim may return; the ladder"
            " trims it at WARNING), mmapped. Much free heap with many arenas: MALLOC_ARENA_MAX=2.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "OOM kills",
            "short",
            [
                target(
                    f"increase(pathoai_oom_kills_total{{{SEL}}}[$__rate_interval])",
                    "{{instance}}",
                )
            ],
            "Processes the kernel's OOM killer took in the container (siblings included).",
            min=0,
        )
    )
    lay.row("Spilling and caches")
    lay.add(
        timeseries(
            "Spilled session bytes",
            "bytes",
            [
                target(f"pathoai_session_spilled_bytes{{{SEL}}}", "on disk {{instance}}"),
                target(f"pathoai_session_spill_budget_bytes{{{SEL}}}", "budget {{instance}}"),
            ],
            "Bytes of idle sessions' buffers on disk instead of memory (nothing lost), and the"
            " store's budget (SESSION_SPILL_MAX_GB).",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Spill disk free",
            "percentunit",
            [
                target(
                    f"pathoai_session_spill_disk_free_bytes{{{SEL}}}"
                    f" / on (job, instance) pathoai_session_spill_disk_size_bytes{{{SEL}}}",
                    "{{instance}}",
                )
            ],
            "Free share of the spill filesystem; the alert fires under 15 %, spilling stops"
            " under SESSION_SPILL_MIN_FREE_PERCENT (10 %).",
            min=0,
            max=1,
        )
    )
    lay.add(
        timeseries(
            "Spill and restore p99",
            "s",
            [
                target(
                    "histogram_quantile(0.99, sum by (operation, le) (rate("
                    f"pathoai_session_spill_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "{{operation}}",
                )
            ],
            "How long writing one session's buffers (spill) and reading a session back"
            " (restore, which its request waits for) take.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Spill refusals by cause",
            "ops",
            [
                target(
                    "sum by (cause) (rate("
                    f"pathoai_session_spill_refusals_total{{{SEL}}}[$__rate_interval]))",
                    "{{cause}}",
                )
            ],
            "Spills refused (the session stays in memory, eviction may follow): budget,"
            " disk_full, memory_fs, io_error. Counted once per cause while it lasts.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Bounded caches",
            "bytes",
            [
                target(f"sum by (cache) (pathoai_cache_memory_bytes{{{SEL}}})", "{{cache}}"),
                target(
                    f"sum by (cache) (pathoai_cache_memory_limit_bytes{{{SEL}}})",
                    "{{cache}} bound",
                ),
            ],
            "Bytes held by each registered BoundedCache and its bound; the ladder shrinks"
            " them at WARNING, before any session is touched.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Cache evictions by cause",
            "ops",
            [
                target(
                    "sum by (cache, cause) (rate("
                    f"pathoai_cache_evictions_total{{{SEL}}}[$__rate_interval]))",
                    "{{cache}} {{cause}}",
                )
            ],
            "Entries evicted per second: bound (making room), pressure (the ladder or an"
            " emergency cleanup), explicit.",
            min=0,
        )
    )
    lay.row("GPU memory")
    lay.add(
        timeseries(
            "GPU memory used",
            "percentunit",
            [target(f"pathoai_gpu_memory_used_ratio{{{SEL}}}", "gpu {{gpu}} {{instance}}")],
            "Used share of each GPU's memory, every process counted (NVML); the GPU ladder's"
            " warning and critical rungs are GPU_MEMORY_WARNING_PERCENT and _CRITICAL_PERCENT.",
            min=0,
            max=1,
        )
    )
    lay.add(
        timeseries(
            "GPU free against its floor",
            "bytes",
            [
                target(f"pathoai_gpu_memory_available_bytes{{{SEL}}}", "free gpu {{gpu}}"),
                target(
                    f"pathoai_gpu_memory_emergency_threshold_bytes{{{SEL}}}", "floor gpu {{gpu}}"
                ),
                target(f"pathoai_gpu_memory_reserved_bytes{{{SEL}}}", "reserved gpu {{gpu}}"),
            ],
            "Free GPU memory, the floor under which the device is in EMERGENCY (its cleanup"
            " runs, GPU requests are refused), and what admitted requests hold now.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "GPU level",
            "short",
            [target(f"pathoai_gpu_memory_pressure_level{{{SEL}}}", "gpu {{gpu}} {{instance}}")],
            "GPU ladder level per device: 0 normal, 1 warning, 2 critical, 3 emergency.",
            min=0,
            max=3,
        )
    )
    lay.add(
        timeseries(
            "torch on the GPU",
            "bytes",
            [
                target(f"pathoai_gpu_torch_allocated_bytes{{{SEL}}}", "allocated gpu {{gpu}}"),
                target(f"pathoai_gpu_torch_reserved_bytes{{{SEL}}}", "reserved gpu {{gpu}}"),
                target(f"pathoai_gpu_process_memory_bytes{{{SEL}}}", "this process gpu {{gpu}}"),
            ],
            "Live tensors (allocated), what torch's cache holds from the driver (reserved, what"
            " empty_cache can lower) and this process's bytes as the driver counts them"
            " (reserved plus the CUDA context): why nvidia-smi and memory_allocated disagree.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "torch fragmentation and retries",
            "percentunit",
            [
                target(f"pathoai_gpu_torch_fragmentation_ratio{{{SEL}}}", "cached gpu {{gpu}}"),
                target(
                    "sum by (gpu) (rate("
                    f"pathoai_gpu_torch_alloc_retries_total{{{SEL}}}[$__rate_interval]))",
                    "retries/s gpu {{gpu}}",
                    ref="B",
                ),
            ],
            "Share of torch's reserved bytes holding no tensor; allocation retries (torch"
            " freed its cache to allocate): high together, memory is free but in pieces.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "GPU cleanups and caught OOMs",
            "ops",
            [
                target(
                    "sum by (gpu) (rate("
                    f"pathoai_gpu_emergency_cleanups_total{{{SEL}}}[$__rate_interval]))",
                    "cleanups gpu {{gpu}}",
                ),
                target(
                    f"sum by (gpu) (rate(pathoai_gpu_oom_errors_total{{{SEL}}}[$__rate_interval]))",
                    "CUDA OOMs answered 503, gpu {{gpu}}",
                    ref="B",
                ),
                target(
                    "sum by (gpu) (rate("
                    f"pathoai_gpu_cache_returned_bytes_total{{{SEL}}}[$__rate_interval]))",
                    "empty_cache bytes/s gpu {{gpu}}",
                    ref="C",
                ),
            ],
            "GPU emergency runs, CUDA out-of-memory errors the error mapping answered, and the"
            " bytes empty_cache gave back.",
            min=0,
        )
    )
    lay.row("Garbage collection")
    lay.add(
        timeseries(
            "GC pause percentiles",
            "s",
            [
                target(
                    "histogram_quantile(0.99, sum by (le, generation) "
                    f"(rate(pathoai_gc_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "p99 gen {{generation}}",
                ),
                target(
                    "histogram_quantile(0.5, sum by (le, generation) "
                    f"(rate(pathoai_gc_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "p50 gen {{generation}}",
                ),
            ],
            "Pauses of every collection the interpreter ran, by generation.",
            min=0,
        )
    )
    lay.add(
        heatmap(
            "GC pauses, generation $generation",
            "s",
            "sum by (le) (increase(pathoai_gc_duration_seconds_bucket"
            f'{{{SEL}, generation=~"$generation"}}[$__rate_interval]))',
            "Distribution of collection pauses of one generation over time.",
            repeat="generation",
            repeatDirection="h",
            maxPerRow=3,
        ),
        w=8,
    )
    lay.add(
        timeseries(
            "Collections",
            "ops",
            [
                target(
                    f"sum by (generation) (rate(pathoai_gc_duration_seconds_count{{{SEL}}}[$__rate_interval]))",
                    "gen {{generation}}",
                ),
                target(
                    "sum by (reason) (rate(pathoai_gc_manager_collections_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "manager: {{reason}}",
                ),
            ],
            "Collections per second by generation, and those the manager ran, by reason.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Frozen objects",
            "short",
            [target(f"pathoai_gc_frozen_objects{{{SEL}}}", "{{instance}}")],
            "Objects moved out of the collector's reach by freeze() (cheaper full collections).",
            min=0,
        )
    )
    lay.row("Emergency cleanup")
    lay.add(
        timeseries(
            "Emergency cleanups",
            "short",
            [
                target(
                    f"sum by (instance) (increase(pathoai_emergency_cleanups_total{{{SEL}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
            "Emergency cleanup runs.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Bytes freed by emergency cleanup",
            "bytes",
            [
                target(
                    "sum by (instance) (increase(pathoai_emergency_cleanup_freed_bytes_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
            "Available memory won back by emergency runs.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Cleanup callback failures",
            "short",
            [
                target(
                    "sum by (callback) (increase(pathoai_cleanup_callback_failures_total"
                    f"{{{SEL}}}[$__rate_interval]))",
                    "{{callback}}",
                )
            ],
            "Emergency cleanup callbacks that raised, by callback.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Emergency run duration (p99)",
            "s",
            [
                target(
                    "histogram_quantile(0.99, sum by (le) (rate(pathoai_emergency_cleanup_duration_seconds_bucket"
                    f"{{{SEL}}}[$__rate_interval])))",
                    "p99",
                )
            ],
            "How long emergency cleanup runs take.",
            min=0,
        )
    )
    lay.add(
        timeseries(
            "Monitor: last sample age (at scrape)",
            "s",
            [
                target(  # the age when scraped, as PathoAIMonitorStale reads it
                    f"timestamp(pathoai_monitor_last_sample_timestamp_seconds{{{SEL}}})"
                    f" - pathoai_monitor_last_sample_timestamp_seconds{{{SEL}}}",
                    "{{instance}}",
                ),
                target(
                    f"3 * pathoai_monitor_interval_seconds{{{SEL}}}", "stale after {{instance}}"
                ),
            ],
            "Seconds since the background monitor's last good reading; alert past three intervals.",
            min=0,
        )
    )
    return {
        "uid": "pathoai-memory-overview",
        "title": "PathoAI memory overview",
        "description": "pathoai-memobs: memory, pressure, sessions, GC and emergency cleanup.",
        "tags": ["pathoai", "memory"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "panels": lay.panels,
    }


DASHBOARDS = {"pathoai-memory-overview.json": overview}


def render() -> dict[str, str]:
    return {
        name: json.dumps(make(), indent=2, sort_keys=True) + "\n"
        for name, make in DASHBOARDS.items()
    }


def main(argv: list[str]) -> int:
    rendered = render()
    if "--check" in argv:
        stale = [
            n
            for n, text in rendered.items()
            if not (OUT / n).exists() or (OUT / n).read_text() != text
        ]
        if stale:
            print("out of date (run python grafana/generate.py):", ", ".join(stale))
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

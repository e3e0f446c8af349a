"""The overview dashboard's rows for the host's memory: memory and pressure, sessions, what
the memory is, spilling and caches."""

from __future__ import annotations

from .panels import SEL, Layout, heatmap, panel, target, timeseries


def host_rows(lay: Layout) -> None:
    """Memory, Sessions, What the memory is, Spilling and caches."""
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

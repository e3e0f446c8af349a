"""The overview dashboard's rows for the runtime: GPU memory, garbage collection, emergency
cleanup and the monitor itself."""

from __future__ import annotations

from .panels import SEL, Layout, heatmap, target, timeseries


def runtime_rows(lay: Layout) -> None:
    """GPU memory, Garbage collection, Emergency cleanup (with the monitor's own health)."""
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

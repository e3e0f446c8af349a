"""What each OpenTelemetry instrument reads, by the catalogue name of the metric behind
it: one value function per metric of the monitor, the session manager and the GC state
(a number, or (label values, number) pairs), sharing a reading per collection (``_Memo``)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..gc_pauses import GENERATIONS
from ..pressure import Thresholds
from .catalogue import (
    CACHE_EVICTION_CAUSES,
    ERROR_PLACES,
    GC_REASONS,
    HEAP_STATES,
    REMOVAL_REASONS,
    SPILL_REFUSAL_CAUSES,
)
from .gpu_samples import GPU_METRICS, gpu_samples

if TYPE_CHECKING:
    from ..gc_manager import GarbageCollectionManager
    from ..monitor import MemoryMonitor
    from ..session_manager import SessionManager

#: A value function: a number, or (label values, number) pairs for a labelled metric.
Values = Callable[[], Any]


def _labelled(counts: Any, known: Iterable[str]) -> list[tuple[tuple[str], int]]:
    """One pair per known key (0 when unseen) and per key seen beyond them."""
    keys = dict.fromkeys(known) | dict.fromkeys(counts)
    return [((k,), counts.get(k, 0)) for k in keys]


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


def gc_values(gc_manager: GarbageCollectionManager | None) -> dict[str, Values]:
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


def monitor_values(m: MemoryMonitor) -> dict[str, Values]:
    reading = _Memo(lambda: m.last_reading if m.running and m.last_reading else m.sample())
    totals = _Memo(lambda: m.emergency_totals)
    breakdown = _Memo(m.memory_breakdown)
    heap = _Memo(m.allocator.heap)
    t = m.thresholds
    gpu = _Memo(lambda: gpu_samples(m))

    def fitted() -> Thresholds:
        return t.for_total(reading().total_bytes)

    def stall() -> list[tuple[tuple[str], float]]:
        p = m.pressure
        return [] if p is None else [(("some",), p.some_avg10), (("full",), p.full_avg10)]

    def gpu_metric(name: str) -> Values:
        return lambda: gpu()[name]

    return {name: gpu_metric(name) for name in GPU_METRICS} | {
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


def session_values(s: SessionManager) -> dict[str, Values]:
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

"""The reference's memory-management defaults, in one immutable place.

Names and values follow ``core.defaults.MemoryManagementDefaults`` of the reference
(shared/spec/memory-management.md). Units are the reference's: percent, GB, MB, minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

GCAggressiveness = Literal["low", "moderate", "high"]
GC_LEVELS: Final[tuple[str, ...]] = ("low", "moderate", "high")


@dataclass(frozen=True)
class MemoryManagementDefaults:
    """Default values for every memory-management setting (frozen: read, never assign)."""

    # Session management
    session_timeout_minutes: int = 30
    max_session_memory_gb: float = 2.0
    session_cleanup_interval_minutes: int = 5

    # Memory monitoring
    memory_warning_threshold: float = 85.0  # percent
    monitoring_interval_sec: float = 1.0
    enable_background_monitoring: bool = False

    # Garbage collection
    gc_aggressiveness: GCAggressiveness = "moderate"
    enable_auto_gc: bool = True
    gc_threshold_gen0: int = 700
    gc_threshold_gen1: int = 10
    gc_threshold_gen2: int = 10

    # Emergency cleanup
    emergency_cleanup_threshold_mb: float = 500.0
    enable_proactive_gc: bool = True
    proactive_gc_threshold: float = 90.0  # percent
    enable_request_rejection: bool = True


DEFAULTS: Final = MemoryManagementDefaults()

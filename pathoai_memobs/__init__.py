"""pathoai-memobs: keep a deep-learning service out of OOM and make its memory visible.

The reference's public names are importable from here. Exporters (Prometheus,
OpenTelemetry) are never imported by ``import pathoai_memobs``; import them explicitly.
"""

from __future__ import annotations

from .config import MemoryConfig
from .defaults import MemoryManagementDefaults
from .exceptions import (
    ConfigError,
    InsufficientMemoryError,
    MemoryManagementError,
    SessionMemoryLimitError,
    SessionNotFoundError,
)
from .gc_manager import GarbageCollectionManager
from .monitor import MemoryMonitor
from .reading import MemoryMetrics, Reading
from .session_manager import SessionData, SessionManager
from .sizeof import mark_shared, register_sizeof, sizeof, unmark_shared

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GarbageCollectionManager",
    "InsufficientMemoryError",
    "MemoryConfig",
    "MemoryManagementDefaults",
    "MemoryManagementError",
    "MemoryMetrics",
    "MemoryMonitor",
    "Reading",
    "SessionData",
    "SessionManager",
    "SessionMemoryLimitError",
    "SessionNotFoundError",
    "__version__",
    "mark_shared",
    "register_sizeof",
    "sizeof",
    "unmark_shared",
]

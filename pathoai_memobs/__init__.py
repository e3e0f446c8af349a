"""pathoai-memobs: keep a deep-learning service out of OOM and make its memory visible.

The reference's public names are importable from here. The session and GC modules load
on first use, and exporters (Prometheus, OpenTelemetry) only when imported explicitly, so
``import pathoai_memobs`` stays light. The size function is ``pathoai_memobs.sizeof.sizeof``
(the module name is taken).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import MemoryConfig
from .defaults import MemoryManagementDefaults
from .exceptions import (
    ConfigError,
    InsufficientMemoryError,
    MemoryManagementError,
    SessionMemoryLimitError,
    SessionNotFoundError,
    SpillCorruptError,
)
from .monitor import MemoryMonitor
from .reading import MemoryMetrics, Reading

if TYPE_CHECKING:
    from .bounded_cache import BoundedCache
    from .gc_manager import GarbageCollectionManager
    from .session_manager import SessionData, SessionManager
    from .sizeof import mark_shared, register_sizeof, unmark_shared

__version__ = "0.1.0"

_LAZY = {
    "BoundedCache": "bounded_cache",
    "GarbageCollectionManager": "gc_manager",
    "SessionData": "session_manager",
    "SessionManager": "session_manager",
    "mark_shared": "sizeof",
    "register_sizeof": "sizeof",
    "unmark_shared": "sizeof",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pathoai_memobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BoundedCache",
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
    "SpillCorruptError",
    "__version__",
    "mark_shared",
    "register_sizeof",
    "unmark_shared",
]

"""The emergency-cleanup and memory-breakdown half of ``MemoryMonitor``'s API (mixed into
it): callbacks and caches for the ladder, the runs and their totals, what the memory is."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .admission import Admission
    from .allocator import Allocator
    from .bounded_cache import BoundedCache
    from .breakdown import Breakdown
    from .emergency import EmergencyRun, EmergencyTotals
    from .emergency_cleanup import EmergencyCleanup
    from .gpu_watch import GpuWatch
    from .level_actions import LevelActions
    from .session_manager import SessionManager


class CleanupMethods:
    """What ``MemoryMonitor`` offers for cleanup and the breakdown; the parts it works on
    are the monitor's."""

    _admission: Admission
    _breakdown: Breakdown
    _cleanup: EmergencyCleanup
    _actions: LevelActions
    _gpu: GpuWatch
    _sessions: SessionManager | None

    def register_cleanup_callback(
        self, fn: Callable[[], object], *, name: str, priority: int = 100,
        size: Callable[[], int] | None = None, gpu: bool = False,
    ) -> None:  # fmt: skip
        """Add an emergency cleanup step, run before the built-in ones in its own thread within
        ``callback_budget_s``; lower ``priority`` first. ``name`` labels metrics and logs.
        ``size``, where given, says how many bytes what the callback frees holds now (a
        model cache's size): counted as managed memory. ``gpu=True`` makes it a step of the
        GPU ladder's emergency instead (move idle models to the CPU): never run for host
        memory, which it would fill."""
        if size is not None and not callable(size):
            raise TypeError(f"size must be a callable returning bytes, got {size!r}")
        if not isinstance(gpu, bool):
            raise TypeError(f"gpu must be a bool, got {gpu!r}")
        if gpu:
            if not callable(fn):
                raise TypeError(f"cleanup callback must be callable, got {fn!r}")
            if not isinstance(name, str) or not name:
                raise ValueError("cleanup callback needs a non-empty name")
            self._gpu.register(fn, name=name, priority=priority)
            return
        self._cleanup.register(fn, name=name, priority=priority)
        if size is not None:
            self._breakdown.sizes[name] = size

    def register_cache(self, cache: BoundedCache[Any, Any]) -> None:
        """Let the ladder shrink ``cache`` at WARNING and above, and empty it in an emergency
        cleanup (a step named ``cache_<name>``, before the user's default priority)."""
        if any(c.name == cache.name for c in self._actions.caches):
            raise ValueError(f"a cache named {cache.name!r} is registered already")
        self._cleanup.register(cache.clear, name=f"cache_{cache.name}", priority=50)
        self._actions.caches.append(cache)

    def memory_breakdown(self) -> tuple[dict[str, int] | None, dict[str, int] | None]:
        """What the memory is, read now (for exporters, at scrape time): the cgroup's charge
        by kind (None outside a cgroup) and this process's resident memory by kind."""
        reader = self._breakdown.reader()
        return reader.charged(), reader.process()

    @property
    def allocator(self) -> Allocator:
        """The C allocator's state and trims (the ladder trims at WARNING and above)."""
        return self._actions.allocator

    def oom_kills(self) -> int | None:
        """Processes the OOM killer took in this cgroup (or on the host outside one), read
        now; None where the kernel does not say."""
        return self._breakdown.reader().oom_kills()

    def managed_bytes(self) -> int:
        """Bytes this process's memory is accounted for (Dask's "managed" memory): session
        bytes, reservations in flight, what registered bounded caches hold, and what cleanup
        callbacks with a ``size`` report (a size that fails counts 0)."""
        sessions = self._sessions.total_bytes if self._sessions is not None else 0
        reserved = self._admission.reserved_bytes
        return self._breakdown.managed(sessions, reserved, self._actions.caches)

    @property
    def caches(self) -> tuple[BoundedCache[Any, Any], ...]:
        """The registered bounded caches (for exporters)."""
        return tuple(self._actions.caches)

    def unregister_cleanup_callback(self, name: str) -> bool:
        """Remove a callback (host or GPU) by name; whether one was registered."""
        self._breakdown.sizes.pop(name, None)
        return self._cleanup.unregister(name) | self._gpu.unregister(name)

    @property
    def cleanup_callback_names(self) -> tuple[str, ...]:
        """Registered callback names, in the order they run."""
        return self._cleanup.names

    @property
    def emergency_totals(self) -> EmergencyTotals:
        """A copy of the emergency counters (runs, bytes freed, durations, failures)."""
        return self._cleanup.totals

    def emergency_runs_since(self, since: int) -> tuple[list[EmergencyRun], int]:
        """Runs after the first ``since``, and the new ``since`` (for exporters)."""
        return self._cleanup.runs_since(since)

    def run_emergency_cleanup(self, reason: str = "manual") -> EmergencyRun | None:
        """One emergency cleanup now, in this thread (None if one is running): a step at a
        time, re-measured after each, until available memory is above the floor's margin."""
        return self._cleanup.run(reason)

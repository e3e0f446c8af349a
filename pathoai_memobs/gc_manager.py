"""GarbageCollectionManager: levels, timed collections, throttled proactive GC, freezing.

Levels set the collector's thresholds and whether glibc is asked to hand freed memory back
(``malloc_trim``) after a full collection. Every collection, automatic ones included, is
timed by the process-wide pause timer (``gc_pauses.GC_PAUSES``).
"""

from __future__ import annotations

import collections
import functools
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .config import MemoryConfig
from .defaults import DEFAULTS, GC_LEVELS, GCAggressiveness
from .exporters.catalogue import GC_REASONS
from .gc_pauses import GC_PAUSES, PauseTimer
from .readers.process import ProcessReader


@dataclass(frozen=True)
class GCLevel:
    """What a level sets. Thresholds are ``gc.set_threshold``'s three numbers."""

    thresholds: tuple[int, int, int]
    trim_after_full: bool


#: The levels. Moderate is the reference's 700/10/10. The choice of low and high is
#: justified by bench/bench_gc.py (collections per second and GC share of time per level).
LEVELS: Final[dict[str, GCLevel]] = {
    # ~14x fewer young collections than moderate: the least GC time for a service that
    # builds few reference cycles; RSS may run higher between full collections.
    "low": GCLevel((10_000, 20, 20), trim_after_full=False),
    "moderate": GCLevel(
        (DEFAULTS.gc_threshold_gen0, DEFAULTS.gc_threshold_gen1, DEFAULTS.gc_threshold_gen2),
        trim_after_full=True,
    ),
    # Young collections about 3.5x as often and full ones sooner: cycles of large arrays
    # are found early, at a measurable share of CPU.
    "high": GCLevel((200, 5, 5), trim_after_full=True),
}

#: Dask pauses its proactive collections above 5 % of wall time spent in GC.
DEFAULT_MAX_GC_SHARE: Final = 0.05
_SHARE_WINDOW_S: Final = 10.0


@functools.cache
def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        import ctypes  # noqa: PLC0415 -- only when a trim is first wanted
        import ctypes.util  # noqa: PLC0415

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class GarbageCollectionManager:
    """Applies a GC level, runs timed collections, and freezes long-lived state."""

    def __init__(
        self,
        aggressiveness: str = "moderate",
        *,
        thresholds: tuple[int, int, int] | None = None,
        enable_auto_gc: bool = True,
        max_gc_share: float = DEFAULT_MAX_GC_SHARE,
        timer: PauseTimer = GC_PAUSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(aggressiveness, str) or aggressiveness not in LEVELS:
            raise ValueError(
                f"unknown GC aggressiveness {aggressiveness!r}; valid: {', '.join(GC_LEVELS)}"
            )
        if (
            isinstance(max_gc_share, bool)
            or not isinstance(max_gc_share, (int, float))
            or not 0 < max_gc_share <= 1
        ):
            raise ValueError(f"max_gc_share must be in (0, 1], got {max_gc_share!r}")
        self.aggressiveness: GCAggressiveness = aggressiveness  # type: ignore[assignment]
        self.level = LEVELS[aggressiveness]
        self.thresholds = thresholds if thresholds is not None else self.level.thresholds
        self.enable_auto_gc = enable_auto_gc
        self.max_gc_share = max_gc_share
        self.timer = timer
        self._clock = clock
        self._lock = threading.Lock()
        self._saved: tuple[tuple[int, int, int], bool, bool] | None = None
        self._rss = ProcessReader()
        self._share_points: collections.deque[tuple[float, float]] = collections.deque()
        self.triggered: collections.Counter[str] = collections.Counter()
        self.skipped: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_config(cls, config: MemoryConfig) -> GarbageCollectionManager:
        """The config's level (AGGRESSIVE_GC=true selects "high"); moderate uses its thresholds."""
        level = config.effective_gc_aggressiveness
        thresholds = None
        if level == "moderate":
            thresholds = (
                config.gc_threshold_gen0,
                config.gc_threshold_gen1,
                config.gc_threshold_gen2,
            )
        return cls(level, thresholds=thresholds, enable_auto_gc=config.enable_auto_gc)

    # -- configuration ----------------------------------------------------------------------

    def configure_gc(self) -> None:
        """Apply the level's thresholds and auto-GC setting and install the pause timer.

        The first call remembers what it found, for ``restore()``; repeating it is harmless.
        """
        with self._lock:
            if self._saved is None:
                installed = self.timer.install()
                self._saved = (gc.get_threshold(), gc.isenabled(), installed)
            else:
                self.timer.install()
            gc.set_threshold(*self.thresholds)
            if self.enable_auto_gc:
                gc.enable()
            else:
                gc.disable()

    def restore(self) -> None:
        """Put back the thresholds, enabled state and callbacks found by ``configure_gc``."""
        with self._lock:
            if self._saved is None:
                return
            thresholds, enabled, installed = self._saved
            gc.set_threshold(*thresholds)
            if enabled:
                gc.enable()
            else:
                gc.disable()
            if installed:
                self.timer.uninstall()
            self._saved = None

    # -- collections ------------------------------------------------------------------------

    def collect_with_stats(self, generation: int = 2, *, reason: str = "manual") -> dict[str, Any]:
        """Collect ``generation`` (0, 1 or 2) and return what it did.

        Keys: the reference's ``collected``, ``uncollectable`` and ``duration_ms``, plus
        ``generation``, ``rss_before_bytes``, ``rss_after_bytes``, ``rss_freed_bytes``
        (negative when RSS grew), ``trimmed`` (malloc_trim ran), ``skipped`` and ``reason``.
        """
        if not isinstance(generation, int) or isinstance(generation, bool) or generation > 2:
            raise ValueError(f"generation must be 0, 1 or 2, got {generation!r}")
        if generation < 0:
            raise ValueError(f"generation must be 0, 1 or 2, got {generation!r}")
        if reason not in GC_REASONS:  # a label value: a fixed set, never free text
            raise ValueError(f"reason must be one of {', '.join(GC_REASONS)}, got {reason!r}")
        rss_before = self._rss.rss_bytes()
        stats_before = gc.get_stats()[generation]
        start = time.perf_counter()
        gc.collect(generation)
        trimmed = False
        if generation == 2 and self.level.trim_after_full:
            trimmed = self.malloc_trim()
        duration = time.perf_counter() - start
        stats_after = gc.get_stats()[generation]
        rss_after = self._rss.rss_bytes()
        self.triggered[reason] += 1
        return {
            "collected": stats_after["collected"] - stats_before["collected"],
            "uncollectable": stats_after["uncollectable"] - stats_before["uncollectable"],
            "duration_ms": duration * 1e3,
            "generation": generation,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "rss_freed_bytes": rss_before - rss_after,
            "trimmed": trimmed,
            "skipped": False,
            "reason": reason,
        }

    def gc_time_share(self) -> float:
        """Share of wall time spent in collections over the last ~10 s (0..1).

        Measured from the pause timer between calls; 0 until two points exist.
        """
        now = self._clock()
        total = self.timer.snapshot().total_seconds
        points = self._share_points
        points.append((now, total))
        while len(points) > 2 and now - points[1][0] >= _SHARE_WINDOW_S:
            points.popleft()
        t0, g0 = points[0]
        if now - t0 <= 0:
            return 0.0
        return min(1.0, (total - g0) / (now - t0))

    def proactive_collect(self, reason: str = "proactive") -> dict[str, Any]:
        """A full collection unless collections already take more than ``max_gc_share``.

        A skipped collection returns ``skipped=True`` and the measured ``gc_share``.
        """
        share = self.gc_time_share()
        if share > self.max_gc_share:
            self.skipped[reason] += 1
            return {
                "collected": 0,
                "uncollectable": 0,
                "duration_ms": 0.0,
                "generation": 2,
                "skipped": True,
                "gc_share": share,
                "reason": reason,
            }
        stats = self.collect_with_stats(2, reason=reason)
        stats["gc_share"] = share
        return stats

    def malloc_trim(self) -> bool:
        """Ask glibc to return free heap pages to the OS; False where unavailable."""
        trim = _load_malloc_trim()  # looked up once per process
        if trim is None:
            return False
        trim(0)
        return True

    # -- freezing ---------------------------------------------------------------------------

    def freeze(self) -> int:
        """Collect, then move every object alive now out of the collector's reach.

        Call it after the model is loaded, before serving, and before forking workers (the
        frozen objects' pages then stay shared). Returns the number of frozen objects.
        """
        gc.collect()
        gc.freeze()
        return gc.get_freeze_count()

    def unfreeze(self) -> int:
        """Give the frozen objects back to the collector; returns how many there were."""
        count = gc.get_freeze_count()
        gc.unfreeze()
        return count

    @staticmethod
    def frozen_count() -> int:
        return gc.get_freeze_count()

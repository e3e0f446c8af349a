"""LevelActions: carry out what ``pressure.actions`` decides after each reading of the loop,
and the event that tells a level change.

At CRITICAL and above, a proactive collection at most every ``interval_s`` (logged as
``proactive_gc``); at EMERGENCY, an emergency cleanup (whose own cooldown rules apply).
The GC manager is made on first need from the config when none was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .logging import INFO, LEVEL_CHANGED, PROACTIVE_GC, WARNING, emit
from .pressure import Level, actions
from .reading import Reading
from .units import non_negative

if TYPE_CHECKING:
    from .config import MemoryConfig
    from .gc_manager import GarbageCollectionManager


class LevelActions:
    """The proactive-collection throttle and the hand-off to emergency cleanup."""

    def __init__(
        self,
        config: MemoryConfig,
        gc_manager: GarbageCollectionManager | None,
        interval_s: float,
        start_cleanup: Callable[[str], None],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.gc_manager = gc_manager
        self.interval_s = non_negative("proactive_gc_interval_s", interval_s, maximum=86400)
        self._start_cleanup = start_cleanup
        self._clock = clock
        self._next = 0.0

    def act(self, level: Level) -> None:
        todo = actions(
            level,
            self._clock(),
            self._next,
            proactive_gc=self.config.enable_proactive_gc,
            gc_interval_s=self.interval_s,
        )
        self._next = todo.next_proactive
        if todo.collect:
            stats = self._manager().proactive_collect("proactive")
            emit(
                INFO,
                PROACTIVE_GC,
                pressure_level=level.name,
                skipped=bool(stats.get("skipped")),
                collected=stats["collected"],
                duration_s=round(stats["duration_ms"] / 1000, 6),
            )
        if todo.emergency:
            self._start_cleanup("level")

    def _manager(self) -> GarbageCollectionManager:
        if self.gc_manager is None:
            from .gc_manager import GarbageCollectionManager  # noqa: PLC0415

            self.gc_manager = GarbageCollectionManager.from_config(self.config)
        return self.gc_manager


def log_level_change(previous: Level, level: Level, reading: Reading) -> None:
    """The ``memory_level_changed`` event: a warning going up the ladder, info coming down."""
    emit(
        WARNING if level > previous else INFO,
        LEVEL_CHANGED,
        pressure_level=level.name,
        previous_level=previous.name,
        used_ratio=round(reading.used_ratio, 4),
        available_bytes=reading.available_bytes,
        total_bytes=reading.total_bytes,
        source=reading.source,
    )

"""LevelActions: carry out what ``pressure.actions`` and ``pressure.ladder_steps`` decide
after each reading of the loop, and the event that tells a level change.

The graduated ladder, before anything is lost: at WARNING and above, registered bounded
caches shrink by their share of the bytes over the rung (at most every ``SHRINK_EVERY_S``;
``caches_shrunk``); at CRITICAL and above, idle sessions spill to disk in a worker thread,
one round at a time, never blocking the loop or a request (``sessions_spilled``), and a
proactive collection runs at most every ``interval_s`` (``proactive_gc``); at EMERGENCY,
an emergency cleanup (whose own cooldown rules apply) spills every unpinned session before
it evicts. The GC manager is made on first need from the config when none was given.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .allocator import TRIM_EVERY_S, TRIM_MIN_FREE_BYTES, Allocator, arenas_too_many, should_trim
from .bounded_cache import BoundedCache, shares
from .emergency_cleanup import split_of
from .logging import (
    ALLOCATOR_ARENAS_HIGH,
    ALLOCATOR_TRIMMED,
    CACHES_SHRUNK,
    INFO,
    LEVEL_CHANGED,
    PROACTIVE_GC,
    SESSIONS_SPILLED,
    WARNING,
    emit,
)
from .pressure import Level, Thresholds, actions, ladder_steps
from .reading import Reading
from .units import non_negative

if TYPE_CHECKING:
    from .config import MemoryConfig
    from .gc_manager import GarbageCollectionManager
    from .session_manager import SessionManager

#: Caches shrink at most this often: what they drop shows in the next readings first.
SHRINK_EVERY_S: Final = 1.0


class LevelActions:
    """The proactive-collection throttle and the hand-off to emergency cleanup."""

    def __init__(
        self,
        config: MemoryConfig,
        gc_manager: GarbageCollectionManager | None,
        interval_s: float,
        start_cleanup: Callable[[str], None],
        clock: Callable[[], float],
        *,
        thresholds: Thresholds | None = None,
        sessions: Callable[[], SessionManager | None] = lambda: None,
    ) -> None:
        self.config = config
        self.gc_manager = gc_manager
        self.interval_s = non_negative("proactive_gc_interval_s", interval_s, maximum=86400)
        self._start_cleanup = start_cleanup
        self._clock = clock
        self._next = 0.0
        self.thresholds = thresholds if thresholds is not None else Thresholds.from_config(config)
        self._sessions = sessions
        self.caches: list[BoundedCache[object, object]] = []
        self._next_shrink = 0.0
        self._spilling: threading.Thread | None = None
        self.allocator = Allocator()
        self._next_trim = 0.0
        self._session_bytes = 0
        self._arenas_told = False
        self._started = False

    def step(self, level: Level, reading: Reading) -> None:
        """The ladder's steps for ``reading`` (caches, spilling), then ``act``."""
        if not self._started:  # the first step: what the allocator looks like at start
            self._started = True
            self._check_arenas()
        if level >= Level.WARNING:
            t = self.thresholds.for_total(reading.total_bytes)
            todo = ladder_steps(level, reading.used_bytes, reading.total_bytes, t)
            shrunk = self._shrink(level, todo.shrink_bytes)
            self._spill(level, todo.spill_bytes - shrunk)
        self._trim(level)
        self.act(level)

    def _trim(self, level: Level) -> None:
        """Give the allocator's free heap back to the kernel (``allocator.should_trim``):
        looked at every ``TRIM_EVERY_S`` at WARNING and above, or at once after sessions of
        the threshold's size went. In the monitor's thread: never on a request's path."""
        sessions = self._sessions()
        held = sessions.total_bytes if sessions is not None else 0
        removed, self._session_bytes = max(0, self._session_bytes - held), held
        now = self._clock()
        pressed = level >= Level.WARNING and now >= self._next_trim
        if not self.allocator.available or not (pressed or removed >= TRIM_MIN_FREE_BYTES):
            return
        self._next_trim = now + TRIM_EVERY_S
        heap = self.allocator.heap()
        if heap is None or not should_trim(heap.free, pressed=pressed, removed_bytes=removed):
            return
        returned = self.allocator.trim()
        emit(INFO, ALLOCATOR_TRIMMED, pressure_level=level.name, free_bytes=heap.free,
             returned_bytes=returned)  # fmt: skip
        self._check_arenas()

    def _check_arenas(self) -> None:
        """Warn once where malloc holds far more arenas than the threads need (at the first
        step, and again at each trim until it has warned)."""
        if self._arenas_told or not self.allocator.available:
            return
        arenas, threads = self.allocator.arenas(max_age_s=0), threading.active_count()
        if arenas is not None and arenas_too_many(arenas, threads):
            self._arenas_told = True
            emit(WARNING, ALLOCATOR_ARENAS_HIGH, arenas=arenas, threads=threads,
                 advice="set MALLOC_ARENA_MAX=2 (docs/pressure.md)")  # fmt: skip

    def _shrink(self, level: Level, excess: int) -> int:
        """Shrink the caches by their shares of ``excess`` (throttled); the bytes evicted."""
        now = self._clock()
        if excess <= 0 or not self.caches or now < self._next_shrink:
            return 0
        self._next_shrink = now + SHRINK_EVERY_S
        caches = list(self.caches)
        plan = shares(excess, [c.nbytes for c in caches])
        freed = [c.shrink(n) for c, n in zip(caches, plan, strict=True)]
        if sum(freed):
            emit(INFO, CACHES_SHRUNK, pressure_level=level.name, freed_bytes=sum(freed),
                 caches={c.name: n for c, n in zip(caches, freed, strict=True) if n})  # fmt: skip
        return sum(freed)

    def _spill(self, level: Level, excess: int) -> None:
        """Spill idle sessions for ``excess`` bytes in a worker thread, one round at a time."""
        sessions = self._sessions()
        if excess <= 0 or sessions is None or sessions.spill_store is None:
            return
        if self._spilling is not None and self._spilling.is_alive():
            return
        self._spilling = threading.Thread(
            target=_spill_round, args=(sessions, excess, level), name="pathoai-spill", daemon=True
        )
        self._spilling.start()

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


def _spill_round(sessions: SessionManager, excess: int, level: Level) -> None:
    """One round of spilling (in the worker thread), logged when it freed anything."""
    started, before = time.monotonic(), sessions.spilled_sessions
    freed = sessions.spill_idle(excess)
    if freed:
        emit(INFO, SESSIONS_SPILLED, pressure_level=level.name, freed_bytes=freed,
             sessions=sessions.spilled_sessions - before,
             duration_s=round(time.monotonic() - started, 3))  # fmt: skip


#: Level changes kept for the /debug/memory view.
RECENT_CHANGES: Final = 20
RECENT: Final[collections.deque[dict[str, object]]] = collections.deque(maxlen=RECENT_CHANGES)


def log_level_change(previous: Level, level: Level, reading: Reading, managed: int = 0) -> None:
    """The ``memory_level_changed`` event: a warning going up the ladder, info coming down,
    with what this process manages and what it does not (``managed``: its managed bytes);
    the latest are kept in ``RECENT`` (this process's, for /debug/memory)."""
    RECENT.append({"at": round(time.time(), 3), "from": previous.name, "to": level.name,
                   "used_ratio": round(reading.used_ratio, 4),
                   "available_bytes": reading.available_bytes})  # fmt: skip
    emit(
        WARNING if level > previous else INFO,
        LEVEL_CHANGED,
        pressure_level=level.name,
        previous_level=previous.name,
        used_ratio=round(reading.used_ratio, 4),
        available_bytes=reading.available_bytes,
        total_bytes=reading.total_bytes,
        source=reading.source,
        **split_of(managed, reading),
    )

"""The pressure ladder as pure functions: levels, hysteresis, pace, admission, actions, retry hints.

Nothing here reads the OS or keeps state; ``MemoryMonitor`` feeds readings in and acts on
what comes out, and tests replay recorded sequences through the same functions.

Hysteresis (why a hovering reading does not flap): a level is entered at its threshold
and left only once the reading is ``ratio_margin`` (2 points of used ratio) below it, or,
for EMERGENCY, once available memory is ``floor_margin_bytes`` (a tenth of the floor,
50 MB at the default 500 MB) above the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

from .units import MIB

if TYPE_CHECKING:
    from .config import MemoryConfig

#: Fastest sampling pace, reached when memory is at or past a threshold (earlyoom's floor).
MIN_INTERVAL_S = 0.1
#: How fast memory is assumed to fill when deciding how soon to look again (bytes/s).
#: A single thread touching fresh numpy pages manages 2 to 4 GB/s; 2 GiB/s keeps the
#: next look ahead of all but the fastest allocators, and event wake-ups catch the rest.
ASSUMED_FILL_RATE_BPS = 2 << 30


class Level(IntEnum):
    """Memory pressure levels, exported as ``pathoai_memory_pressure_level`` (0..3)."""

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3


@dataclass(frozen=True)
class Thresholds:
    """Where the ladder's rungs are: used ratios in 0..1 and the available-bytes floor."""

    warning_ratio: float = 0.85
    critical_ratio: float = 0.90
    floor_bytes: int = 500 * MIB
    ratio_margin: float = 0.02
    floor_margin_bytes: int = 50 * MIB
    #: Fit the ratio rungs below the floor in small containers (see ``for_total``): on for
    #: the default ratios, off where they were configured explicitly.
    fit_to_floor: bool = False
    #: Keep the floor within ``FLOOR_SHARE`` of the limit (see ``for_total``): on for the
    #: default floor, off where it was configured explicitly.
    fit_floor: bool = False
    #: The fitted rungs by limit, so ``for_total`` on the hot path is one dict lookup (an
    #: lru_cache would hash every field of this dataclass on each call).
    _fits: dict[int, Thresholds] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not 0 < self.warning_ratio < self.critical_ratio <= 1:
            raise ValueError(
                f"need 0 < warning_ratio < critical_ratio <= 1, got "
                f"{self.warning_ratio} and {self.critical_ratio}"
            )
        if self.floor_bytes < 0 or self.floor_margin_bytes < 0 or self.ratio_margin < 0:
            raise ValueError("floor, floor margin and ratio margin must be >= 0")

    @classmethod
    def from_config(cls, config: MemoryConfig) -> Thresholds:
        """The rungs of a validated config (percent and MB in, ratios and bytes out)."""
        floor = math.ceil(config.emergency_cleanup_threshold_mb * MIB)
        explicit = {config.source_of(n) for n in ("max_memory_percent", "proactive_gc_threshold")}
        return cls(
            warning_ratio=config.max_memory_percent / 100.0,
            critical_ratio=config.proactive_gc_threshold / 100.0,
            floor_bytes=floor,
            floor_margin_bytes=floor // 10,
            fit_to_floor=explicit == {"default"},
            fit_floor=config.source_of("emergency_cleanup_threshold_mb") == "default",
        )

    def for_total(self, total_bytes: int) -> Thresholds:
        """The rungs for a limit of ``total_bytes``. With ``fit_floor`` (the default floor),
        the floor is at most ``FLOOR_SHARE`` of the limit: 500 MB from 5 GiB up, 205 MB in
        2 GiB (a fixed 500 MB would keep a quarter of a 2 GiB container idle). Then, with
        ``fit_to_floor``, the warning and critical rungs are moved down to 10 and 5 points of
        used ratio before the floor begins where they would come after it, so the ladder is
        climbed in order."""
        if not (self.fit_to_floor or self.fit_floor) or total_bytes <= 0:
            return self
        fitted = self._fits.get(total_bytes)
        if fitted is None:
            if len(self._fits) >= 32:  # limits seldom change: keep the cache small anyway
                self._fits.clear()
            fitted = self._fits[total_bytes] = _fitted(self, total_bytes)
        return fitted

    @property
    def restored_bytes(self) -> int:
        """Available bytes at which EMERGENCY ends: the floor plus its margin."""
        return self.floor_bytes + self.floor_margin_bytes


#: The gap, in used ratio, between fitted rungs (warning, critical, the floor).
RUNG_GAP = 0.05
#: The default floor's largest share of the limit (``Thresholds.fit_floor``).
FLOOR_SHARE = 0.10


def _fitted(t: Thresholds, total_bytes: int) -> Thresholds:
    if t.fit_floor:
        floor = min(t.floor_bytes, int(total_bytes * FLOOR_SHARE))
        t = replace(t, floor_bytes=floor, floor_margin_bytes=floor // 10, fit_floor=False)
    if not t.fit_to_floor:
        return t
    floor_at = 1 - t.floor_bytes / total_bytes  # the used ratio at which the floor begins
    warning = min(t.warning_ratio, floor_at - 2 * RUNG_GAP)
    critical = min(t.critical_ratio, floor_at - RUNG_GAP)
    if warning <= RUNG_GAP:  # a limit hardly above the floor: nothing to fit
        return replace(t, fit_to_floor=False)
    return replace(t, warning_ratio=warning, critical_ratio=critical, fit_to_floor=False)


def rungs_in_order(t: Thresholds, total_bytes: int) -> bool:
    """Whether, at this limit, used bytes reach warning, then critical, then the floor."""
    fitted = t.for_total(total_bytes)
    return fitted.critical_ratio * total_bytes < total_bytes - fitted.floor_bytes


def classify(
    used_ratio: float, available_bytes: int, t: Thresholds, previous: Level = Level.NORMAL
) -> Level:
    """The level for one reading, given the level before it (hysteresis on the way down)."""
    if available_bytes < t.floor_bytes:
        return Level.EMERGENCY
    if previous is Level.EMERGENCY and available_bytes < t.restored_bytes:
        return Level.EMERGENCY
    if used_ratio >= t.critical_ratio:
        return Level.CRITICAL
    if previous >= Level.CRITICAL and used_ratio >= t.critical_ratio - t.ratio_margin:
        return Level.CRITICAL
    if used_ratio >= t.warning_ratio:
        return Level.WARNING
    if previous >= Level.WARNING and used_ratio >= t.warning_ratio - t.ratio_margin:
        return Level.WARNING
    return Level.NORMAL


def headroom_bytes(total_bytes: int, used_bytes: int, available_bytes: int, t: Thresholds) -> int:
    """Bytes that may still be allocated before the nearest rung not yet reached (0 at one)."""
    room = available_bytes - t.floor_bytes
    for ratio in (t.warning_ratio, t.critical_ratio):
        distance = int(ratio * total_bytes) - used_bytes
        if distance > 0:
            room = min(room, distance)
    return max(0, room)


@dataclass(frozen=True)
class RestBand:
    """Readings in which nothing can change: with ``total_bytes`` unchanged, at least
    ``min_available_bytes`` available and at most ``max_used_bytes`` used, a monitor that was
    NORMAL stays NORMAL and may wait its resting pace again (see ``rest_band``)."""

    total_bytes: int
    min_available_bytes: int
    max_used_bytes: int

    def holds(self, total_bytes: int, used_bytes: int, available_bytes: int) -> bool:
        return (
            total_bytes == self.total_bytes
            and available_bytes >= self.min_available_bytes
            and used_bytes <= self.max_used_bytes
        )


def rest_band(
    total_bytes: int,
    t: Thresholds,
    pace_s: float,
    *,
    fill_rate_bps: float = ASSUMED_FILL_RATE_BPS,
) -> RestBand:
    """The band of readings, for this total, that are NORMAL and far enough from every rung
    that ``next_interval`` gives at least ``pace_s`` (the pace rested at): the
    headroom to the floor and to the warning rung both cover ``fill_rate_bps`` for one
    interval.

    The monitor's background thread checks a reading against it with three comparisons and
    skips the rest of its step while readings stay inside.
    """
    margin = math.ceil(fill_rate_bps * pace_s)
    return RestBand(
        total_bytes,
        t.floor_bytes + margin,
        int(t.warning_ratio * total_bytes) - margin,
    )


def next_interval(
    headroom: int,
    base_interval_s: float,
    *,
    min_interval_s: float = MIN_INTERVAL_S,
    fill_rate_bps: float = ASSUMED_FILL_RATE_BPS,
) -> float:
    """How long to wait before the next sample: the time memory would take to fill the
    headroom at ``fill_rate_bps``, between ``min_interval_s`` and the configured interval.

    As earlyoom does: far from every rung the monitor sleeps its full interval; near one it
    looks up to ten times a second.
    """
    low = min(min_interval_s, base_interval_s)
    return max(low, min(base_interval_s, headroom / fill_rate_bps))


#: The paces the monitor rests at: the configured interval times PACE_STEP**k, down to
#: the fastest pace. A few fixed steps let it rest near a rung too, sampling a little more
#: often than ``next_interval`` asks (never less), instead of running its full step on
#: every sample.
PACE_STEP = 0.8


def rest_pace(
    headroom: int,
    base_interval_s: float,
    *,
    min_interval_s: float = MIN_INTERVAL_S,
    fill_rate_bps: float = ASSUMED_FILL_RATE_BPS,
) -> float | None:
    """The pace to rest at with this headroom: the slowest step ``base * PACE_STEP**k`` no
    slower than ``next_interval``; None when only the fastest pace will do (no rest)."""
    target = next_interval(
        headroom, base_interval_s, min_interval_s=min_interval_s, fill_rate_bps=fill_rate_bps
    )
    pace = base_interval_s
    while pace > target:
        pace *= PACE_STEP
    return pace if pace >= min(min_interval_s, base_interval_s) else None


def admits(
    available_bytes: int, reserved_bytes: int, required_bytes: int, floor_bytes: int
) -> bool:
    """The admission rule: ``required`` fits when, after what is already reserved, available
    memory stays at or above the floor."""
    return available_bytes - reserved_bytes - required_bytes >= floor_bytes


def v1_usage_thresholds(limit_bytes: int, t: Thresholds) -> tuple[int, ...]:
    """cgroup v1 usage values worth a kernel wake-up: each ratio rung and the floor, in bytes."""
    return (
        int(limit_bytes * t.warning_ratio),
        int(limit_bytes * t.critical_ratio),
        limit_bytes - t.floor_bytes,
    )


class Actions(NamedTuple):
    """What the monitor does after a reading at some level (see ``actions``)."""

    collect: bool  # run a proactive collection now
    next_proactive: float  # when the next proactive collection may run (monotonic s)
    emergency: bool  # start an emergency cleanup (the cleanup's cooldown still applies)


def actions(
    level: Level, now: float, next_proactive: float, *, proactive_gc: bool, gc_interval_s: float
) -> Actions:
    """The one place a level becomes actions: at CRITICAL and above a proactive collection
    at most every ``gc_interval_s``; at EMERGENCY a cleanup too. Below CRITICAL the next
    crossing may collect at once."""
    if level < Level.CRITICAL:
        return Actions(False, 0.0, False)
    collect = proactive_gc and now >= next_proactive
    return Actions(
        collect, now + gc_interval_s if collect else next_proactive, level is Level.EMERGENCY
    )


class Steps(NamedTuple):
    """Bytes the graduated ladder frees before EMERGENCY: caches shrink at WARNING and
    above, idle sessions spill at CRITICAL and above."""

    shrink_bytes: int
    spill_bytes: int


def ladder_steps(level: Level, used_bytes: int, total_bytes: int, t: Thresholds) -> Steps:
    """How many bytes each step should free: what lies above the rung's exit point (the
    rung less its margin), so that one round brings the level down and it stays down."""

    def over(ratio: float) -> int:
        return max(0, used_bytes - math.floor(max(0.0, ratio - t.ratio_margin) * total_bytes))

    shrink = over(t.warning_ratio) if level >= Level.WARNING else 0
    spill = over(t.critical_ratio) if level >= Level.CRITICAL else 0
    return Steps(shrink, spill)


def retry_after_s(
    level: Level, interval_s: float, cooldown_left_s: float = 0.0, *, minimum_s: int = 1
) -> int:
    """Whole seconds a refused client should wait (HTTP ``Retry-After``).

    In EMERGENCY, a cleanup is running or due after its cooldown, so the hint covers the
    cooldown plus two samples to see its effect; otherwise memory is merely short for this
    size, and the next samples will tell, so two intervals.
    """
    wait = 2 * interval_s
    if level is Level.EMERGENCY:
        wait += cooldown_left_s
    return max(minimum_s, math.ceil(wait))

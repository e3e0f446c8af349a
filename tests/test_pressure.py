"""The ladder as a pure function: recorded sequences, hysteresis margins, pacing, hints."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathoai_memobs import MemoryConfig
from pathoai_memobs.pressure import (
    ASSUMED_FILL_RATE_BPS,
    MIN_INTERVAL_S,
    PACE_STEP,
    Level,
    Thresholds,
    classify,
    headroom_bytes,
    next_interval,
    rest_band,
    rest_pace,
    retry_after_s,
)

MIB = 1 << 20
GIB = 1 << 30
T = Thresholds()  # 85 %, 90 %, 500 MiB floor, 2 points and 50 MiB margins
PLENTY = 8 * GIB


def replay(ratios: list[float], available: list[int] | None = None) -> list[Level]:
    """Feed a recorded sequence through classify, as the monitor does, level by level."""
    avail = available if available is not None else [PLENTY] * len(ratios)
    level, out = Level.NORMAL, []
    for r, a in zip(ratios, avail, strict=True):
        level = classify(r, a, T, level)
        out.append(level)
    return out


def test_thresholds_come_from_the_config() -> None:
    t = Thresholds.from_config(
        MemoryConfig(
            max_memory_percent=80, proactive_gc_threshold=95, emergency_cleanup_threshold_mb=1000
        )
    )
    assert (t.warning_ratio, t.critical_ratio) == (0.80, 0.95)
    assert t.floor_bytes == 1000 * MIB
    assert t.floor_margin_bytes == 100 * MIB
    assert not t.fit_to_floor and not t.fit_floor  # set explicitly: kept as they are
    assert t.for_total(2 << 30).floor_bytes == 1000 * MIB
    default = Thresholds.from_config(MemoryConfig())
    assert default == replace(T, fit_to_floor=True, fit_floor=True)


@pytest.mark.parametrize(
    ("gib", "floor_mib"), [(1, 102.4), (2, 204.8), (4, 409.6), (5, 500), (64, 500)]
)
def test_the_default_floor_is_at_most_a_tenth_of_the_limit(gib: int, floor_mib: float) -> None:
    fitted = Thresholds.from_config(MemoryConfig()).for_total(gib << 30)
    assert fitted.floor_bytes == int(floor_mib * MIB)
    assert fitted.floor_margin_bytes == fitted.floor_bytes // 10


@pytest.mark.parametrize("gib", [1, 1.5, 2, 3, 4, 5, 8, 10, 64])
def test_with_the_defaults_every_container_from_1_gib_climbs_the_rungs_in_order(
    gib: float,
) -> None:
    from pathoai_memobs.pressure import rungs_in_order

    total = int(gib * (1 << 30))
    t = Thresholds.from_config(MemoryConfig())
    assert rungs_in_order(t, total)
    fitted = t.for_total(total)
    warning_used = fitted.warning_ratio * total
    critical_used = fitted.critical_ratio * total
    assert warning_used < critical_used < total - fitted.floor_bytes
    if gib >= 10:  # the floor begins past 95 %: the configured rungs stand
        assert (fitted.warning_ratio, fitted.critical_ratio) == (0.85, 0.90)
    # A reading between the fitted rungs is WARNING, and one past critical is CRITICAL.
    used = int((fitted.warning_ratio + 0.01) * total)
    assert classify(used / total, total - used, fitted) is Level.WARNING
    used = int((fitted.critical_ratio + 0.01) * total)
    assert classify(used / total, total - used, fitted) is Level.CRITICAL


def test_an_explicit_configuration_out_of_order_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pathoai_memobs.pressure import rungs_in_order
    from pathoai_memobs.sampling_loop import check_rungs

    t = Thresholds.from_config(MemoryConfig(max_memory_percent=85, proactive_gc_threshold=90.5))
    two_gib = 2 << 30
    assert not rungs_in_order(t, two_gib) and rungs_in_order(t, 8 << 30)
    assert check_rungs(t, two_gib) is False
    (event,) = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    # the default floor is fitted to a tenth of 2 GiB: it begins at 90 %, before 90.5 %
    assert event["event"] == "rungs_out_of_order" and event["floor_begins_at_ratio"] == 0.9


@pytest.mark.parametrize(
    "kwargs", [{"warning_ratio": 0.9, "critical_ratio": 0.9}, {"floor_bytes": -1}]
)
def test_bad_thresholds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**kwargs)  # type: ignore[arg-type]


def test_each_rung_is_entered_at_its_threshold() -> None:
    assert classify(0.849, PLENTY, T) is Level.NORMAL
    assert classify(0.85, PLENTY, T) is Level.WARNING
    assert classify(0.899, PLENTY, T) is Level.WARNING
    assert classify(0.90, PLENTY, T) is Level.CRITICAL
    assert classify(0.10, 500 * MIB, T) is Level.NORMAL  # at the floor is not below it
    assert classify(0.10, 500 * MIB - 1, T) is Level.EMERGENCY


def test_a_reading_hovering_at_85_percent_warns_once() -> None:
    hovering = [0.80, 0.851, 0.849, 0.852, 0.848, 0.851, 0.846, 0.849]
    levels = replay(hovering)
    assert levels == [Level.NORMAL] + [Level.WARNING] * 7
    crossings = sum(1 for a, b in itertools.pairwise(levels) if a != b)
    assert crossings == 1


def test_leaving_a_level_needs_the_margin() -> None:
    down = [0.91, 0.89, 0.881, 0.879, 0.86, 0.831, 0.829]
    assert replay(down) == [
        Level.CRITICAL,
        Level.CRITICAL,  # 0.89 >= 0.88
        Level.CRITICAL,
        Level.WARNING,  # below 0.88: leaves CRITICAL, still >= 0.85
        Level.WARNING,
        Level.WARNING,  # 0.831 >= 0.83
        Level.NORMAL,
    ]


def test_emergency_ends_only_above_floor_plus_margin() -> None:
    avail = [600 * MIB, 499 * MIB, 520 * MIB, 549 * MIB, 550 * MIB]
    assert replay([0.5] * 5, avail) == [
        Level.NORMAL,
        Level.EMERGENCY,
        Level.EMERGENCY,
        Level.EMERGENCY,
        Level.NORMAL,
    ]


def test_leaving_emergency_lands_on_the_ratio_level() -> None:
    assert classify(0.95, 600 * MIB, T, Level.EMERGENCY) is Level.CRITICAL
    assert classify(0.86, 600 * MIB, T, Level.EMERGENCY) is Level.WARNING


@given(
    st.floats(0, 1),
    st.integers(0, 64 * GIB),
    st.sampled_from(list(Level)),
)
def test_hysteresis_only_ever_holds_a_level_up(ratio: float, avail: int, prev: Level) -> None:
    fresh = classify(ratio, avail, T)
    held = classify(ratio, avail, T, prev)
    assert fresh <= held <= max(fresh, prev)


def test_sampling_speeds_up_near_a_rung() -> None:
    total = 16 * GIB
    far = headroom_bytes(total, 4 * GIB, 12 * GIB, T)
    near = headroom_bytes(total, int(0.84 * total), int(0.16 * total), T)
    assert far == int(0.85 * total) - 4 * GIB
    assert next_interval(far, 1.0) == 1.0
    assert next_interval(near, 1.0) < 0.1 + 1e-9
    assert next_interval(0, 1.0) == MIN_INTERVAL_S
    assert next_interval(0, 0.05) == 0.05  # never slower than configured
    assert headroom_bytes(total, int(0.95 * total), 400 * MIB, T) == 0


def test_retry_after_hint() -> None:
    assert retry_after_s(Level.NORMAL, 1.0) == 2
    assert retry_after_s(Level.EMERGENCY, 1.0, cooldown_left_s=3.2) == 6
    assert retry_after_s(Level.NORMAL, 0.1) == 1


@given(
    total=st.integers(2 * GIB, 512 * GIB),
    used_share=st.floats(0, 1),
    interval=st.sampled_from([0.1, 0.5, 1.0, 5.0]),
)
def test_rest_band_is_exactly_where_nothing_changes(
    total: int, used_share: float, interval: float
) -> None:
    """Inside the band a NORMAL monitor stays NORMAL and waits its full interval; one byte
    past either edge, the full step would pace faster."""
    band = rest_band(total, T, interval)
    used = int(total * used_share)
    available = total - used
    inside = band.holds(total, used, available)
    full = next_interval(headroom_bytes(total, used, available, T), interval) == interval
    if inside:
        assert classify(used / total, available, T, Level.NORMAL) is Level.NORMAL
        assert full
    # Tight (above the fastest pace): the band's edge reading holds, one byte past it the
    # full step would pace faster.
    edge_used = band.max_used_bytes
    if interval > MIN_INTERVAL_S and total - edge_used >= band.min_available_bytes:
        assert band.holds(total, edge_used, total - edge_used)
        past = (total, edge_used + 1, total - edge_used - 1)
        assert not band.holds(*past)
        assert next_interval(headroom_bytes(*past, T), interval) < interval
    assert not band.holds(total + 1, used, available)  # a changed total is a new picture


@given(
    total=st.integers(1 * GIB, 512 * GIB),
    used_share=st.floats(0, 1),
    later_share=st.floats(0, 1),
    base=st.sampled_from([0.1, 0.5, 1.0, 5.0]),
)
def test_resting_at_a_faster_pace_is_never_slower_than_the_full_step(
    total: int, used_share: float, later_share: float, base: float
) -> None:
    """The pace a NORMAL monitor rests at is a step no slower than ``next_interval``, and
    every later reading inside that pace's band stays NORMAL and allows that pace."""
    used = int(total * used_share)
    headroom = headroom_bytes(total, used, total - used, T)
    pace = rest_pace(headroom, base)
    wanted = next_interval(headroom, base)
    if pace is None:
        assert wanted < min(MIN_INTERVAL_S, base) / PACE_STEP  # only the fastest pace will do
        return
    assert pace <= wanted and (pace == base or pace / PACE_STEP > wanted)
    band = rest_band(total, T, pace)
    later = int(total * later_share)
    if band.holds(total, later, total - later):
        assert classify(later / total, total - later, T, Level.NORMAL) is Level.NORMAL
        assert next_interval(headroom_bytes(total, later, total - later, T), base) >= pace


def test_rest_pace_steps_down_near_a_rung() -> None:
    assert rest_pace(8 * GIB, 1.0) == 1.0  # far from every rung: the full interval
    one_and_a_half = int(1.46 * ASSUMED_FILL_RATE_BPS)
    assert rest_pace(one_and_a_half // 2, 1.0) == pytest.approx(0.64)  # wants 0.73 s
    assert rest_pace(0, 1.0) is None  # at a rung: the fastest pace, no rest
    assert rest_pace(0, 0.1) == 0.1  # at 10 Hz the fastest pace is the interval itself


def test_a_level_becomes_actions_in_one_place() -> None:
    from pathoai_memobs.pressure import actions

    kw = {"proactive_gc": True, "gc_interval_s": 10.0}
    assert actions(Level.WARNING, 100.0, 105.0, **kw) == (False, 0.0, False)  # reset
    assert actions(Level.CRITICAL, 100.0, 0.0, **kw) == (True, 110.0, False)
    assert actions(Level.CRITICAL, 105.0, 110.0, **kw) == (False, 110.0, False)  # throttled
    assert actions(Level.EMERGENCY, 110.0, 110.0, **kw) == (True, 120.0, True)
    off = {"proactive_gc": False, "gc_interval_s": 10.0}
    assert actions(Level.EMERGENCY, 110.0, 0.0, **off) == (False, 0.0, True)


def test_admits_keeps_what_is_reserved_and_the_floor_apart() -> None:
    from pathoai_memobs.pressure import admits

    assert admits(1000, 200, 300, 500)
    assert not admits(1000, 201, 300, 500)

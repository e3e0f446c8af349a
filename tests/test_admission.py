"""Admission through the monitor: rejection in EMERGENCY, hints, the margin."""

from __future__ import annotations

import pytest

from pathoai_memobs import InsufficientMemoryError, MemoryConfig, MemoryMonitor
from pathoai_memobs.admission import Admission
from pathoai_memobs.pressure import Level
from pathoai_memobs.reading import combine

from .fstree import GIB, MIB
from .scripted import Scripted, events, wait_for

# -- admission ----------------------------------------------------------------------------


def test_emergency_rejects_requests_with_a_retry_hint_and_starts_a_cleanup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Scripted(450 * MIB)
    m = MemoryMonitor(MemoryConfig(), sampler=s, emergency_cooldown_s=0)
    m.register_cleanup_callback(lambda: setattr(s, "available", 2 * GIB), name="frees")
    with pytest.raises(InsufficientMemoryError) as err:
        m.check_memory_available(0)
    assert err.value.retry_after_s is not None and err.value.retry_after_s >= 1
    assert "retry after" in str(err.value)
    assert m.requests_rejected_total == 1
    wait_for(lambda: m.emergency_totals.runs == 1)  # admission first, eviction second
    assert m.check_memory_available(100)
    (rejected,) = events(caplog, "request_rejected")
    assert rejected["pressure_level"] == "EMERGENCY"


def test_emergency_level_holds_rejection_until_the_margin(fast: MemoryConfig) -> None:
    s = Scripted(450 * MIB)
    m = MemoryMonitor(fast, sampler=s, emergency_cooldown_s=60)
    m.sample()
    s.available = 520 * MIB  # above the floor, below floor + 50 MiB: still EMERGENCY
    with pytest.raises(InsufficientMemoryError):
        m.check_memory_available(1)
    with pytest.raises(InsufficientMemoryError), m.reserve(1):
        pass
    s.available = 600 * MIB
    assert m.check_memory_available(1)


def test_rejection_disabled_returns_false() -> None:
    cfg = MemoryConfig(enable_request_rejection=False)
    m = MemoryMonitor(cfg, sampler=Scripted(450 * MIB), emergency_cooldown_s=60)
    assert m.check_memory_available(0) is False
    assert m.requests_rejected_total == 1


def test_admission_holds_releases_and_refuses_without_a_monitor() -> None:
    now = [0.0]
    a = Admission(500 * MIB, 1.0, clock=lambda: now[0])
    with a.lock:
        assert a.admit_locked(Level.NORMAL, GIB, 300 * MIB, hold=True) == (True, 0)
        assert a.admit_locked(Level.NORMAL, GIB, 300 * MIB, hold=True) == (False, 300 * MIB)
        assert a.admit_locked(Level.NORMAL, GIB, 224 * MIB, hold=False) == (True, 300 * MIB)
        assert a.admit_locked(Level.EMERGENCY, 8 * GIB, 0, hold=False)[0] is False
    assert a.reserved_bytes == 300 * MIB
    a.release(300 * MIB)
    assert a.reserved_bytes == 0
    reading = combine(2 * GIB, 600 * MIB, None, None, None, 0, 0.0, 0.0)
    error = a.refuse(300 * MIB, reading, 0, Level.NORMAL, 0.0)
    assert isinstance(error, InsufficientMemoryError) and error.retry_after_s == 2
    assert error.required_mb == 300 and error.floor_mb == 500
    emergency = a.refuse(300 * MIB, reading, 0, Level.EMERGENCY, 4.5)
    assert emergency.retry_after_s == 7  # the cooldown left plus two samples
    assert a.rejected_total == 2


def test_refusals_are_logged_once_a_second_with_how_many_were_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    a = Admission(500 * MIB, 1.0, clock=lambda: now[0])
    reading = combine(2 * GIB, 600 * MIB, None, None, None, 0, 0.0, 0.0)
    for _ in range(5):
        a.refuse(300 * MIB, reading, 0, Level.NORMAL, 0.0)
    now[0] += 1.5
    a.refuse(300 * MIB, reading, 0, Level.NORMAL, 0.0)
    logged = events(caplog, "request_rejected")
    assert [e["suppressed"] for e in logged] == [0, 4]

"""Emergency cleanup through the monitor: plan order, budgets, built-in steps, cooldown."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.pressure import Level
from pathoai_memobs.session_manager import SessionManager

from .fstree import GIB, MIB
from .scripted import Scripted, events, wait_for

# -- emergency cleanup --------------------------------------------------------------------


def test_callbacks_run_in_priority_order_and_stop_once_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Scripted(300 * MIB, total=2 * GIB)
    m = MemoryMonitor(MemoryConfig.from_env({"MEMORY_EMERGENCY_FLOOR_MB": "500"}), sampler=s)
    ran: list[str] = []

    def frees(name: str, nbytes: int) -> object:
        def fn() -> None:
            ran.append(name)
            s.available += nbytes

        return fn

    m.register_cleanup_callback(frees("late", 1 * GIB), name="late", priority=50)
    m.register_cleanup_callback(frees("first", 100 * MIB), name="first", priority=1)
    m.register_cleanup_callback(frees("second", 300 * MIB), name="second", priority=10)
    m.register_cleanup_callback(frees("never", 0), name="never", priority=99)
    m.sample()
    assert m.level is Level.EMERGENCY
    run = m.run_emergency_cleanup()
    assert run is not None
    assert ran == ["first", "second"]  # 300 + 100 + 300 MiB >= 550 MiB: restored
    assert run.restored and run.freed_bytes == 400 * MIB
    assert [st.name for st in run.steps] == ["first", "second"]
    assert [st.freed_bytes for st in run.steps] == [100 * MIB, 300 * MIB]
    assert m.level is Level.WARNING  # 65.8 % used: past the rung fitted to 2 GiB (65.6 %)
    totals = m.emergency_totals
    assert totals.runs == 1 and totals.freed_bytes == 400 * MIB
    (logged,) = events(caplog, "emergency_cleanup")
    assert logged["freed_bytes"] == 400 * MIB and logged["restored"] is True


def test_bad_registrations_are_refused() -> None:
    m = MemoryMonitor(MemoryConfig(), sampler=Scripted(GIB))
    m.register_cleanup_callback(lambda: None, name="a")
    with pytest.raises(ValueError, match="already"):
        m.register_cleanup_callback(lambda: None, name="a")
    with pytest.raises(TypeError):
        m.register_cleanup_callback(42, name="b")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.register_cleanup_callback(lambda: None, name="")
    assert m.unregister_cleanup_callback("a") and not m.unregister_cleanup_callback("a")


def test_raising_and_hanging_callbacks_do_not_stop_the_run_or_the_monitor(
    fast: MemoryConfig, monitors: list[MemoryMonitor], caplog: pytest.LogCaptureFixture
) -> None:
    s = Scripted(300 * MIB)
    release = threading.Event()
    m = MemoryMonitor(fast, sampler=s, callback_budget_s=0.2, emergency_cooldown_s=0.05)
    monitors.append(m)

    def broken() -> None:
        raise RuntimeError("callback bug")

    def hangs() -> None:
        release.wait(10)

    def frees() -> None:
        s.available += GIB

    m.register_cleanup_callback(broken, name="broken", priority=1)
    m.register_cleanup_callback(hangs, name="hangs", priority=2)
    m.register_cleanup_callback(frees, name="frees", priority=3)
    m.start()
    wait_for(lambda: m.emergency_totals.runs >= 1)
    run = m.emergency_totals.last
    assert run is not None and run.restored
    by_name = {st.name: st for st in run.steps}
    assert not by_name["broken"].ok and by_name["hangs"].overran and by_name["frees"].ok
    totals = m.emergency_totals
    assert totals.callback_failures["broken"] == 1 and totals.callback_overruns["hangs"] == 1
    before = m.samples_total
    wait_for(lambda: m.samples_total > before + 3)  # still sampling while "hangs" hangs
    # A second emergency skips the still-running callback instead of stacking another.
    s.available = 300 * MIB
    wait_for(lambda: m.emergency_totals.runs >= 2)
    last = m.emergency_totals.last
    assert last is not None
    assert {st.name: st for st in last.steps}["hangs"].skipped
    release.set()
    assert events(caplog, "cleanup_callback_failed")[0]["callback"] == "broken"
    assert events(caplog, "cleanup_callback_overran")[0]["callback"] == "hangs"


def test_builtin_steps_evict_lru_unpinned_sessions_and_call_hooks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sessions = SessionManager(timeout_minutes=30)
    s = Scripted(2 * GIB)
    s.sessions = sessions
    m = MemoryMonitor(MemoryConfig(), sampler=s, sessions=sessions)
    hooked: list[tuple[str, str]] = []
    sessions.on_remove(lambda sid, data, reason: hooked.append((sid, reason)))
    ids = []
    for _ in range(7):
        sid = sessions.create_session()
        sessions.update_session(sid, image=np.ones(250 * MIB, np.uint8))
        ids.append(sid)
        time.sleep(0.002)
    m.sample()
    assert m.level is Level.EMERGENCY  # 2048 - 7 x 250 = 298 MiB available
    with sessions.use(ids[0]):  # the oldest is busy: pinned
        run = m.run_emergency_cleanup()
    assert run is not None and run.restored
    names = [st.name for st in run.steps]
    assert names == ["expired_sessions", "full_collection", "evict_sessions"]
    evicted = [sid for sid, reason in hooked if reason == "emergency"]
    assert ids[0] not in evicted
    assert evicted == ids[1 : 1 + len(evicted)]  # least recently used first
    assert s.sample().available_bytes >= m.thresholds.restored_bytes
    assert len(evicted) == 2  # 298 + 2 x 250 MiB >= 550 MiB: just enough, no more
    text = caplog.text
    assert all(sid not in text for sid in ids)
    assert len(events(caplog, "session_removed")) == 2


def test_nothing_to_evict_ends_the_run_unrestored() -> None:
    sessions = SessionManager()
    m = MemoryMonitor(MemoryConfig(), sampler=Scripted(100 * MIB), sessions=sessions)
    run = m.run_emergency_cleanup()
    assert run is not None and not run.restored
    assert m.emergency_totals.runs == 1


def test_never_two_runs_at_once_and_cooldown_between(fast: MemoryConfig) -> None:
    s = Scripted(100 * MIB)
    m = MemoryMonitor(fast, sampler=s, emergency_cooldown_s=60)
    inside = threading.Event()
    go = threading.Event()

    def slow() -> None:
        inside.set()
        go.wait(5)

    m.register_cleanup_callback(slow, name="slow")
    t = threading.Thread(target=m.run_emergency_cleanup)
    t.start()
    inside.wait(5)
    assert m.run_emergency_cleanup() is None  # one is running
    go.set()
    t.join()
    m._cleanup.start("level")  # within the cooldown: nothing starts
    time.sleep(0.05)
    assert m.emergency_totals.runs == 1


def test_the_plan_is_user_callbacks_then_the_builtin_steps_by_name() -> None:
    from pathoai_memobs.emergency import BUILTIN_STEPS

    m = MemoryMonitor(MemoryConfig(), sampler=Scripted(GIB), sessions=SessionManager())
    m.register_cleanup_callback(lambda: None, name="cache", priority=5)
    assert [s.name for s in m._cleanup.plan()] == ["cache", *BUILTIN_STEPS]
    bare = MemoryMonitor(MemoryConfig(), sampler=Scripted(GIB))
    assert [s.name for s in bare._cleanup.plan()] == ["full_collection"]


def test_only_a_run_that_freed_nothing_holds_the_next_one() -> None:
    """A steadily allocating process needs run after run while each wins memory back."""
    s = Scripted(100 * MIB)
    m = MemoryMonitor(MemoryConfig(), sampler=s, emergency_cooldown_s=60)

    def frees_a_little() -> None:
        s.available += 10 * MIB

    m.register_cleanup_callback(frees_a_little, name="little")
    first = m.run_emergency_cleanup()
    assert first is not None and first.freed_bytes > 0 and not first.restored
    assert m._cleanup.cooldown_left_s() == 0
    m._cleanup.start("level")  # no cooldown: a second run starts at once
    wait_for(lambda: m.emergency_totals.runs == 2)
    m.unregister_cleanup_callback("little")
    wait_for(lambda: not m._cleanup._run_lock.locked())
    third = m.run_emergency_cleanup()
    assert third is not None and third.freed_bytes == 0
    assert m._cleanup.cooldown_left_s() > 50  # nothing left to win: wait it out
    m._cleanup.start("level")
    time.sleep(0.05)
    assert m.emergency_totals.runs == 3


def test_each_callbacks_freed_bytes_are_counted_and_one_that_frees_nothing_is_flagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pathoai_memobs.emergency import FUTILE_AFTER
    from pathoai_memobs.exporters.prometheus import instrument

    s = Scripted(100 * MIB)
    m = MemoryMonitor(MemoryConfig(), sampler=s, emergency_cooldown_s=0)

    def frees() -> None:
        s.available += 10 * MIB

    m.register_cleanup_callback(lambda: None, name="futile", priority=1)
    m.register_cleanup_callback(frees, name="frees", priority=2)
    for _ in range(FUTILE_AFTER + 2):
        m.run_emergency_cleanup()
    totals = m.emergency_totals
    assert totals.callback_freed_bytes["frees"] == (FUTILE_AFTER + 2) * 10 * MIB
    assert totals.callback_futile_runs == {"futile": FUTILE_AFTER + 2, "frees": 0}
    flagged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    flagged = [e for e in flagged if e["event"] == "cleanup_callback_futile"]
    assert [e["callback"] for e in flagged] == ["futile"]  # once per streak, not every run
    registry = CollectorRegistry()
    instrument(m, registry=registry)
    text = generate_latest(registry).decode()
    assert f'pathoai_cleanup_callback_futile_runs{{callback="futile"}} {FUTILE_AFTER + 2}.0' in text
    assert 'pathoai_cleanup_callback_freed_bytes_total{callback="frees"} 7.340032e+07' in text

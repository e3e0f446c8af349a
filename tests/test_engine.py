"""The pressure engine in-process: background thread, faults, emergency runs, rejection."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pathoai_memobs import InsufficientMemoryError, MemoryConfig, MemoryMonitor
from pathoai_memobs.monitor import THREAD_NAME
from pathoai_memobs.pressure import Level
from pathoai_memobs.reading import Reading, combine
from pathoai_memobs.session_manager import SessionManager

from .fstree import GIB, MIB, v2_tree


class Scripted:
    """Memory the test sets; sessions' accounted bytes count as used, as they would."""

    def __init__(self, available: int, total: int = 8 * GIB) -> None:
        self.available = available
        self.total = total
        self.sessions: SessionManager | None = None
        self.fail: Exception | None = None
        self.calls = 0

    def sample(self) -> Reading:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        held = self.sessions.aggregates().total_bytes if self.sessions else 0
        avail = max(0, self.available - held)
        return combine(self.total, avail, None, None, None, 0, time.time(), time.monotonic())


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg["event"] == name]


@pytest.fixture
def fast() -> MemoryConfig:
    return MemoryConfig(monitoring_interval_sec=0.02)


@pytest.fixture
def monitors() -> Iterator[list[MemoryMonitor]]:
    made: list[MemoryMonitor] = []
    yield made
    for m in made:
        m.stop()


def started_in_v2_tree(tmp_path: Path, monitors: list[MemoryMonitor]) -> MemoryMonitor:
    """A started 50 Hz monitor reading a v2 fixture tree: 512 MiB used of a 2 GiB limit."""
    v2_tree(
        tmp_path,
        current=512 * MIB,
        inactive_file=0,
        limits={"/system.slice/app.service": str(2 * GIB)},
    )
    m = MemoryMonitor(MemoryConfig(monitoring_interval_sec=0.02), root=str(tmp_path))
    monitors.append(m)
    m.start()
    return m


# -- background thread --------------------------------------------------------------------


def test_thread_starts_stops_and_is_named(fast: MemoryConfig) -> None:
    s = Scripted(6 * GIB)
    m = MemoryMonitor(fast, sampler=s)
    assert not m.running and m.last_sample_timestamp == 0
    with m:
        m.start()  # idempotent
        names = [t.name for t in threading.enumerate()]
        assert names.count(THREAD_NAME) == 1
        assert all(t.daemon for t in threading.enumerate() if t.name == THREAD_NAME)
        wait_for(lambda: m.samples_total >= 3)
        assert m.last_sample_timestamp == pytest.approx(time.time(), abs=2)
    assert not m.running
    assert THREAD_NAME not in [t.name for t in threading.enumerate()]
    m.stop()  # idempotent


def test_background_monitoring_from_config_starts_on_its_own(
    monitors: list[MemoryMonitor],
) -> None:
    cfg = MemoryConfig(enable_background_monitoring=True, monitoring_interval_sec=0.02)
    m = MemoryMonitor(cfg, sampler=Scripted(6 * GIB))
    monitors.append(m)
    assert m.running
    wait_for(lambda: m.samples_total >= 2)


def test_a_failing_reading_is_counted_and_the_loop_goes_on(
    fast: MemoryConfig, monitors: list[MemoryMonitor], caplog: pytest.LogCaptureFixture
) -> None:
    s = Scripted(6 * GIB)
    m = MemoryMonitor(fast, sampler=s)
    monitors.append(m)
    m.start()
    wait_for(lambda: m.samples_total >= 2)
    s.fail = OSError(19, "No such device")
    wait_for(lambda: m.errors_total.get("sample", 0) >= 3)
    stale = m.last_sample_timestamp
    time.sleep(0.05)
    assert m.last_sample_timestamp == stale  # a stuck monitor shows as an old timestamp
    s.fail = None
    good = m.samples_total
    wait_for(lambda: m.samples_total > good + 2)
    assert m.running
    assert events(caplog, "monitor_error")[0]["where"] == "sample"


def test_an_unparseable_cgroup_file_mid_run(tmp_path: Path, monitors: list[MemoryMonitor]) -> None:
    m = started_in_v2_tree(tmp_path, monitors)
    wait_for(lambda: m.samples_total >= 2)
    current = next(tmp_path.rglob("memory.current"))
    current.write_text("garbage\n")
    wait_for(lambda: m.errors_total.get("sample", 0) >= 2)
    current.write_text(str(600 * MIB))
    wait_for(lambda: (m.last_reading or Reading(*[0] * 9)).used_bytes == 600 * MIB)
    assert m.running


# -- the ladder in the loop ---------------------------------------------------------------


def test_level_changes_are_logged_once_per_crossing(
    fast: MemoryConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = Scripted(int(0.5 * 8 * GIB))
    m = MemoryMonitor(fast, sampler=s)
    for used in (0.5, 0.851, 0.849, 0.852, 0.849, 0.91, 0.895, 0.5):
        s.available = int((1 - used) * s.total)
        m.sample()
    changes = [
        (e["previous_level"], e["pressure_level"]) for e in events(caplog, "memory_level_changed")
    ]
    assert changes == [("NORMAL", "WARNING"), ("WARNING", "CRITICAL"), ("CRITICAL", "NORMAL")]


def test_critical_runs_a_throttled_proactive_collection(
    fast: MemoryConfig, monitors: list[MemoryMonitor]
) -> None:
    from pathoai_memobs.gc_manager import GarbageCollectionManager

    gcm = GarbageCollectionManager()
    s = Scripted(700 * MIB)  # 91 % of 8 GiB used, above the floor
    m = MemoryMonitor(fast, sampler=s, gc_manager=gcm, proactive_gc_interval_s=60)
    monitors.append(m)
    m.start()
    wait_for(lambda: gcm.triggered["proactive"] >= 1)
    time.sleep(0.1)
    assert m.level is Level.CRITICAL
    assert gcm.triggered["proactive"] == 1  # once per crossing, then every 60 s


def test_no_proactive_collection_when_disabled(monitors: list[MemoryMonitor]) -> None:
    from pathoai_memobs.gc_manager import GarbageCollectionManager

    gcm = GarbageCollectionManager()
    cfg = MemoryConfig(monitoring_interval_sec=0.02, enable_proactive_gc=False)
    m = MemoryMonitor(cfg, sampler=Scripted(700 * MIB), gc_manager=gcm)
    monitors.append(m)
    m.start()
    wait_for(lambda: m.samples_total >= 5)
    assert gcm.triggered["proactive"] == 0


# -- emergency cleanup --------------------------------------------------------------------


def test_callbacks_run_in_priority_order_and_stop_once_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = Scripted(300 * MIB, total=2 * GIB)
    m = MemoryMonitor(MemoryConfig(), sampler=s)
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
    assert m.level is Level.NORMAL
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
    m._start_emergency("level")  # within the cooldown: nothing starts
    time.sleep(0.05)
    assert m.emergency_totals.runs == 1


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


def test_logs_render_as_json_lines(tmp_path: Path) -> None:
    import io

    from pathoai_memobs.logging import configure_logging

    buf = io.StringIO()
    handler = configure_logging("json", stream=buf)
    try:
        s = Scripted(450 * MIB)
        m = MemoryMonitor(MemoryConfig(), sampler=s)
        m.sample()
        logging.getLogger("other.library").warning("plain %s", "record")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    ours = next(x for x in lines if x["event"] == "memory_level_changed")
    assert ours["pressure_level"] == "EMERGENCY" and ours["level"] == "warning"
    assert ours["logger"] == "pathoai_memobs" and "timestamp" in ours
    assert any(x["event"] == "plain record" for x in lines)

"""The graduated ladder before anything is lost: bounded caches shrink at WARNING, idle
sessions spill in a worker thread at CRITICAL, an emergency cleanup empties the caches; a
spill refusal is counted and logged once per cause. Pure decisions first, then a real
monitor over scripted memory with real caches, sessions and spill files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.bounded_cache import BoundedCache, shares
from pathoai_memobs.pressure import Level, Thresholds, ladder_steps
from pathoai_memobs.spill_store import SpillStore

from .scripted import Scripted, events, wait_for

MIB = 1 << 20
GIB = 1 << 30


def test_caches_give_up_bytes_in_proportion_to_their_size_and_never_more() -> None:
    assert shares(300, [600, 300, 0]) == [200, 100, 0]
    assert shares(10, [3, 3, 3]) == [3, 3, 3]  # more than they hold: all of it
    assert shares(0, [5]) == [0] and shares(5, []) == [] and shares(5, [0, 0]) == [0, 0]
    assert sum(shares(7, [10, 10, 10])) >= 7  # rounded up, so the excess is covered


def test_each_rung_frees_what_lies_above_its_exit_point() -> None:
    t = Thresholds()  # 85 % / 90 %, a 2-point margin
    total = 100 * MIB
    assert ladder_steps(Level.NORMAL, 95 * MIB, total, t) == (0, 0)
    warning = ladder_steps(Level.WARNING, 86 * MIB, total, t)
    assert warning.spill_bytes == 0 and abs(warning.shrink_bytes - 3 * MIB) <= 1  # to 83 %
    critical = ladder_steps(Level.CRITICAL, 91 * MIB, total, t)
    assert abs(critical.shrink_bytes - 8 * MIB) <= 1 and abs(critical.spill_bytes - 3 * MIB) <= 1
    assert ladder_steps(Level.EMERGENCY, 80 * MIB, total, t) == (0, 0)  # nothing over


def test_a_bounded_cache_keeps_the_most_recent_within_its_bytes() -> None:
    cache: BoundedCache[str, np.ndarray] = BoundedCache(10, name="tiles")
    for key in "abc":
        assert cache.put(key, np.zeros(4 * MIB, np.uint8))
    assert list(cache._entries) == ["b", "c"] and cache.nbytes <= 10 * MIB  # "a" went
    assert cache.evictions["bound"] == 1 and cache.get("a") is None and cache.misses == 1
    assert cache.get("b") is not None  # "b" is now the most recent
    cache.put("d", np.zeros(4 * MIB, np.uint8))
    assert "c" not in cache and "b" in cache
    assert not cache.put("huge", np.zeros(11 * MIB, np.uint8)) and cache.too_large == 1
    assert len(cache) == 2  # a value larger than the bound evicts nothing
    assert cache.shrink(1) >= 4 * MIB and len(cache) == 1 and cache.evictions["pressure"] == 1
    assert cache.clear() >= 4 * MIB and len(cache) == 0 and cache.nbytes == 0
    assert "tiles" in repr(cache) and "MiB" in repr(cache)


def test_bad_cache_arguments_are_typed_errors() -> None:
    with pytest.raises(ValueError, match="name"):
        BoundedCache(10, name="Model Cache")  # a label value: a short identifier
    with pytest.raises(ValueError, match="max_mb"):
        BoundedCache(-1, name="m")
    with pytest.raises(TypeError, match="sizeof"):
        BoundedCache(10, name="m", sizeof=3)  # type: ignore[arg-type]
    cache: BoundedCache[str, object] = BoundedCache(10, name="m", sizeof=lambda v: -1)
    with pytest.raises(ValueError, match="sizeof"):
        cache.put("k", object())
    assert len(cache) == 0


def setting(tmp_path: Path, total: int = 8 * GIB) -> tuple[MemoryMonitor, SessionManager,
                                                            Scripted, list[float]]:  # fmt: skip
    now = [100.0]
    store = SpillStore(str(tmp_path / "spill"), max_bytes=GIB, encrypt=False)
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0], spill=store, spill_idle_s=10)
    s = Scripted(total, total=total)
    m = MemoryMonitor(MemoryConfig(), sampler=s, sessions=sessions, emergency_cooldown_s=0)
    return m, sessions, s, now


def at(m: MemoryMonitor, s: Scripted, used_ratio: float) -> None:
    s.available = int(s.total * (1 - used_ratio))
    m.tick()


def test_warning_shrinks_the_caches_and_leaves_sessions_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m, sessions, s, now = setting(tmp_path)
    tiles: BoundedCache[int, np.ndarray] = BoundedCache(1024, name="tiles", monitor=m)
    for i in range(100):
        tiles.put(i, np.zeros(MIB, np.uint8))
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.ones(64 * MIB, np.uint8))
    now[0] += 60
    caplog.set_level("INFO", logger="pathoai_memobs")
    at(m, s, 0.86)  # WARNING: 3 % of 8 GiB above the 83 % exit point, more than the cache
    assert m.level is Level.WARNING and len(tiles) == 0 and tiles.evictions["pressure"] == 100
    (shrunk,) = events(caplog, "caches_shrunk")
    assert shrunk["caches"] == {"tiles": tiles.evicted_bytes["pressure"]}
    assert 100 * MIB <= shrunk["freed_bytes"] < 101 * MIB  # the arrays and their headers
    assert shrunk["pressure_level"] == "WARNING"
    assert sessions.spilled_sessions == 0  # WARNING never touches sessions
    with pytest.raises(ValueError, match="registered already"):
        BoundedCache(10, name="tiles", monitor=m)
    assert m.caches == (tiles,) and "cache_tiles" in m.cleanup_callback_names


def test_critical_spills_idle_sessions_in_a_worker_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m, sessions, s, now = setting(tmp_path)
    sids = [sessions.create_session() for _ in range(2)]
    for sid in sids:
        sessions.update_session(sid, slide=np.ones(200 * MIB, np.uint8))
    now[0] += 60
    caplog.set_level("INFO", logger="pathoai_memobs")
    at(m, s, 0.905)  # CRITICAL: 0.5 % over 88 % is about 205 MiB: one session is not enough
    assert m.level is Level.CRITICAL
    wait_for(lambda: sessions.spilled_sessions == 2)
    wait_for(lambda: events(caplog, "sessions_spilled"))
    (spilled,) = events(caplog, "sessions_spilled")
    assert spilled["sessions"] == 2 and spilled["freed_bytes"] > 399 * MIB
    assert len(sessions) == 2 and sessions.removed_total("emergency") == 0
    data = sessions.get_session(sids[0])
    assert data is not None and int(data.data["slide"][-1]) == 1


def test_an_emergency_cleanup_empties_the_caches(tmp_path: Path) -> None:
    m, _, s, _ = setting(tmp_path)
    model: BoundedCache[str, bytes] = BoundedCache(512, name="models", monitor=m)
    model.put("resnet", b"w" * (8 * MIB))
    s.available = 300 * MIB  # under the 500 MiB floor
    run = m.run_emergency_cleanup("manual")
    assert run is not None and run.steps[0].name == "cache_models"  # before the sessions
    assert len(model) == 0 and model.evictions["pressure"] == 1


def test_a_refusal_is_counted_and_logged_once_per_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    store = SpillStore(str(tmp_path), max_bytes=20 * MIB, encrypt=False)
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0], spill=store, spill_idle_s=1)
    big = sessions.create_session()
    sessions.update_session(big, slide=np.ones(30 * MIB, np.uint8))  # over the 20 MiB budget
    now[0] += 10
    caplog.set_level("WARNING", logger="pathoai_memobs")
    for _ in range(5):  # the ladder tries again at every step
        assert sessions.spill_idle(1) == 0
    assert sessions.spill_refusals["budget"] == 1 and len(events(caplog, "spill_refused")) == 1
    assert events(caplog, "spill_refused")[0]["cause"] == "budget"
    sessions.delete_session(big)
    small = sessions.create_session()
    sessions.update_session(small, slide=np.ones(8 * MIB, np.uint8))
    now[0] += 10
    assert sessions.spill_idle(1) > 0  # it works again, so the next refusal is news
    again = sessions.create_session()
    sessions.update_session(again, slide=np.ones(30 * MIB, np.uint8))
    now[0] += 10
    assert sessions.spill_idle(1) == 0 and sessions.spill_refusals["budget"] == 2

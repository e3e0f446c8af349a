"""Spilling idle sessions: their large buffers go to disk and come back byte-identical, with
sharing as before, on get_session, use and update_session; a bad file removes the session
with reason spill_corrupt; a refusal leaves it in memory; freeing for new work spills
before it evicts. Real files, a real SessionManager and monitor."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.exceptions import SpillCorruptError
from pathoai_memobs.spill_plan import Spilled, spill_plan
from pathoai_memobs.spill_store import SpillStore

from .scripted import Scripted

MIB = 1 << 20
GIB = 1 << 30


def manager(tmp_path: Path, **kwargs: Any) -> tuple[SessionManager, list[float]]:
    now = [100.0]
    store = SpillStore(str(tmp_path / "spill"), max_bytes=kwargs.pop("max_bytes", GIB))
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0], spill=store,
                              spill_idle_s=10, **kwargs)  # fmt: skip
    return sessions, now


def digest(a: Any) -> str:
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest()


def slide_session(sessions: SessionManager) -> tuple[str, np.ndarray[Any, Any]]:
    sid = sessions.create_session()
    slide = np.random.default_rng(7).integers(0, 255, 9 * MIB, dtype=np.uint8)
    sessions.update_session(sid, slide=slide, same=slide, raw=b"r" * (5 * MIB), name="case-1")
    return sid, slide


def test_an_idle_session_goes_to_disk_and_comes_back_as_it_was(tmp_path: Path) -> None:
    sessions, now = manager(tmp_path)
    sid, slide = slide_session(sessions)
    want = digest(slide)
    held = sessions.total_bytes
    now[0] += 11
    freed = sessions.spill_idle(1)
    assert 14 * MIB - 4096 < freed <= 14 * MIB + 64  # the slide once, less the markers
    assert sessions.total_bytes == held - freed
    assert sessions.spill_store is not None and sessions.spill_store.spilled_bytes == 14 * MIB
    del slide
    data = sessions.get_session(sid)
    assert data is not None
    back = data.data
    assert digest(back["slide"]) == want and back["slide"] is back["same"]  # shared again
    assert back["raw"] == b"r" * (5 * MIB) and back["name"] == "case-1"
    assert abs(sessions.total_bytes - held) < 4096 and sessions.spill_store.spilled_bytes == 0
    now[0] += 11
    assert abs(sessions.spill_idle(1) - freed) < 4096  # it owns its memory: it may go again


def test_a_session_is_not_spilled_before_its_idle_age_or_while_pinned(tmp_path: Path) -> None:
    sessions, now = manager(tmp_path)
    sid, _ = slide_session(sessions)
    assert sessions.spill_idle(1) == 0  # just used
    now[0] += 11
    with sessions.use(sid):
        assert sessions.spill_idle(1) == 0  # a request works on it


def test_use_and_update_bring_a_spilled_session_back_first(tmp_path: Path) -> None:
    sessions, now = manager(tmp_path)
    sid, slide = slide_session(sessions)
    want = digest(slide)
    del slide
    now[0] += 11
    assert sessions.spill_idle(1) > 0
    with sessions.use(sid) as data:
        assert digest(data.data["slide"]) == want
    now[0] += 11
    assert sessions.spill_idle(1) > 0
    sessions.update_session(sid, result=b"done")
    assert not any(isinstance(v, Spilled) for v in sessions._sessions[sid].data.values())


def test_views_and_aliases_come_back_sharing_as_before(tmp_path: Path) -> None:
    sessions, now = manager(tmp_path)
    sid = sessions.create_session()
    base = np.arange(8 * MIB, dtype=np.uint8)
    tile, raw = base[MIB : 2 * MIB], bytes(6 * MIB)
    backwards = base.reshape(2048, 4096)[::-2, 100:200]  # strided, negative steps
    frozen = np.frombuffer(raw, np.uint8)[10:20]  # a read-only view over bytes
    sessions.update_session(sid, base=base, tile=tile, alias=tile, back=backwards,
                            frozen=frozen, small=np.ones(10))  # fmt: skip
    held = sessions.total_bytes
    now[0] += 11
    assert sessions.spill_idle(1) > held - MIB  # the 8 and 6 MiB buffers went, once each
    got = sessions.get_session(sid)
    assert got is not None
    d = got.data
    assert np.array_equal(d["base"], base) and np.array_equal(d["back"], backwards)
    assert d["tile"] is d["alias"] and d["tile"].base is d["base"]  # a view of it again
    assert np.shares_memory(d["back"], d["base"]) and d["back"].strides == backwards.strides
    d["base"][MIB] = 99
    assert d["tile"][0] == 99  # one buffer, as before
    assert bytes(d["frozen"]) == raw[10:20] and not d["frozen"].flags.writeable
    assert abs(sessions.total_bytes - held) < 4096  # charged as before: once per buffer


def test_tile_lists_come_back_as_views_and_other_holders_keep_a_buffer(tmp_path: Path) -> None:
    sessions, now = manager(tmp_path)
    sid = sessions.create_session()
    base = np.arange(8 * MIB, dtype=np.uint8).reshape(2048, 4096)
    tiles = [base[i : i + 256, j : j + 256] for i in (0, 256) for j in (0, 256)]
    sessions.update_session(sid, slide=base, tiles=tiles, pair=(base, base[:1]))
    now[0] += 11
    assert sessions.spill_idle(1) > 8 * MIB - 4096  # one file: the slide
    d = sessions.get_session(sid)
    assert d is not None and isinstance(d.data["tiles"], list) and isinstance(d.data["pair"], tuple)
    root = d.data["slide"].base  # the slide was a reshape: a view of one buffer, as before
    assert root is not None and all(t.base is root for t in d.data["tiles"])  # views again
    assert d.data["pair"][0] is d.data["slide"]
    assert all(np.array_equal(a, b) for a, b in zip(d.data["tiles"], tiles, strict=True))
    # a buffer that a dict also reaches stays: writing it would free nothing
    other = np.ones(8 * MIB, np.uint8)
    sessions.update_session(sid, other=other, meta={"tile": other[:MIB]})
    record = sessions._sessions[sid]
    planned = spill_plan(record.data, 4 * MIB, record.refs)
    assert [root is other for root, _ in planned] == [False]  # the slide only
    assert len(spill_plan({"base": other, "small": np.ones(10)}, 4 * MIB)) == 1


def test_a_damaged_file_removes_the_session_and_never_returns_data(tmp_path: Path) -> None:
    sessions, now = manager(tmp_path)
    removed: list[str] = []
    sessions.on_remove(lambda _sid, _data, reason: removed.append(reason))
    sid, _ = slide_session(sessions)
    now[0] += 11
    sessions.spill_idle(1)
    assert sessions.spill_store is not None
    for path in Path(sessions.spill_store.own).iterdir():
        if not path.name.startswith("."):
            path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(SpillCorruptError):
        sessions.get_session(sid)
    assert removed == ["spill_corrupt"] and sessions.get_session(sid) is None
    assert sessions.removed_total("spill_corrupt") == 1


def test_a_refused_spill_keeps_the_session_in_memory_and_is_counted(tmp_path: Path) -> None:
    sessions, now = manager(tmp_path, max_bytes=10 * MIB)  # the session needs 14
    slide_session(sessions)
    held = sessions.total_bytes
    now[0] += 11
    assert sessions.spill_idle(1) == 0 and sessions.total_bytes == held
    assert sessions.spill_refusals["budget"] == 1
    assert sessions.spill_store is not None and sessions.spill_store.drain()
    assert sessions.spill_store.spilled_bytes == 0
    assert not [p for p in Path(sessions.spill_store.own).iterdir() if p.name[0] != "."]


def test_deleting_a_spilled_session_removes_its_files(tmp_path: Path) -> None:
    sessions, now = manager(tmp_path)
    sid, _ = slide_session(sessions)
    now[0] += 11
    sessions.spill_idle(1)
    assert sessions.delete_session(sid)
    assert sessions.spill_store is not None and sessions.spill_store.drain()
    assert sessions.spill_store.spilled_bytes == 0


def test_freeing_for_new_work_spills_before_it_evicts(tmp_path: Path) -> None:
    """4 GiB, room kept for a 2000 MiB request: sessions may hold 1000 MiB (see
    test_session_budget.setting); two 400 MiB sessions and new work of 300."""
    now = [100.0]
    store = SpillStore(str(tmp_path), max_bytes=2 * GIB, encrypt=False)
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0], spill=store)
    s = Scripted(3500 * MIB, total=4 * GIB)
    s.sessions = sessions
    m = MemoryMonitor(MemoryConfig(), sampler=s, sessions=sessions, emergency_cooldown_s=60)
    m.gate.budget.keep_room_for(2000 * MIB)
    sids = []
    for _ in range(2):
        sid = sessions.create_session()
        sessions.update_session(sid, slide=np.ones(400 * MIB, np.uint8))
        sids.append(sid)
        now[0] += 10
    with m.reserve(300, new_work=True):
        pass
    assert sessions.removed_total("budget") == 0 and len(sessions) == 2  # nothing lost
    assert store.spilled_bytes == 400 * MIB
    data = sessions.get_session(sids[0])
    assert data is not None and int(data.data["slide"].sum()) == 400 * MIB


def test_the_config_turns_spilling_on(tmp_path: Path) -> None:
    config = MemoryConfig.from_env({"SESSION_SPILL_DIR": str(tmp_path / "s"),
                                    "SESSION_SPILL_MIN_BUFFER_MB": "8"})  # fmt: skip
    sessions = SessionManager.from_config(config)
    assert sessions.spill_store is not None and sessions.spill_min_bytes == 8 * MIB
    assert sessions.spill_store.encrypted and sessions.spill_idle_s == 30
    assert SessionManager.from_config(MemoryConfig()).spill_store is None


def test_what_is_on_disk_and_each_refusal_are_exported(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from pathoai_memobs.exporters.prometheus import instrument

    sessions, now = manager(tmp_path, max_bytes=20 * MIB)
    registry = CollectorRegistry()
    instrument(sessions=sessions, registry=registry)
    value = registry.get_sample_value
    slide_session(sessions)
    slide_session(sessions)
    now[0] += 11
    sessions.spill_idle(20 * MIB)  # the first fits the 20 MiB budget, the second does not
    assert value("pathoai_sessions_spilled") == 1
    assert value("pathoai_session_spilled_bytes") == 14 * MIB
    assert value("pathoai_session_spill_budget_bytes") == 20 * MIB
    assert value("pathoai_session_spill_refusals_total", {"cause": "budget"}) == 1
    assert value("pathoai_session_spill_refusals_total", {"cause": "disk_full"}) == 0
    free, size = (
        value("pathoai_session_spill_disk_free_bytes"),
        value("pathoai_session_spill_disk_size_bytes"),
    )
    assert free is not None and size is not None and 0 < free <= size
    spills = {"operation": "spill"}
    assert value("pathoai_session_spill_duration_seconds_count", spills) == 1
    assert (value("pathoai_session_spill_duration_seconds_sum", spills) or 0) > 0
    assert value("pathoai_session_spill_duration_seconds_count", {"operation": "restore"}) == 0
    for sid in list(sessions._sessions):  # the spilled one comes back: one restore timed
        sessions.get_session(sid)
    assert value("pathoai_session_spill_duration_seconds_count", {"operation": "restore"}) == 1
    for sid in list(sessions._sessions):
        sessions.delete_session(sid)
    assert value("pathoai_sessions_spilled") == 0 and value("pathoai_session_spilled_bytes") == 0


def test_a_session_updated_while_it_is_written_is_written_again(tmp_path: Path) -> None:
    """Not left for eviction: the first files go, the session is planned and written anew."""
    now = [100.0]
    updates: list[str] = []

    class Racing(SpillStore):
        def spill(self, value: Any, stale: Any = None) -> Any:
            ref = super().spill(value, stale)
            if not updates:  # a request updates the session while its buffer is on its way
                updates.append("result")
                sessions.update_session(sid, result=b"r")
            return ref

    store = Racing(str(tmp_path), max_bytes=GIB)
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0], spill=store, spill_idle_s=1)
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.ones(8 * MIB, np.uint8))
    now[0] += 2
    assert sessions.spill_idle(1) > 7 * MIB and updates == ["result"]
    assert store.spilled_bytes == 8 * MIB  # the first write discarded, the second kept
    data = sessions.get_session(sid)
    assert data is not None and data.data["result"] == b"r" and data.data["slide"].sum() == 8 * MIB


def test_a_spill_is_given_up_at_once_when_its_session_goes_midway(tmp_path: Path) -> None:
    """A session deleted (or pinned) while its buffer is written: the write stops at the
    next 4 MiB chunk, nothing stays on disk, and it is not counted as a refusal."""
    now = [100.0]
    looks: list[int] = []

    class Watching(SpillStore):
        def spill(self, value: Any, stale: Any = None) -> Any:
            def watched() -> bool:
                looks.append(1)
                if len(looks) == 2:  # the client ends its session two chunks in
                    sessions.delete_session(sid)
                return bool(stale())

            return super().spill(value, watched)

    store = Watching(str(tmp_path), max_bytes=GIB)
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0], spill=store, spill_idle_s=1)
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.ones(64 * MIB, np.uint8))  # 16 chunks
    now[0] += 2
    assert sessions.spill_idle(1) == 0 and len(looks) == 2  # not the other 14 chunks
    assert store.drain() and store.spilled_bytes == 0 and store.disk_bytes == 0
    assert [p.name for p in Path(store.own).iterdir()] == [".owner.lock"]  # no file, no .tmp
    assert sum(sessions.spill_refusals.values()) == 0


class _Storage:
    def __init__(self, array: np.ndarray[Any, Any]) -> None:
        self._array = array

    def nbytes(self) -> int:
        return int(self._array.nbytes)

    def data_ptr(self) -> int:
        return int(self._array.__array_interface__["data"][0])


class Tensor:
    """A stand-in for a CPU ``torch.Tensor`` (torch itself is a 900 MB install, not in CI):
    the methods the spill path calls, with torch's semantics (``numpy()`` shares memory)."""

    __module__ = "torch"

    def __init__(self, array: np.ndarray[Any, Any]) -> None:
        self._array, self.device, self.requires_grad = array, type("D", (), {"type": "cpu"}), False
        self.nbytes = array.nbytes

    def numpy(self) -> np.ndarray[Any, Any]:
        return self._array.view()

    def storage_offset(self) -> int:
        return 0

    def is_contiguous(self) -> bool:
        return True

    def untyped_storage(self) -> _Storage:
        return _Storage(self._array)


def test_a_cpu_tensor_is_spilled_once_and_comes_back_a_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    torch = types.ModuleType("torch")
    torch.from_numpy = Tensor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)  # as if the app had imported torch
    sessions, now = manager(tmp_path)
    sid = sessions.create_session()
    weights = Tensor(np.arange(2 * MIB, dtype=np.float32))
    sessions.update_session(sid, weights=weights, same=weights)
    now[0] += 11
    assert sessions.spill_idle(1) > 8 * MIB - 4096
    assert sessions.spill_store is not None and sessions.spill_store.spilled_bytes == 8 * MIB
    got = sessions.get_session(sid)
    assert got is not None and isinstance(got.data["weights"], Tensor)
    assert got.data["weights"] is got.data["same"]
    assert np.array_equal(got.data["weights"].numpy(), np.arange(2 * MIB, dtype=np.float32))


def test_the_order_spills_idle_sessions_first_then_waiting_ones_latest_first() -> None:
    """eviction_order, pure: idle sessions least recently used first; with waiting=True
    (to spill only) also those requests wait for, after every idle one, the latest to
    arrive first; never the freeing request's own (keep), a pinned one, or one on disk."""
    from pathoai_memobs.session_accounting import SessionRecord, eviction_order

    def record(sid: str, last: float, *, waiters: int = 0, pins: int = 0) -> SessionRecord:
        r = SessionRecord(sid, sid, last, last)
        r.host, r.waiters, r.pins = 100, waiters, pins
        return r

    sessions = [record("idle-new", 8.0), record("idle-old", 2.0),
                record("wait-early", 5.0, waiters=1), record("wait-late", 7.0, waiters=1),
                record("mine", 1.0, waiters=1), record("pinned", 0.0, pins=1)]  # fmt: skip
    order = eviction_order(sessions, 10_000, now=10.0, waiting=True, keep="mine")
    assert [s.sid for s in order] == ["idle-old", "idle-new", "wait-late", "wait-early"]
    evict = eviction_order(sessions, 10_000, now=10.0)  # removal: never a waited-for one
    assert [s.sid for s in evict] == ["idle-old", "idle-new"]
    assert [s.sid for s in eviction_order(sessions, 150, now=10.0)] == ["idle-old", "idle-new"]
    assert eviction_order(sessions, 10_000, now=10.0, min_idle_s=5.0) == [sessions[1]]

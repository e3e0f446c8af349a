"""SessionManager: ids, limits, expiry, pins, hooks, sweeper, aggregates, threads."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathoai_memobs import (
    MemoryConfig,
    SessionManager,
    SessionMemoryLimitError,
    SessionNotFoundError,
)
from pathoai_memobs.session_manager import fingerprint

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manager(**kw: Any) -> tuple[SessionManager, Clock]:
    clock = Clock()
    return SessionManager(clock=clock, **kw), clock


def test_ids_are_unguessable_and_unique() -> None:
    m = SessionManager()
    ids = {m.create_session() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 43 for i in ids)  # 32 random bytes, base64url


def test_from_config_and_bad_arguments() -> None:
    m = SessionManager.from_config(
        MemoryConfig(session_timeout_minutes=5, max_session_memory_gb=0.5)
    )
    assert m.timeout_s == 300 and m.max_memory_bytes == 512 * MIB
    for bad in (
        {"timeout_minutes": 0},
        {"max_memory_gb": -1},
        {"max_memory_gb": float("nan")},
        {"timeout_minutes": "30"},
        {"top_k": -1},
    ):
        with pytest.raises(ValueError):
            SessionManager(**bad)  # type: ignore[arg-type]


def test_update_merges_and_get_returns_a_live_read_only_view() -> None:
    m, _ = manager()
    sid = m.create_session()
    m.update_session(sid, a=1)
    m.update_session(sid, b="x")
    s = m.get_session(sid)
    assert s is not None and dict(s.data) == {"a": 1, "b": "x"}
    with pytest.raises(TypeError):
        s.data["c"] = 3  # type: ignore[index]
    m.update_session(sid, c=3)
    assert s.data["c"] == 3  # a live view
    assert s.session_id == sid and s.fingerprint == fingerprint(sid)


def test_unknown_id_raises_keyerror_without_echoing_the_id() -> None:
    m, _ = manager()
    with pytest.raises(KeyError) as info:
        m.update_session("secret-id-123", a=1)
    assert isinstance(info.value, SessionNotFoundError)
    assert "secret-id-123" not in str(info.value)
    assert m.get_session("nope") is None
    assert m.delete_session("nope") is False


def test_limit_is_enforced_atomically() -> None:
    m, _ = manager(max_memory_gb=64 / 1024)  # 64 MiB
    sid = m.create_session()
    small = np.ones(10 * MIB, np.uint8)
    m.update_session(sid, small=small, note="kept")
    before = m.get_session(sid)
    assert before is not None
    with pytest.raises(SessionMemoryLimitError) as info:
        m.update_session(sid, big=np.ones(60 * MIB, np.uint8), note="changed")
    err = info.value
    assert err.limit_bytes == 64 * MIB and err.needed_bytes > 64 * MIB
    assert str(err.limit_bytes) in str(err) and str(err.needed_bytes) in str(err)
    after = m.get_session(sid)
    assert after is not None
    assert dict(after.data) == {"small": small, "note": "kept"}
    assert after.memory_bytes == before.memory_bytes
    assert m.aggregates().total_bytes == before.memory_bytes
    # Replacing the big key frees room: the same total now fits.
    m.update_session(sid, small=np.ones(50 * MIB, np.uint8))


def test_expiry_with_an_injectable_clock() -> None:
    m, clock = manager(timeout_minutes=30)
    old, fresh = m.create_session(), m.create_session()
    clock.now += 29 * 60
    assert m.get_session(fresh) is not None  # refreshes last access
    clock.now += 2 * 60  # old idle 31 min, fresh 2 min
    assert m.get_session(old) is None  # never returned, even before a sweep
    with pytest.raises(SessionNotFoundError):
        m.update_session(old, a=1)
    assert m.cleanup_inactive_sessions() == 0  # old was already removed on access
    clock.now += 31 * 60
    assert m.cleanup_inactive_sessions() == 1
    assert len(m) == 0
    agg = m.aggregates()
    assert agg.removed_total == {"timeout": 2} and agg.created_total == 2


def test_pinned_sessions_survive_cleanup_and_eviction() -> None:
    m, clock = manager(timeout_minutes=1)
    pinned, idle = m.create_session(), m.create_session()
    m.update_session(idle, img=np.ones(MIB, np.uint8))
    with m.use(pinned) as view:
        assert view.session_id == pinned
        clock.now += 3600
        assert m.cleanup_inactive_sessions() == 1  # only idle
        assert m.evict_least_recently_used(10**12) == 0
        assert m.get_session(pinned) is not None
    clock.now += 30
    assert m.get_session(pinned) is not None  # last access refreshed when unpinned
    with pytest.raises(SessionNotFoundError), m.use("missing"):
        pass


def test_hooks_run_on_every_removal_path_and_failures_do_not_stop_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m, clock = manager(timeout_minutes=1)
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def failing(sid: str, data: Any, reason: str) -> None:
        raise RuntimeError("hook broke")

    m.on_remove(failing)
    m.on_remove(lambda sid, data, reason: seen.append((sid, reason, dict(data))))
    a, b, c, d = (m.create_session() for _ in range(4))
    m.update_session(a, x=1)
    m.delete_session(a)
    clock.now += 120
    m.get_session(b)  # expired on access
    m.cleanup_inactive_sessions()  # c and d by timeout
    e = m.create_session()
    m.evict_least_recently_used(1)
    reasons = {sid: reason for sid, reason, _ in seen}
    assert reasons == {a: "explicit", b: "timeout", c: "timeout", d: "timeout", e: "emergency"}
    assert seen[0][2] == {"x": 1}
    assert m.aggregates().hook_failures_total == 5
    text = caplog.text
    for sid in (a, b, c, d, e):
        assert sid not in text  # ids never reach a log line


def test_eviction_is_least_recently_used_first() -> None:
    m, clock = manager()
    ids = []
    for _ in range(3):
        sid = m.create_session()
        m.update_session(sid, img=np.ones(4 * MIB, np.uint8))
        ids.append(sid)
        clock.now += 1
    m.get_session(ids[0])  # now the most recent
    freed = m.evict_least_recently_used(5 * MIB)
    assert freed >= 8 * MIB
    assert m.get_session(ids[0]) is not None
    assert m.get_session(ids[1]) is None and m.get_session(ids[2]) is None


def test_background_sweeper_removes_expired_sessions() -> None:
    clock = Clock()
    m = SessionManager(timeout_minutes=1, clock=clock)
    m.create_session()
    clock.now += 120
    m.start_sweeper(interval_s=0.05)
    try:
        names = [t.name for t in threading.enumerate()]
        assert "pathoai-session-sweeper" in names
        deadline = time.monotonic() + 5
        while len(m) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(m) == 0
    finally:
        m.stop_sweeper()
    assert "pathoai-session-sweeper" not in [t.name for t in threading.enumerate()]


def test_aggregates_name_sessions_by_fingerprint_only() -> None:
    m, _ = manager(top_k=2)
    ids = []
    for mib in (1, 3, 2):
        sid = m.create_session()
        m.update_session(sid, img=np.ones(mib * MIB, np.uint8))
        ids.append(sid)
    agg = m.aggregates()
    assert agg.active == 3
    assert [fp for fp, _ in agg.top] == [fingerprint(ids[1]), fingerprint(ids[2])]
    assert agg.largest_bytes == agg.top[0][1] > 3 * MIB
    assert sum(agg.size_buckets) == 3
    assert agg.total_bytes == sum(m.get_session(s).memory_bytes for s in ids)  # type: ignore[union-attr]
    blob = repr(agg)
    assert not any(sid in blob for sid in ids)
    assert SessionManager(top_k=0).aggregates().top == ()


def test_sixteen_threads_of_mixed_operations_keep_exact_totals() -> None:
    m = SessionManager(max_memory_gb=1)
    shared_arrays = [np.ones(n * 1024, np.uint8) for n in range(1, 9)]
    errors: list[BaseException] = []
    live: list[str] = [m.create_session() for _ in range(32)]
    live_lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(10_000):
                op = rng.random()
                with live_lock:
                    sid = rng.choice(live) if live else None
                if op < 0.05:
                    new = m.create_session()
                    with live_lock:
                        live.append(new)
                elif sid is None:
                    continue
                elif op < 0.6:
                    arr = rng.choice(shared_arrays)
                    value: Any = arr[: rng.randrange(1, len(arr))] if rng.random() < 0.5 else arr
                    update = {f"k{rng.randrange(6)}": value, "r": [rng.random()] * rng.randrange(5)}
                    with contextlib.suppress(SessionNotFoundError):
                        m.update_session(sid, **update)
                elif op < 0.9:
                    m.get_session(sid)
                else:
                    m.delete_session(sid)
                    with live_lock:
                        if sid in live:
                            live.remove(sid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert m.aggregates().total_bytes == m.recount_from_scratch()
    assert sum(m.aggregates().size_buckets) == len(m)


ACCURACY = textwrap.dedent("""
    import json, tracemalloc
    import numpy as np
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    image = np.random.default_rng(0).integers(0, 255, (4096, 4096, 3), dtype=np.uint8)
    tiles = [image[y:y + 256, x:x + 256] for y in range(0, 4096, 256) for x in range(0, 4096, 256)]
    results = [{"tile": i, "score": i / 7, "label": f"class-{i % 5}"} for i in range(10_000)]
    truth = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    from pathoai_memobs import SessionManager
    m = SessionManager()
    sid = m.create_session()
    m.update_session(sid, image=image, tiles=tiles, results=results)
    print(json.dumps({"truth": truth, "ours": m.get_session(sid).memory_bytes}))
""")


def test_accounting_is_within_two_percent_of_tracemalloc() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ACCURACY], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    r = json.loads(out)
    assert abs(r["ours"] - r["truth"]) <= 0.02 * r["truth"], r


def test_no_session_id_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    m, clock = manager(timeout_minutes=1)
    sid = m.create_session()
    m.update_session(sid, a=np.ones(10))
    clock.now += 120
    m.cleanup_inactive_sessions()
    assert "session_removed" in caplog.text
    assert sid not in caplog.text


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["new", "grow", "shrink", "delete"]), st.integers(0, 30)),
        max_size=80,
    ),
    st.integers(0, 4),
)
def test_top_k_tracked_incrementally_equals_a_full_ranking(
    ops: list[tuple[str, int]], k: int
) -> None:
    m = SessionManager(top_k=k)
    ids: list[str] = []
    for op, n in ops:
        if op == "new" or not ids:
            ids.append(m.create_session())
            continue
        sid = ids[n % len(ids)]
        if op == "delete":
            m.delete_session(sid)
            ids.remove(sid)
        else:
            m.update_session(sid, blob=bytes((n + 1) * 1000 if op == "grow" else n * 10))
        agg = m.aggregates()
        sizes = sorted(((s.memory_bytes for s in map(m.get_session, ids) if s)), reverse=True)
        assert [b for _, b in agg.top] == sizes[:k]
        assert agg.largest_bytes == (sizes[0] if sizes else 0)


def test_use_on_an_expired_session_removes_it_and_runs_its_hooks() -> None:
    m, clock = manager(timeout_minutes=1)
    seen: list[str] = []
    m.on_remove(lambda sid, data, reason: seen.append(reason))
    sid = m.create_session()
    clock.now += 120
    with pytest.raises(SessionNotFoundError), m.use(sid):
        pass
    assert seen == ["timeout"] and len(m) == 0


def test_a_session_id_never_shows_in_a_repr() -> None:
    sessions = SessionManager()
    sid = sessions.create_session()
    view = sessions.get_session(sid)
    assert view is not None and view.session_id == sid
    assert sid not in repr(view) and view.fingerprint in repr(view)


def test_a_hook_exception_holding_the_id_never_reaches_a_log(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from pathoai_memobs.logging import configure_logging

    caplog.set_level(logging.INFO)
    handler = configure_logging("json")
    cache: dict[str, object] = {}
    sessions = SessionManager()
    sessions.on_remove(lambda sid, data, reason: cache.pop(sid))  # KeyError(sid)
    ids = [sessions.create_session() for _ in range(30)]
    try:
        for sid in ids:
            sessions.delete_session(sid)
    finally:
        logging.getLogger().removeHandler(handler)
    text = caplog.text + capfd.readouterr().err + repr([r.__dict__ for r in caplog.records])
    assert all(sid not in text for sid in ids)
    failed = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    failed = [m for m in failed if m["event"] == "session_removal_hook_failed"]
    assert len(failed) == 30 and failed[0]["error"] == "KeyError"
    assert "test_sessions.py" in failed[0]["where"]  # where it was raised, not what it said


def test_an_interrupt_in_one_hook_lets_every_other_hook_run_first() -> None:
    now = [0.0]
    sessions = SessionManager(timeout_minutes=1, clock=lambda: now[0])
    ids = [sessions.create_session() for _ in range(5)]
    hooked: list[str] = []

    def hook(sid: str, data: object, reason: str) -> None:
        hooked.append(sid)
        if len(hooked) == 1:
            raise KeyboardInterrupt

    sessions.on_remove(hook)
    sessions.on_remove(lambda sid, data, reason: hooked.append("second:" + sid))
    now[0] = 120.0
    with pytest.raises(KeyboardInterrupt):
        sessions.cleanup_inactive_sessions()
    assert sorted(h for h in hooked if not h.startswith("second:")) == sorted(ids)
    assert len([h for h in hooked if h.startswith("second:")]) == 5
    assert len(sessions) == 0


@pytest.mark.parametrize(
    ("needed", "reason"),
    [(math.nan, "emergency"), (1.5, "emergency"), (-1, "emergency"), (True, "emergency"),
     (1, None), (1, "whatever"), (1, 5)],
)  # fmt: skip
def test_bad_eviction_arguments_evict_nothing(needed: object, reason: object) -> None:
    sessions = SessionManager()
    for _ in range(3):
        sessions.create_session()
    with pytest.raises(ValueError):
        sessions.evict_least_recently_used(needed, reason=reason)  # type: ignore[arg-type]
    assert len(sessions) == 3

"""Bringing spilled sessions back: admitted through the monitor's gate like any request (a
restore that does not fit waits, then refuses, and the session stays safe on disk), off the
event loop in the ASGI middleware, and on reads through a SessionData taken before the
spill. Real files, a real SessionManager, monitor and Starlette app."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pathoai_memobs import InsufficientMemoryError, MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.integrations.asgi import MemoryAdmissionMiddleware
from pathoai_memobs.spill_plan import Spilled
from pathoai_memobs.spill_store import SpillStore

from .scripted import Scripted, wait_for

MIB = 1 << 20
GIB = 1 << 30


def setting(tmp_path: Path, available: int) -> tuple[MemoryMonitor, SessionManager, Scripted,
                                                       list[float]]:  # fmt: skip
    """4 GiB scripted memory that session bytes use up; spilling on; a fake session clock."""
    now = [100.0]
    store = SpillStore(str(tmp_path / "spill"), max_bytes=GIB, encrypt=False)
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0], spill=store, spill_idle_s=10)
    s = Scripted(available, total=4 * GIB)
    s.sessions = sessions
    m = MemoryMonitor(MemoryConfig(), sampler=s, sessions=sessions, emergency_cooldown_s=60)
    return m, sessions, s, now


def spilled_slide(sessions: SessionManager, now: list[float], mb: int = 300) -> str:
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.full(mb * MIB, 7, np.uint8), name="case-1")
    now[0] += 60
    assert sessions.spill_idle(1) > (mb - 1) * MIB and sessions.spilled_sessions == 1
    return sid


def test_a_restore_that_does_not_fit_waits_then_refuses_and_loses_nothing(
    tmp_path: Path,
) -> None:
    m, sessions, s, now = setting(tmp_path, 1000 * MIB)
    sid = spilled_slide(sessions, now)
    assert sessions.restore_gate is m.gate  # the monitor wires its admission in
    sessions.restore_wait_s = 0.3
    s.available = 700 * MIB  # 300 MiB more would leave 400: under the 500 MiB floor
    rejected = m.requests_rejected_total
    with pytest.raises(InsufficientMemoryError) as refused:
        sessions.get_session(sid)
    assert refused.value.retry_after_s and refused.value.retry_after_s >= 1
    assert m.requests_rejected_total == rejected + 1  # refused like any request, and counted
    assert sessions.spilled_sessions == 1 and len(sessions) == 1  # still safe on disk
    s.available = 1000 * MIB  # memory came back: the same read now restores
    data = sessions.get_session(sid)
    assert data is not None and int(data.data["slide"][-1]) == 7
    assert sessions.spilled_sessions == 0 and m.reserved_bytes == 0  # the hold ended


def test_a_waiting_restore_is_admitted_when_memory_is_released(tmp_path: Path) -> None:
    m, sessions, s, now = setting(tmp_path, 1000 * MIB)
    sid = spilled_slide(sessions, now)
    sessions.restore_wait_s = 5.0
    s.available = 700 * MIB
    threading.Timer(0.3, lambda: setattr(s, "available", 1000 * MIB)).start()
    with sessions.use(sid) as data:  # waits in line, then reads back while pinned
        assert int(data.data["slide"][0]) == 7 and data.data["name"] == "case-1"
    waits = m.admission.waits
    assert sum(waits.buckets) == 1 and waits.timeouts == 0 and waits.sum_s >= 0.25


def test_a_view_taken_before_the_spill_reads_the_data_back(tmp_path: Path) -> None:
    _, sessions, _, now = setting(tmp_path, 3 * GIB)
    sid = sessions.create_session()
    slide = np.arange(8 * MIB, dtype=np.uint8)
    sessions.update_session(sid, slide=slide)
    view = sessions.get_session(sid)
    assert view is not None
    now[0] += 60
    assert sessions.spill_idle(1) > 0
    assert isinstance(dict.__getitem__(view.data._data, "slide"), Spilled)  # type: ignore[attr-defined]
    back = view.data["slide"]  # never the placeholder: the session comes back first
    assert isinstance(back, np.ndarray) and np.array_equal(back, slide)
    assert sessions.spilled_sessions == 0 and sid not in repr(view) and "slide" in view.data


def app_over(m: MemoryMonitor, sessions: SessionManager) -> Any:
    def analyze(request: Request) -> JSONResponse:
        data = sessions.get_session(request.path_params["sid"])  # restored already: no wait
        assert data is not None
        return JSONResponse({"sum": int(data.data["slide"][:1000].sum())})

    app = Starlette(routes=[Route("/analyze/{sid}", analyze, methods=["POST"])])
    app.add_middleware(
        MemoryAdmissionMiddleware, monitor=m, routes={"POST /analyze/*": 100}, wait_s=0.2,
        session=lambda scope: scope["path"].rsplit("/", 1)[-1],
    )  # fmt: skip
    return app


def test_the_asgi_middleware_restores_off_the_loop_or_answers_503(tmp_path: Path) -> None:
    m, sessions, s, now = setting(tmp_path, 1000 * MIB)
    sid = spilled_slide(sessions, now)
    sessions.restore_wait_s = 0.2
    reads: list[str] = []
    original = sessions._read_in

    def tracked(*args: Any) -> None:
        try:
            asyncio.get_running_loop()
            reads.append("event loop")
        except RuntimeError:  # no loop runs in this thread: a worker
            reads.append("worker thread")
        original(*args)

    sessions._read_in = tracked  # type: ignore[method-assign]
    with TestClient(app_over(m, sessions)) as client:
        s.available = 700 * MIB
        refused = client.post(f"/analyze/{sid}")
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert sid not in refused.text and sessions.spilled_sessions == 1
        s.available = 1200 * MIB
        ok = client.post(f"/analyze/{sid}")
        assert ok.status_code == 200 and ok.json()["sum"] == 7000
    assert reads == ["worker thread"]  # the disk is read off the event loop
    assert sessions.spilled_sessions == 0 and m.reserved_bytes == 0


def test_a_damaged_spill_file_answers_404_session_lost_and_runs_the_hooks(
    tmp_path: Path,
) -> None:
    m, sessions, _, now = setting(tmp_path, 2 * GIB)
    sid = spilled_slide(sessions, now, mb=8)
    reasons: list[str] = []
    sessions.on_remove(lambda _sid, _data, reason: reasons.append(reason))
    store = sessions.spill_store
    assert store is not None
    (path,) = [p for p in Path(store.own).iterdir() if not p.name.startswith(".")]
    with open(path, "r+b") as f:  # one byte altered on disk
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 1]))
    with TestClient(app_over(m, sessions)) as client:
        lost = client.post(f"/analyze/{sid}")
        assert lost.status_code == 404 and lost.json()["error"] == "session_lost"
        assert sid not in lost.text
        assert client.post(f"/analyze/{sid}").json()["error"] == "session_not_found"
    assert reasons == ["spill_corrupt"] and len(sessions) == 0


def test_a_request_waiting_in_line_lets_its_session_be_spilled_and_books_its_restore(
    tmp_path: Path,
) -> None:
    """With nothing in flight to release memory, the first in line may spill the session
    of a request that only waits behind it (kept, never evicted); that request, once
    admitted, gets it back inside its own reservation, not by queueing again. Without this,
    requests waiting on resident sessions hold the memory the first in line needs until
    every wait runs out (what gunicorn's workers did, each with its own line)."""
    m, sessions, _, now = setting(tmp_path, 1500 * MIB)
    a, b = sessions.create_session(), sessions.create_session()
    sessions.update_session(a, slide=np.full(300 * MIB, 7, np.uint8))
    sessions.update_session(b, slide=np.full(300 * MIB, 8, np.uint8))
    removed: list[str] = []
    sessions.on_remove(lambda _sid, _data, reason: removed.append(reason))
    seen: dict[str, object] = {}
    head_in, head_go = threading.Event(), threading.Event()

    def head() -> None:  # 900 MiB available: 600 more goes under the floor
        with m.reserve(600, wait_s=5, session=a):
            seen["head spilled"] = sessions.spilled_sessions
            head_in.set()
            head_go.wait(5)

    def behind() -> None:
        with m.reserve(600, wait_s=5, session=b):
            data = sessions.get_session(b)
            assert data is not None
            seen["behind"] = (int(data.data["slide"][-1]), m.reserved_bytes)

    threads = [threading.Thread(target=head), threading.Thread(target=behind)]
    threads[0].start()
    wait_for(lambda: m.admission.queue_length == 1)
    threads[1].start()
    wait_for(lambda: m.admission.queue_length == 2)
    time.sleep(0.3)
    assert not head_in.is_set() and sessions.spilled_sessions == 0  # nothing idle yet
    now[0] += 5  # both sessions idle a while (on the session clock): b's may go now
    assert head_in.wait(5), "the first in line could not free the waiting one's session"
    assert seen["head spilled"] == 1 and removed == []  # b's, kept on disk
    head_go.set()
    threads[0].join(10)
    now[0] += 5  # a is idle now: b's request spills it to bring b back
    threads[1].join(10)
    assert seen["behind"] == (8, 600 * MIB)  # back in its hold, the restore's bytes given back
    assert m.reserved_bytes == 0 and removed == [] and len(sessions) == 2


def test_a_session_read_back_and_spilled_again_unchanged_costs_no_second_write(
    tmp_path: Path,
) -> None:
    m, sessions, _, now = setting(tmp_path, 3 * GIB)
    sid = spilled_slide(sessions, now, mb=64)
    store = sessions.spill_store
    assert store is not None
    data = sessions.get_session(sid)  # a read (a result fetched): the slide comes back
    assert data is not None and int(data.data["slide"][0]) == 7 and store.reused == 0
    sessions.update_session(sid, result=1)  # a small key changes; the slide does not
    del data
    now[0] += 60

    def spills_timed() -> int:
        return sum(sessions.spill_durations.snapshot()["spill"][0])

    timed = spills_timed()
    assert sessions.spill_idle(1) > 63 * MIB and store.reused == 1  # its file, taken back
    assert spills_timed() == timed  # nothing written: not timed as a spill
    data = sessions.get_session(sid)
    assert data is not None and data.data["result"] == 1
    data.data["slide"][5] = 8  # changed in place: the next spill must write it
    del data
    now[0] += 60
    assert sessions.spill_idle(1) > 63 * MIB and store.reused == 1
    assert spills_timed() == timed + 1  # written anew, and timed
    back = sessions.get_session(sid)
    assert back is not None and int(back.data["slide"][5]) == 8
    m.stop()

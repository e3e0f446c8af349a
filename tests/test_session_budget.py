"""The session budget: sessions may not crowd out the largest request. Pure sums, the
baseline estimate, the gate holding new work aside (and letting requests for existing
sessions pass it), and the middleware pinning a request's session from its arrival."""

from __future__ import annotations

import threading
import time
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
from pathoai_memobs.reading import combine
from pathoai_memobs.session_budget import SessionBudget, budget_bytes, over_budget

from .scripted import Scripted, wait_for

MIB = 1 << 20
GIB = 1 << 30


def reading(total: int, available: int) -> object:
    return combine(total, available, None, None, None, 0, time.time(), time.monotonic())


def test_the_budget_leaves_the_floor_the_largest_request_and_the_rest() -> None:
    assert budget_bytes(2048 * MIB, 500 * MIB, 700 * MIB, 340 * MIB) == 508 * MIB
    assert budget_bytes(GIB, 500 * MIB, 700 * MIB, 100 * MIB) == 0  # nothing left: none
    assert over_budget(300 * MIB, 320 * MIB, 508 * MIB) == 112 * MIB
    assert over_budget(100 * MIB, 320 * MIB, 508 * MIB) == 0


def test_the_baseline_is_read_while_nothing_is_reserved() -> None:
    b = SessionBudget()
    assert not b.active
    b.keep_room_for(700 * MIB)
    b.keep_room_for(300 * MIB)  # the largest declared wins
    assert b.active and b.largest_bytes == 700 * MIB
    total = 2048 * MIB
    # first look, a request in flight: working set less sessions and reservations
    assert b.baseline(reading(total, 1000 * MIB), 400 * MIB, 300 * MIB) == 348 * MIB  # type: ignore[arg-type]
    # nothing reserved: the rest of the process, remembered
    assert b.baseline(reading(total, 1200 * MIB), 500 * MIB, 0) == 348 * MIB  # type: ignore[arg-type]
    # in flight again: a request's allocations do not inflate it
    assert b.baseline(reading(total, 600 * MIB), 500 * MIB, 700 * MIB) == 348 * MIB  # type: ignore[arg-type]
    assert b.bytes(reading(total, 600 * MIB), 500 * MIB, 500 * MIB, 700 * MIB) == 500 * MIB  # type: ignore[arg-type]


def setting() -> tuple[MemoryMonitor, SessionManager, list[float]]:
    """4 GiB, 3500 MiB available before sessions (596 MiB of rest); room kept for a 2000
    MiB request: sessions may hold 4096 - 500 - 2000 - 596 = 1000 MiB."""
    now = [100.0]
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0])
    s = Scripted(3500 * MIB, total=4 * GIB)
    s.sessions = sessions
    m = MemoryMonitor(MemoryConfig(), sampler=s, sessions=sessions, emergency_cooldown_s=60)
    m.gate.budget.keep_room_for(2000 * MIB)
    return m, sessions, now


def filled(sessions: SessionManager, mb: int) -> str:
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.ones(mb * MIB, np.uint8))
    return sid


def test_new_work_frees_least_recently_used_sessions_to_fit_the_budget() -> None:
    m, sessions, now = setting()
    old, recent = filled(sessions, 400), None
    now[0] += 10
    recent = filled(sessions, 400)
    now[0] += 10
    with m.reserve(300):  # not new work: the budget does not apply
        pass
    assert len(sessions) == 2
    with m.reserve(300, new_work=True):  # 800 + 300 > 1000: the oldest goes
        pass
    assert sessions.get_session(old) is None and sessions.get_session(recent) is not None
    assert sessions.removed_total("budget") == 1


def test_the_budget_is_exported_in_bytes_and_absent_while_off() -> None:
    from prometheus_client import CollectorRegistry

    from pathoai_memobs.exporters.prometheus import instrument

    registry = CollectorRegistry()
    sessions = SessionManager(max_memory_gb=1)
    s = Scripted(3500 * MIB, total=4 * GIB)
    s.sessions = sessions
    config = MemoryConfig.from_env({"MEMORY_EMERGENCY_FLOOR_MB": "500"})  # as set, not fitted
    m = MemoryMonitor(config, sampler=s, sessions=sessions)
    instrument(m, sessions, registry=registry)
    m.sample()
    assert registry.get_sample_value("pathoai_sessions_budget_bytes") is None  # off: no room kept
    m.gate.budget.keep_room_for(2000 * MIB)
    filled(sessions, 400)
    with m.reserve(10):
        pass
    assert registry.get_sample_value("pathoai_sessions_budget_bytes") == 1000 * MIB


def test_new_work_waits_aside_and_requests_for_sessions_pass_it() -> None:
    m, sessions, now = setting()
    sids = [filled(sessions, 400), filled(sessions, 400)]
    now[0] += 10
    pins = [sessions.use(sid) for sid in sids]
    for pin in pins:
        pin.__enter__()  # both in use: nothing may be freed for the budget
    outcome: list[str] = []

    def new_work() -> None:
        try:
            with m.reserve(300, wait_s=5, new_work=True):
                outcome.append("new work admitted")
        except InsufficientMemoryError:
            outcome.append("new work refused")

    t = threading.Thread(target=new_work)
    t.start()
    wait_for(lambda: m.admission.queue_length == 1)
    with m.reserve(500, wait_s=1):  # for an existing session: it passes the one aside
        outcome.append("session work admitted")
    assert outcome == ["session work admitted"]
    for pin in pins:
        pin.__exit__(None, None, None)  # done with them (each use touches it)
    now[0] += 10  # and idle a while: the oldest may now be freed
    t.join(5)
    assert outcome == ["session work admitted", "new work admitted"]
    assert sessions.removed_total("budget") == 1


def test_a_requests_session_is_pinned_from_its_arrival_and_a_gone_one_answers_404() -> None:
    m, sessions, now = setting()
    sid = filled(sessions, 400)
    now[0] += 10
    seen: list[int] = []

    def analyze(request: Request) -> JSONResponse:
        seen.append(sessions._sessions[request.query_params["session"]].pins)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/analyze", analyze, methods=["POST"])])
    app.add_middleware(
        MemoryAdmissionMiddleware,
        monitor=m,
        routes={"POST /analyze": 500},
        session=lambda scope: dict(
            p.split("=") for p in scope["query_string"].decode().split("&") if p
        ).get("session"),
    )
    client = TestClient(app)
    assert client.post(f"/analyze?session={sid}").status_code == 200
    assert seen == [1]  # pinned while the handler ran (and, before it, while it waited)
    gone = client.post("/analyze?session=nosuchsession")
    assert gone.status_code == 404 and gone.json()["error"] == "session_not_found"
    assert m.admission.requests_total == 1  # a gone session never waited in line
    with pytest.raises(TypeError, match="session must be a callable"):
        MemoryAdmissionMiddleware(app, monitor=m, routes={}, session="session")  # type: ignore[arg-type]


def test_wsgi_pins_the_session_until_the_server_closes_the_body_and_404s_a_gone_one() -> None:
    import urllib.error
    import urllib.request
    from urllib.parse import parse_qs
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from pathoai_memobs.integrations.wsgi import MemoryAdmissionMiddleware as WSGIAdmission

    m, sessions, _ = setting()
    sid = filled(sessions, 400)
    seen: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(sessions._sessions[sid].pins)
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"done"]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    def session_of(environ: dict[str, Any]) -> str | None:
        return parse_qs(environ.get("QUERY_STRING", "")).get("session", [None])[0]

    wrapped = WSGIAdmission(app, m, {"/analyze": 500}, wait_s=0, session=session_of)
    server = make_server("127.0.0.1", 0, wrapped, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/analyze"
    try:
        with urllib.request.urlopen(f"{url}?session={sid}", timeout=5) as r:
            assert r.read() == b"done"
        assert seen == [1] and sessions._sessions[sid].pins == 0  # pinned, then released
        assert m.reserved_bytes == 0
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}?session=gone", timeout=5)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

"""Admission middleware in real Starlette and a real WSGI server: 503 + Retry-After."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.integrations.asgi import MemoryAdmissionMiddleware as ASGIAdmission
from pathoai_memobs.integrations.routes import RouteTable
from pathoai_memobs.integrations.wsgi import MemoryAdmissionMiddleware as WSGIAdmission
from pathoai_memobs.reading import Reading, combine

MIB = 1 << 20
GIB = 1 << 30


class Settable:
    def __init__(self, available: int) -> None:
        self.available = available

    def sample(self) -> Reading:
        return combine(8 * GIB, self.available, None, None, None, 0, time.time(), 0.0)


def test_route_table_matching_and_validation() -> None:
    t = RouteTable.compile(
        {"POST /analyze": 1500, "/analyze": 10, "/slides/*": 200, "PUT /slides/big/*": 900}
    )
    assert t.need("POST", "/analyze") == 1500
    assert t.need("GET", "/analyze") == 10
    assert t.need("GET", "/slides/1") == 200
    assert t.need("PUT", "/slides/big/2") == 900
    assert t.need("GET", "/slides/big/2") == 200
    assert t.need("GET", "/health") is None
    for bad in ({"analyze": 1}, {"FETCH /x": 1}, {"/x": -1}, {"/x": float("nan")}):
        with pytest.raises(ValueError):
            RouteTable.compile(bad)


@pytest.fixture
def monitor_and_memory() -> tuple[MemoryMonitor, Settable]:
    memory = Settable(4 * GIB)
    return MemoryMonitor(MemoryConfig(), sampler=memory, emergency_cooldown_s=60), memory


def starlette_app(monitor: MemoryMonitor, seen: list[int]) -> Starlette:
    async def analyze(request: Request) -> JSONResponse:
        seen.append(monitor.reserved_bytes)
        return JSONResponse({"ok": True})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/analyze", analyze, methods=["POST"]), Route("/health", health)])
    app.add_middleware(ASGIAdmission, monitor=monitor, routes={"POST /analyze": 1500}, wait_s=0)
    return app


def test_asgi_admits_reserves_and_refuses(
    monitor_and_memory: tuple[MemoryMonitor, Settable],
) -> None:
    monitor, memory = monitor_and_memory
    seen: list[int] = []
    with TestClient(starlette_app(monitor, seen)) as client:
        assert client.post("/analyze").status_code == 200
        assert seen == [1500 * MIB]  # held while the endpoint ran
        assert monitor.reserved_bytes == 0  # released after the response
        memory.available = 1800 * MIB  # 1800 - 1500 < 500: refused
        r = client.post("/analyze")
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"] == "insufficient_memory"
        assert client.get("/health").status_code == 200  # unmarked routes pass
        memory.available = 400 * MIB  # EMERGENCY
        assert client.post("/analyze").status_code == 503
    assert monitor.requests_rejected_total == 2
    assert len(seen) == 1


@pytest.fixture
def wsgi_server(
    monitor_and_memory: tuple[MemoryMonitor, Settable],
) -> Iterator[tuple[str, MemoryMonitor, Settable, list[int]]]:
    monitor, memory = monitor_and_memory
    seen: list[int] = []

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        seen.append(monitor.reserved_bytes)
        start_response("200 OK", [("content-type", "text/plain")])  # type: ignore[operator]
        return [b"done"]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = make_server(
        "127.0.0.1",
        0,
        WSGIAdmission(app, monitor, {"/analyze": 800}, wait_s=0),
        handler_class=Quiet,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", monitor, memory, seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_wsgi_admits_reserves_and_refuses(
    wsgi_server: tuple[str, MemoryMonitor, Settable, list[int]],
) -> None:
    url, monitor, memory, seen = wsgi_server
    with urllib.request.urlopen(url + "/analyze", timeout=5) as r:
        assert r.status == 200 and r.read() == b"done"
    assert seen == [800 * MIB] and monitor.reserved_bytes == 0
    memory.available = 1000 * MIB
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "/analyze", timeout=5)
    assert err.value.code == 503
    assert int(err.value.headers["Retry-After"]) >= 1
    with urllib.request.urlopen(url + "/other", timeout=5) as r:
        assert r.status == 200
    assert monitor.reserved_bytes == 0


def test_head_needs_what_get_needs_through_the_middleware() -> None:
    """Starlette answers HEAD by running the GET handler: it must be admitted as a GET."""
    ran: list[str] = []

    async def render(request: Request) -> JSONResponse:
        ran.append(request.method)
        return JSONResponse({"ok": True})

    memory = Settable(1200 * MIB)  # 1500 MiB never fit above the 500 MiB floor here
    monitor = MemoryMonitor(MemoryConfig(), sampler=memory, emergency_cooldown_s=60)
    app = Starlette(routes=[Route("/render", render, methods=["GET"])])
    app.add_middleware(ASGIAdmission, monitor=monitor, routes={"GET /render": 1500}, wait_s=0)
    with TestClient(app) as client:
        assert client.get("/render").status_code == 503
        assert client.head("/render").status_code == 503
    assert ran == []
    assert RouteTable.compile({"GET /r": 5}).need("HEAD", "/r") == 5
    assert RouteTable.compile({"GET /r": 5, "HEAD /r": 1}).need("HEAD", "/r") == 1


@pytest.mark.parametrize("bad", [{1: 100}, {None: 1}, [("/x", 1)], "/x", None])
def test_route_tables_of_the_wrong_type_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError):
        RouteTable.compile(bad)  # type: ignore[arg-type]


def test_route_amounts_beyond_any_memory_are_refused() -> None:
    with pytest.raises(ValueError):
        RouteTable.compile({"/x": 2**2000})
    with pytest.raises(ValueError):
        RouteTable.compile({"/x": 1e303})


def _raising_app() -> Starlette:
    from pathoai_memobs import SessionManager
    from pathoai_memobs.integrations.asgi import MemoryErrorMiddleware

    sessions = SessionManager(max_memory_gb=0.001)
    monitor = MemoryMonitor(MemoryConfig(), sampler=Settable(600 * MIB), emergency_cooldown_s=60)

    async def reserve(request: Request) -> JSONResponse:
        with monitor.reserve(300):  # inside the handler, not by the admission middleware
            return JSONResponse({"ok": True})

    async def gone(request: Request) -> JSONResponse:
        with sessions.use("no-such-session"):
            return JSONResponse({"ok": True})

    async def too_big(request: Request) -> JSONResponse:
        sid = sessions.create_session()
        sessions.update_session(sid, blob=bytes(4 * MIB))
        return JSONResponse({"ok": True})

    async def bug(request: Request) -> JSONResponse:
        raise RuntimeError("not ours")

    app = Starlette(
        routes=[Route(f"/{f.__name__}", f) for f in (reserve, gone, too_big, bug)]
    )  # fmt: skip
    app.add_middleware(MemoryErrorMiddleware)
    return app


def test_library_errors_raised_in_handlers_become_http_answers() -> None:
    with TestClient(_raising_app(), raise_server_exceptions=False) as client:
        r = client.get("/reserve")
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        r = client.get("/gone")
        assert r.status_code == 404 and r.json()["error"] == "session_not_found"
        r = client.get("/too_big")
        assert r.status_code == 413 and r.json()["error"] == "session_memory_limit"
        assert client.get("/bug").status_code == 500  # not ours: left alone


def test_wsgi_library_errors_become_http_answers() -> None:
    from pathoai_memobs import SessionNotFoundError
    from pathoai_memobs.integrations.wsgi import MemoryErrorMiddleware

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        raise SessionNotFoundError()

    seen: list[str] = []
    body = MemoryErrorMiddleware(app)(
        {}, lambda status, headers, exc_info=None: seen.append(status)
    )
    assert seen == ["404 Not Found"] and b"session_not_found" in b"".join(body)


def test_a_route_that_can_never_fit_is_reported_when_the_middleware_is_built(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = MemoryMonitor(MemoryConfig(), sampler=Settable(4 * GIB))  # 8 GiB limit
    app = Starlette(routes=[])
    app.add_middleware(
        ASGIAdmission,
        monitor=monitor,
        routes={"POST /analyze": 8000, "POST /upload": 600, "/sized": lambda scope: 1e9},
    )
    with TestClient(app):
        pass  # the middleware stack is built on start
    reported = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    reported = [m for m in reported if m["event"] == "route_never_fits"]
    assert [m["route"] for m in reported] == ["POST /analyze"]  # 8000 MiB > 8 GiB - 500 MiB
    assert reported[0]["grantable_bytes"] == 8 * GIB - 500 * MIB

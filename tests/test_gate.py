"""The admission gate: free idle memory before refusing, a fair bounded wait, per-request
sizes, and a retry hint from the line."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pathoai_memobs import InsufficientMemoryError, MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.integrations.asgi import MemoryAdmissionMiddleware

from .promstack import free_port
from .scripted import Scripted, wait_for

MIB = 1 << 20
GIB = 1 << 30


def setting(available: int, **config: object) -> tuple[MemoryMonitor, SessionManager, list[float]]:
    """A monitor over scripted memory that session bytes use up, on a fake session clock."""
    now = [0.0]
    sessions = SessionManager(max_memory_gb=1, clock=lambda: now[0])
    s = Scripted(available, total=4 * GIB)
    s.sessions = sessions
    fixed = {"emergency_cleanup_threshold_mb": "code"}  # 500 MiB as set, not fitted to 4 GiB
    cfg = MemoryConfig(**config, sources=fixed)  # type: ignore[arg-type]
    return MemoryMonitor(cfg, sampler=s, sessions=sessions, emergency_cooldown_s=60), sessions, now


def test_idle_sessions_are_freed_before_a_request_is_refused() -> None:
    m, sessions, now = setting(1500 * MIB, session_idle_free_minutes=5)
    removed: list[tuple[str, str]] = []
    sessions.on_remove(lambda sid, data, reason: removed.append((sid, reason)))
    idle = [sessions.create_session() for _ in range(3)]
    for sid in idle:
        sessions.update_session(sid, slide=np.ones(200 * MIB, np.uint8))
    now[0] = 600.0  # ten minutes later: all three are idle past 5 minutes
    busy = sessions.create_session()
    sessions.update_session(busy, slide=np.ones(200 * MIB, np.uint8))  # just used: not idle
    # 1500 - 800 = 700 MiB available: 450 MiB lack 250 above the 500 MiB floor
    with m.reserve(450):
        pass
    assert [reason for _, reason in removed] == ["idle", "idle"]  # as many as needed
    assert [sid for sid, _ in removed] == idle[:2]  # least recently used first
    assert sessions.get_session(busy) is not None and sessions.get_session(idle[2]) is not None
    assert sessions.removed_total("idle") == 2


def test_nothing_idle_enough_means_a_refusal_and_nothing_removed() -> None:
    m, sessions, now = setting(1500 * MIB, session_idle_free_minutes=5)
    for _ in range(4):
        sessions.update_session(sessions.create_session(), slide=np.ones(200 * MIB, np.uint8))
    now[0] = 60.0  # one minute: not idle enough
    with pytest.raises(InsufficientMemoryError):
        m.check_memory_available(300)
    assert len(sessions) == 4


def test_a_waiting_request_is_admitted_when_memory_is_released() -> None:
    m, _, _ = setting(1200 * MIB)
    with m.reserve(600):  # 600 of the 700 MiB above the floor
        done: list[float] = []

        def waiter() -> None:
            started = time.monotonic()
            with m.reserve(400, wait_s=5):
                done.append(time.monotonic() - started)

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        assert m.admission.queue_length == 1 and not done
    t.join(5)
    assert done and done[0] >= 0.25
    assert m.reserved_bytes == 0 and m.admission.queue_length == 0
    assert sum(m.admission.waits.buckets) == 1 and m.admission.waits.buckets[-1] == 0


def test_first_come_first_served_a_large_request_is_not_starved() -> None:
    m, _, _ = setting(1200 * MIB)
    order: list[str] = []
    holder = m.reserve(650)
    holder.__enter__()

    def wants(name: str, mb: float) -> None:
        with m.reserve(mb, wait_s=5):
            order.append(name)
            time.sleep(0.05)

    large = threading.Thread(target=wants, args=("large", 600))
    large.start()
    time.sleep(0.2)  # the large one is first in line
    smalls = [threading.Thread(target=wants, args=(f"small{i}", 10)) for i in range(3)]
    for t in smalls:
        t.start()  # 10 MiB fits now (700 - 650 = 50), but the large one waits ahead
    time.sleep(0.3)
    assert order == []
    holder.__exit__(None, None, None)
    for t in (large, *smalls):
        t.join(5)
    assert order[0] == "large" and sorted(order[1:]) == ["small0", "small1", "small2"]


def test_a_wait_that_runs_out_is_refused_with_a_hint_from_the_line() -> None:
    m, _, _ = setting(1200 * MIB)
    with m.reserve(650):
        started = time.monotonic()
        with pytest.raises(InsufficientMemoryError) as refused, m.reserve(600, wait_s=0.4):
            pass
        assert 0.35 < time.monotonic() - started < 3
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
    assert m.admission.queue_length == 0 and m.admission.waits.timeouts == 1
    assert m.admission.requests_total == 2 and m.requests_rejected_total == 1


def test_an_async_wait_leaves_the_event_loop_free() -> None:
    m, _, _ = setting(1200 * MIB)
    holder = m.reserve(650)
    holder.__enter__()
    threading.Timer(0.3, holder.__exit__, (None, None, None)).start()

    async def main() -> tuple[int, bool]:
        ticks = 0
        admitted = False

        async def ticker() -> None:
            nonlocal ticks
            while not admitted:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        async with m.reserve_async(600, wait_s=5):
            admitted = True
        await task
        return ticks, admitted

    ticks, admitted = asyncio.run(main())
    assert admitted and ticks >= 10  # the loop kept running while the request waited


def test_a_route_may_size_each_request_itself() -> None:
    m, _, _ = setting(4 * GIB)
    seen: list[int] = []

    async def upload(request: Request) -> JSONResponse:
        seen.append(m.reserved_bytes)
        return JSONResponse({"ok": True})

    def twice_the_body(scope: dict[str, object]) -> float:
        headers = dict(scope["headers"])  # type: ignore[call-overload]
        return 2 * int(headers[b"content-length"]) / MIB

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    app.add_middleware(
        MemoryAdmissionMiddleware, monitor=m, routes={"POST /upload": twice_the_body}
    )
    with TestClient(app) as client:
        assert client.post("/upload", content=b"x" * MIB).status_code == 200
    assert seen == [2 * MIB]


def test_a_cancelled_async_wait_gives_its_place_in_line_up_at_once() -> None:
    m, _, _ = setting(1200 * MIB)
    with m.reserve(650):

        async def main() -> None:
            async def wait() -> None:
                async with m.reserve_async(600, wait_s=30):
                    pass

            task = asyncio.create_task(wait())
            await asyncio.sleep(0.2)
            assert m.admission.queue_length == 1
            task.cancel()  # the client went away
            with pytest.raises(asyncio.CancelledError):
                await task
            assert m.admission.queue_length == 0
            assert m.admission.waits.gone == 1  # pathoai_admission_abandoned_total

        asyncio.run(main())


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[int]:
    """``app`` under a real uvicorn on 127.0.0.1 (a thread of this process): its port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def waiting_app(m: MemoryMonitor, called: list[int]) -> Starlette:
    async def upload(request: Request) -> JSONResponse:
        called.append(len(await request.body()))
        return JSONResponse({"bytes": called[-1]})

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    app.add_middleware(MemoryAdmissionMiddleware, monitor=m, routes={"POST /upload": 600},
                       wait_s=30)  # fmt: skip
    return app


def test_a_client_that_disconnects_while_waiting_gives_its_place_up_at_once() -> None:
    m, _, _ = setting(1200 * MIB)
    called: list[int] = []
    holder = m.reserve(650)
    holder.__enter__()
    with serving(waiting_app(m, called)) as port:
        gone = socket.create_connection(("127.0.0.1", port))
        gone.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        wait_for(lambda: m.admission.queue_length == 1)
        gone.close()  # the tab was closed while it waited in line
        wait_for(lambda: m.admission.queue_length == 0, 2.0)  # not after the 30 s wait
        holder.__exit__(None, None, None)
        time.sleep(0.2)
        assert called == []  # nobody was there to answer: the app never ran for it
        assert m.reserved_bytes == 0  # and nothing stays booked for it
        assert m.admission.waits.gone == 1 and m.admission.waits.timeouts == 0  # counted
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/upload", body=b"x" * 10)
        assert conn.getresponse().status == 200 and called == [10]


def test_a_request_that_waited_hands_its_whole_body_to_the_app() -> None:
    m, _, _ = setting(1200 * MIB)
    called: list[int] = []
    with serving(waiting_app(m, called)) as port:
        holder = m.reserve(650)
        holder.__enter__()
        threading.Timer(0.5, holder.__exit__, (None, None, None)).start()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/upload", body=b"y" * (3 * MIB))  # read while it waited
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"bytes": 3 * MIB}
        waits = m.admission.waits  # it did wait in line, and was then admitted
        assert sum(waits.buckets) == 1 and waits.sum_s >= 0.4 and waits.timeouts == 0


def test_a_waiting_request_reads_at_most_a_mebibyte_of_its_body_while_watched() -> None:
    """A large upload waiting for memory stays with the server (past the watch's 1 MiB),
    and the app then reads all of it, in order."""
    m, _, _ = setting(1200 * MIB)
    holder = m.reserve(650)
    holder.__enter__()
    chunks = [bytes([i]) * (512 << 10) for i in range(32)]  # 16 MiB in 32 messages
    pulled: list[int] = []

    async def receive() -> Any:
        if len(pulled) == len(chunks):
            await asyncio.Event().wait()  # the client stays: no disconnect comes
        pulled.append(len(pulled))
        return {"type": "http.request", "body": chunks[len(pulled) - 1],
                "more_body": len(pulled) < len(chunks)}  # fmt: skip

    got: list[bytes] = []

    async def app(scope: object, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        got.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = MemoryAdmissionMiddleware(app, monitor=m, routes={"POST /upload": 600},
                                           wait_s=30)  # fmt: skip
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        scope = {"type": "http", "method": "POST", "path": "/upload", "headers": [],
                 "query_string": b""}  # fmt: skip
        task = asyncio.create_task(middleware(scope, receive, send))
        await asyncio.sleep(0.5)
        assert m.admission.queue_length == 1 and len(pulled) == 2  # 1 MiB, not 16
        holder.__exit__(None, None, None)
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert got == [b"".join(chunks)] and sent[0]["status"] == 200

"""ASGI middleware (Starlette, FastAPI, Gradio): admission (503 + Retry-After when short)
and the mapping of library errors raised anywhere in the app to HTTP answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

from ..exceptions import (
    InsufficientMemoryError,
    MemoryManagementError,
    SessionNotFoundError,
    SpillCorruptError,
)
from ..gpu_errors import CAUGHT, is_cuda_oom
from .routes import AdmissionMiddlewareBase, Answer, error_answer, need_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MemoryAdmissionMiddleware(AdmissionMiddlewareBase[ASGIApp]):
    """Reserve the marked memory for each marked request, or answer 503 without calling
    the app. A request that does not fit waits in line up to ``wait_s`` (10 s by default;
    the event loop goes on) while idle memory is freed and others finish; then 503 with a
    Retry-After from the line. The reservation is held until the whole response is sent.

    ``app.add_middleware(MemoryAdmissionMiddleware, monitor=m, routes={"POST /analyze": 1500})``
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = self.routes.need(scope["method"], scope["path"])
        if size is None:
            await self.app(scope, receive, send)
            return
        need = need_of(size, scope)
        new_work, sid = self.session(scope)
        reservation = self.monitor.reserve_async(
            need.mb, wait_s=self.wait_s, new_work=new_work, gpu_mb=need.gpu_mb,
            device=need.device, session=sid,
        )  # fmt: skip
        async with AsyncExitStack() as held:  # the reservation (and the pin) until sent
            try:
                app_receive = await _enter_while_connected(held, reservation, receive)
            except (SessionNotFoundError, InsufficientMemoryError, SpillCorruptError) as exc:
                answer = error_answer(exc)  # gone, short of memory, or not read back intact
                assert answer is not None
                await _answer(send, answer)
                return
            if app_receive is None:  # the client went away while it waited: nobody to answer
                return
            await self.app(scope, app_receive, send)


async def _enter_while_connected(
    held: AsyncExitStack, reservation: AbstractAsyncContextManager[object], receive: Receive
) -> Receive | None:
    """Enter ``reservation`` into ``held``; where it has to wait in line, watch the client
    meanwhile. A client that disconnects (a closed tab, a proxy's timeout) gives its place
    up at once: it would otherwise hold the head of the line, then the memory, for nobody.
    Returns the receive for the app (what the watch read of the body, then the rest), or
    None where the client went away."""
    entering = asyncio.ensure_future(held.enter_async_context(reservation))
    await asyncio.sleep(0)  # the first look runs now: most requests are admitted by it
    if entering.done():
        entering.result()  # a refusal raises here
        return receive
    read: list[Message] = []
    watching = asyncio.ensure_future(_until_disconnect(receive, read))
    try:
        await asyncio.wait({entering, watching}, return_when=asyncio.FIRST_COMPLETED)
        gone = watching.done() and watching.result()
        if watching.done() and not gone:  # a large body: wait unwatched
            await asyncio.wait({entering})
    except BaseException:  # cancelled itself, or a receive failed: neither goes on
        entering.cancel()
        watching.cancel()
        raise
    if gone:  # leave the line (or give back what was just admitted)
        entering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await entering
        return None
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    entering.result()

    async def replayed() -> Message:
        return read.pop(0) if read else await receive()

    return replayed


#: The most of a request body the watch reads while the request waits; past it, the rest
#: stays with the server (whose flow control stops reading from the socket) and the client
#: is no longer watched: a request waiting for memory must not pull a slide into memory.
WATCH_BODY_BYTES = 1 << 20


async def _until_disconnect(receive: Receive, read: list[Message]) -> bool:
    """Read the request, keeping its messages in ``read``, until the client disconnects
    (True; once the body is in, the server answers the next receive only then), or the body
    goes on past ``WATCH_BODY_BYTES`` (False)."""
    size = 0
    while (message := await receive())["type"] != "http.disconnect":
        read.append(message)
        size += len(message.get("body", b""))
        if message.get("more_body", False) and size >= WATCH_BODY_BYTES:
            return False
    return True


async def _answer(send: Send, answer: Answer) -> None:
    status, headers, body = answer
    raw = [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class MemoryErrorMiddleware:
    """Library errors raised by a handler become answers, wherever they are raised:
    ``InsufficientMemoryError`` (``monitor.reserve()`` inside a handler) 503 with
    Retry-After, ``SessionNotFoundError`` 404, ``SessionMemoryLimitError`` 413, torch's
    CUDA out-of-memory 503 with Retry-After (counted, and the GPU's cleanup started). Add it
    outermost: ``app.add_middleware(MemoryErrorMiddleware)`` after the others. An error
    after the response started cannot be answered and goes on as raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            oom = is_cuda_oom(exc)
            answer = error_answer(exc) if oom or isinstance(exc, MemoryManagementError) else None
            if oom:
                CAUGHT.caught(exc)  # counted even where the response had started
            if answer is None or started:
                raise
            await _answer(send, answer)

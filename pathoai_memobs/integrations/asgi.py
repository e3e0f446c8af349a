"""ASGI admission middleware (Starlette, FastAPI, Gradio): 503 + Retry-After when short."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from ..exceptions import InsufficientMemoryError
from ..monitor import MemoryMonitor
from .routes import RouteTable, refusal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MemoryAdmissionMiddleware:
    """Reserve the marked memory for each marked request, or answer 503 without calling
    the app. The reservation is held until the app has sent its whole response.

    ``app.add_middleware(MemoryAdmissionMiddleware, monitor=m, routes={"POST /analyze": 1500})``
    """

    def __init__(self, app: ASGIApp, monitor: MemoryMonitor, routes: Mapping[str, float]) -> None:
        self.app = app
        self.monitor = monitor
        self.routes = RouteTable.compile(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mb = self.routes.need(scope["method"], scope["path"])
        if mb is None:
            await self.app(scope, receive, send)
            return
        reservation = self.monitor.reserve(mb)
        try:
            reservation.__enter__()
        except InsufficientMemoryError as exc:
            status, headers, body = refusal(exc)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            reservation.__exit__(None, None, None)

"""WSGI middleware (Flask, Django, gunicorn sync workers): admission (503 + Retry-After) and
the mapping of library errors raised by the app to HTTP answers."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any

from ..exceptions import (
    InsufficientMemoryError,
    MemoryManagementError,
    SessionNotFoundError,
    SpillCorruptError,
)
from ..gpu_errors import CAUGHT, is_cuda_oom
from .routes import REASONS, AdmissionMiddlewareBase, Answer, error_answer, need_of

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Releasing:
    """The app's response iterable; the reservation (and the session's pin) end when the
    server closes it."""

    def __init__(self, inner: Iterable[bytes], reservation: AbstractContextManager[Any]) -> None:
        self._inner = inner
        self._reservation: AbstractContextManager[Any] | None = reservation

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            if self._reservation is not None:
                self._reservation.__exit__(None, None, None)
                self._reservation = None


class MemoryAdmissionMiddleware(AdmissionMiddlewareBase[WSGIApp]):
    """Reserve the marked memory for each marked request, or answer 503 without calling
    the app. A request that does not fit waits in line up to ``wait_s`` (10 s by default)
    while idle memory is freed and others finish; then 503 with a Retry-After from the line.
    ``app.wsgi_app = MemoryAdmissionMiddleware(app.wsgi_app, monitor, routes)``
    """

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        size = self.routes.need(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/"))
        if size is None:
            return self.app(environ, start_response)
        need = need_of(size, environ)
        new_work, sid = self.session(environ)
        held = ExitStack()  # the reservation (and the pin) until the server closes the body
        try:
            reservation = self.monitor.reserve(
                need.mb, wait_s=self.wait_s, new_work=new_work, gpu_mb=need.gpu_mb,
                device=need.device, session=sid,
            )  # fmt: skip
            held.enter_context(reservation)  # a spilled session comes back here, admitted
        except (SessionNotFoundError, InsufficientMemoryError, SpillCorruptError) as exc:
            held.close()
            answer = error_answer(exc)  # gone, short of memory, or not read back intact
            assert answer is not None
            return _answer(start_response, answer)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            held.close()
            raise
        return _Releasing(result, held)


def _answer(start_response: StartResponse, answer: Answer) -> list[bytes]:
    status, headers, body = answer
    start_response(f"{status} {REASONS[status]}", headers)
    return [body]


class MemoryErrorMiddleware:
    """Library errors raised by the app become answers: ``InsufficientMemoryError`` 503
    with Retry-After, ``SessionNotFoundError`` 404, ``SessionMemoryLimitError`` 413, torch's
    CUDA out-of-memory 503 with Retry-After (counted, the GPU's cleanup started).
    ``app.wsgi_app = MemoryErrorMiddleware(app.wsgi_app)``. Flask and Django turn
    exceptions into 500s themselves: register ``error_answer`` with their error handlers
    there, or wrap the view functions; this middleware sees what reaches the server."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self.app(environ, start_response)
        except Exception as exc:
            oom = is_cuda_oom(exc)
            answer = error_answer(exc) if oom or isinstance(exc, MemoryManagementError) else None
            if oom:
                CAUGHT.caught(exc)
            if answer is None:
                raise
            status, headers, body = answer
            start_response(f"{status} {REASONS[status]}", headers, sys.exc_info())
            return [body]

"""The slide service of the serving issue, in three builds chosen by ``SLIDE_MODE``:

- ``library``: pathoai-memobs as the README sets it up (admission middleware with routes
  sized honestly, the error middleware, a SessionManager, the model cache as a cleanup
  callback, a shared ledger when several workers run);
- ``workaround``: what users write by hand today: no library, the heavy routes behind a
  semaphore of ``SLIDE_HEAVY`` (per process, or over every worker with lock files in
  ``SLIDE_HEAVY_LOCK_DIR``) and at most ``SLIDE_SESSIONS`` live sessions (oldest dropped),
  per process, or over every worker with slot files in ``SLIDE_SESSION_SLOTS_DIR``
  (tests/apps/workaround.py);
- ``bare``: neither.

Routes: POST /upload?mb=N stores an N MiB slide in a new session; POST /analyze?session=S
holds a working buffer of twice the slide for ``SLIDE_WORK_S`` and stores a result of a
quarter of it; GET /result?session=S reads it; DELETE /session?session=S ends it; GET
/worker names the
worker process. A 300 MiB
model cache is loaded at start and again by the next analysis after a cleanup drops it.
Run it as ``uvicorn tests.apps.slide_service:app`` or under gunicorn's uvicorn worker;
``SLIDE_METRICS_PORT`` serves the library's /metrics there (one process);
``SLIDE_LEAK_MB`` grows an unbounded tile cache to that size (``SLIDE_LEAK_MB_PER_S``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.apps.workaround import FileSemaphore, HandStore

MIB = 1 << 20
MODE = os.environ.get("SLIDE_MODE", "library")
MODEL_MB = int(os.environ.get("SLIDE_MODEL_MB", "300"))
WORK_S = float(os.environ.get("SLIDE_WORK_S", "0.5"))
#: A tile prefetcher whose cache nobody bounds: from start it grows by SLIDE_LEAK_MB_PER_S
#: to SLIDE_LEAK_MB. Memory outside admission, growing: the pressure the alerts exist for.
LEAK_MB = int(os.environ.get("SLIDE_LEAK_MB", "0"))
LEAK_MB_PER_S = float(os.environ.get("SLIDE_LEAK_MB_PER_S", "5"))


def _prefetch(cache: list[np.ndarray[Any, Any]], stop: threading.Event) -> None:
    """The unbounded prefetch cache: 1 MiB tiles at ``LEAK_MB_PER_S`` up to ``LEAK_MB``."""
    while len(cache) < LEAK_MB and not stop.wait(1 / LEAK_MB_PER_S):
        cache.append(_filled(1))


def _query(scope: Any) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode()))


def upload_mb(scope: Any) -> float:
    """An upload holds its slide while it is decoded: its size, as the request declares it
    (a real service reads Content-Length), and a little for the decoder."""
    return float(_query(scope).get("mb", "300")) + 20


#: The largest analysis (MiB): a working buffer of two slides of up to 300, and the result.
ANALYZE_MAX_MB = 700.0


def analyze_mb(slides: dict[str, int]) -> Callable[[Any], float]:
    """An analysis holds a working buffer of twice its slide and a result of a quarter:
    2.25x the slide its upload declared (``slides``: session -> MiB) and a little more; the
    largest where the session is not known."""

    def size(scope: Any) -> float:
        mb = slides.get(_query(scope).get("session", ""))
        return ANALYZE_MAX_MB if mb is None else min(ANALYZE_MAX_MB, 2.25 * mb + 20)

    return size


def _filled(mb: int) -> np.ndarray[Any, Any]:
    """``mb`` MiB of memory, every page touched (what decoding a slide costs)."""
    return np.ones(mb * MIB, np.uint8)


class Model:
    """The model cache: 300 MiB, dropped by a cleanup, reloaded when next needed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.weights: np.ndarray[Any, Any] | None = _filled(MODEL_MB)
        self.reloads = 0

    def drop(self) -> int:
        with self.lock:
            freed = 0 if self.weights is None else self.weights.nbytes
            self.weights = None
            return freed

    def get(self) -> np.ndarray[Any, Any]:
        with self.lock:
            if self.weights is None:
                self.weights = _filled(MODEL_MB)
                self.reloads += 1
            return self.weights


class GoneError(Exception):
    """The workaround's session was dropped (the library raises SessionNotFoundError)."""


class SlideService:
    """The handlers, over the library's sessions or the hand-written store."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.model = Model()
        heavy = int(os.environ.get("SLIDE_HEAVY", "1"))
        shared = os.environ.get("SLIDE_HEAVY_LOCK_DIR")  # container-wide under gunicorn
        semaphore = threading.BoundedSemaphore(heavy)
        self.heavy: Callable[[], contextlib.AbstractContextManager[Any]] = (
            FileSemaphore(shared, heavy).held if shared else lambda: semaphore
        )
        cap = int(os.environ.get("SLIDE_SESSIONS", "3")) if mode == "workaround" else None
        self.hand = HandStore(cap, os.environ.get("SLIDE_SESSION_SLOTS_DIR"))
        self.lib: dict[str, Any] = {}
        self.slides: dict[str, int] = {}  # session -> its slide's MiB, as the upload declared

    def forget(self, sid: str, data: Any, reason: str) -> None:
        """A session went: its slide's size too (the library's removal hook)."""
        self.slides.pop(sid, None)

    def gate(self) -> contextlib.AbstractContextManager[Any]:
        """The workaround's semaphore around a heavy route (nothing otherwise)."""
        if self.mode != "workaround":
            return contextlib.nullcontext()
        return self.heavy()

    @contextlib.contextmanager
    def session(self, sid: str) -> Iterator[dict[str, Any]]:
        """The session's keys while a request works on it (pinned, with the library)."""
        if self.mode == "library":
            with self.lib["sessions"].use(sid) as data:  # SessionNotFoundError: 404
                yield data.data
            return
        found = self.hand.get(sid)
        if found is None:
            raise GoneError()
        yield found

    def upload(self, request: Request) -> Response:
        mb = int(request.query_params.get("mb", "200"))
        with self.gate():
            if self.mode == "library":
                sid = self.lib["sessions"].create_session()
                self.lib["sessions"].update_session(sid, slide=_filled(mb))
                self.slides[sid] = mb
            else:
                sid = self.hand.create(lambda: _filled(mb))
        return JSONResponse({"session": sid})

    def analyze(self, request: Request) -> Response:
        sid = request.query_params["session"]
        with self.gate(), self.session(sid) as keys:
            slide = keys["slide"]
            weights = self.model.get()
            work = np.empty(2 * slide.nbytes, np.uint8)
            work[:] = weights[0]  # every page of the working buffer touched
            time.sleep(WORK_S)
            result = slide[: slide.nbytes // 4].copy()
            del work
            if self.mode == "library":
                self.lib["sessions"].update_session(sid, result=result)
            else:
                keys["result"] = result  # the hand-written store's dict itself
        return JSONResponse({"ok": True})

    def result(self, request: Request) -> Response:
        with self.session(request.query_params["session"]) as keys:
            found = keys.get("result")
        if found is None:
            return JSONResponse({"error": "no result yet"}, status_code=409)
        return JSONResponse({"bytes": int(found.nbytes)})

    def end(self, request: Request) -> Response:
        sid = request.query_params["session"]
        if self.mode == "library":
            self.lib["sessions"].delete_session(sid)
        else:
            self.hand.delete(sid)
        return Response(status_code=204)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        stop, tiles = threading.Event(), app.state.tiles
        threading.Thread(target=_prefetch, args=(tiles, stop), daemon=True).start()
        try:
            async with self._library(app):
                yield
        finally:
            stop.set()

    @contextlib.asynccontextmanager
    async def _library(self, app: Starlette) -> AsyncIterator[None]:
        if self.mode != "library":
            yield
            return
        self.lib["sessions"].start_sweeper()
        port = os.environ.get("SLIDE_METRICS_PORT")  # /metrics for a Prometheus, if asked
        server = None
        if port:
            from pathoai_memobs.exporters.prometheus import instrument, start_http_server

            lib = self.lib
            instrument(lib["monitor"], lib["sessions"], lib["gc_manager"])
            server = start_http_server(int(port))
        with self.lib["monitor"]:
            yield
        if server is not None:
            server.stop()
        self.lib["sessions"].stop_sweeper()


async def _worker(request: Request) -> Response:
    """Which worker serves this connection (the load test spreads its clients by it)."""
    return Response(str(os.getpid()))


async def _gone(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "session not found"}, status_code=404)


def build(mode: str = MODE) -> Starlette:
    """The service in ``mode`` (see the module docstring)."""
    service = SlideService(mode)
    routes = [
        Route("/upload", service.upload, methods=["POST"]),
        Route("/analyze", service.analyze, methods=["POST"]),
        Route("/result", service.result, methods=["GET"]),
        Route("/session", service.end, methods=["DELETE"]),
        Route("/worker", _worker, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=service.lifespan, exception_handlers={GoneError: _gone})
    app.state.service = service
    app.state.tiles = []  # the unbounded prefetch cache (SLIDE_LEAK_MB)
    if mode == "library":
        _with_library(app, service)
    return app


def _with_library(app: Starlette, service: SlideService) -> None:
    """The README's set-up: config from the environment, sessions, GC, monitor, routes."""
    from pathoai_memobs import GarbageCollectionManager, MemoryConfig, MemoryMonitor
    from pathoai_memobs.integrations.asgi import MemoryAdmissionMiddleware, MemoryErrorMiddleware
    from pathoai_memobs.session_manager import SessionManager

    model, lib, slides = service.model, service.lib, service.slides
    config = MemoryConfig.from_env()
    sessions = SessionManager.from_config(config)
    sessions.on_remove(service.forget)
    gc_manager = GarbageCollectionManager.from_config(config)
    monitor = MemoryMonitor(config, sessions=sessions, gc_manager=gc_manager)
    monitor.register_cleanup_callback(model.drop, name="model_cache", priority=10)
    lib.update(sessions=sessions, monitor=monitor, gc_manager=gc_manager)
    gc_manager.configure_gc()
    app.add_middleware(
        MemoryAdmissionMiddleware,
        monitor=monitor,
        routes={"POST /upload": upload_mb, "POST /analyze": analyze_mb(slides)},
        session=lambda scope: _query(scope).get("session"),  # pinned while it waits
    )
    monitor.gate.budget.keep_room_for(int(ANALYZE_MAX_MB * MIB))  # sized per request
    app.add_middleware(MemoryErrorMiddleware)
    app.state.lib = lib


app = build()

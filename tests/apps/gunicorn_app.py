"""A gunicorn app with the documented multiprocess hooks (the test and the README use it).

Each worker: a SessionManager, a MemoryMonitor and a Publisher started after the fork.
The master serves the merged /metrics on 127.0.0.1:$PATHOAI_METRICS_PORT.
Routes: /session creates a session holding 1 MiB; /pid names the worker.
"""

from __future__ import annotations

import os
from typing import Any

STATE: dict[str, Any] = {}


def _state() -> dict[str, Any]:
    """The app module's STATE: gunicorn loads this file twice, as config and as the app."""
    import importlib

    module = importlib.import_module("tests.apps.gunicorn_app")
    state: dict[str, Any] = module.STATE
    return state


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/session":
        sessions = STATE["sessions"]
        sid = sessions.create_session()
        sessions.update_session(sid, image=bytearray(1 << 20))
        STATE["publisher"].publish()  # visible at once (the thread also does it every second)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- gunicorn hooks -----------------------------------------------------------------------


def when_ready(server: Any) -> None:
    """Master: serve every worker's state from one /metrics."""
    from prometheus_client import CollectorRegistry

    from pathoai_memobs.exporters.multiprocess import MultiprocessCollector
    from pathoai_memobs.exporters.prometheus import start_http_server

    registry = CollectorRegistry()
    MultiprocessCollector(registry)
    STATE["server"] = start_http_server(
        int(os.environ["PATHOAI_METRICS_PORT"]), "127.0.0.1", registry=registry
    )


def post_fork(server: Any, worker: Any) -> None:
    """Worker: build the state and start publishing (threads do not survive fork)."""
    from pathoai_memobs import GarbageCollectionManager, MemoryConfig, MemoryMonitor
    from pathoai_memobs.exporters.multiprocess import Publisher
    from pathoai_memobs.exporters.prometheus import MemobsCollector
    from pathoai_memobs.session_manager import SessionManager

    config = MemoryConfig()
    sessions = SessionManager.from_config(config)
    gc_manager = GarbageCollectionManager.from_config(config)
    monitor = MemoryMonitor(config, sessions=sessions, gc_manager=gc_manager)
    monitor.start()
    collector = MemobsCollector(monitor, sessions, gc_manager)
    state = _state()
    state.update(sessions=sessions, monitor=monitor)
    state["publisher"] = Publisher(collector, interval_s=0.5).start()


def child_exit(server: Any, worker: Any) -> None:
    """Master: a worker is gone; its live series go, its counts stay."""
    from pathoai_memobs.exporters.multiprocess import mark_process_dead

    mark_process_dead(worker.pid)

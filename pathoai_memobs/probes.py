"""Kubernetes probes over a monitor: ``/readyz`` and ``/livez``, as WSGI and ASGI apps.

- ``/readyz`` answers 503 while the instance is in EMERGENCY (it would refuse the work a
  load balancer sends it) or its monitor is stale (no reading for ``stale_after_s``), 200
  otherwise. Trade-off: under a fleet-wide squeeze every replica may go unready at once and
  the Service then has no endpoints; ``unready_in_emergency=False`` keeps readiness on
  staleness alone and lets admission's 503s shed load instead.
- ``/livez`` answers 200 while the monitor's thread runs (a monitor that was never started
  is not alive: a probe would restart a pod whose memory nobody watches).

The decision is the pure ``readiness``; bodies are small JSON documents for people.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .pressure import Level

if TYPE_CHECKING:
    from .monitor import MemoryMonitor

PATHS = ("/readyz", "/livez")


class Verdict(NamedTuple):
    ok: bool
    reason: str  # "ok", "emergency", "stale", "not_running"


def readiness(
    level: Level, last_sample_s: float, now_s: float, stale_after_s: float,
    *, unready_in_emergency: bool = True,
) -> Verdict:  # fmt: skip
    """Whether an instance should get traffic: not while its monitor is stale, nor (by
    default) while it is in EMERGENCY."""
    if now_s - last_sample_s > stale_after_s:
        return Verdict(False, "stale")
    if unready_in_emergency and level is Level.EMERGENCY:
        return Verdict(False, "emergency")
    return Verdict(True, "ok")


class Probes:
    """``/readyz`` and ``/livez`` for ``monitor`` (see the module docstring). ``stale_after_s``
    defaults to three intervals, and 5 s at least."""

    def __init__(
        self, monitor: MemoryMonitor, *, unready_in_emergency: bool = True,
        stale_after_s: float | None = None, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        if not isinstance(unready_in_emergency, bool):
            raise TypeError(f"unready_in_emergency must be a bool, got {unready_in_emergency!r}")
        interval = monitor.config.monitoring_interval_sec
        stale = max(3 * interval, 5.0) if stale_after_s is None else stale_after_s
        if isinstance(stale, bool) or not isinstance(stale, (int, float)) or not stale > 0:
            raise ValueError(f"stale_after_s must be a number of seconds > 0, got {stale!r}")
        self.monitor, self.unready_in_emergency = monitor, unready_in_emergency
        self.stale_after_s, self._clock = float(stale), clock

    def answer(self, path: str) -> tuple[int, bytes]:
        """Status and JSON body for ``/readyz`` or ``/livez``."""
        m = self.monitor
        if path == "/livez":
            alive = m.running
            doc: dict[str, object] = {"alive": alive} | ({} if alive else {"reason": "not_running"})
            return (200 if alive else 503), json.dumps(doc).encode()
        verdict = readiness(m.level, m.last_sample_timestamp, self._clock(), self.stale_after_s,
                            unready_in_emergency=self.unready_in_emergency)  # fmt: skip
        doc = {"ready": verdict.ok, "reason": verdict.reason, "level": m.level.name}
        return (200 if verdict.ok else 503), json.dumps(doc).encode()

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The probes as a WSGI app (404 for any other path)."""
        path = environ.get("PATH_INFO", "/")
        status, body = self.answer(path) if path in PATHS else (404, b'{"error": "not_found"}')
        reason = {200: "OK", 503: "Service Unavailable", 404: "Not Found"}[status]
        start_response(f"{status} {reason}", _headers(body))
        return [body]

    async def asgi(
        self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:  # fmt: skip
        """The probes as an ASGI app: ``app.mount("/healthz", probes.asgi)`` serves
        ``/healthz/readyz`` (the path is taken relative to the mount), or route them."""
        path = scope.get("path", "/")[len(scope.get("root_path", "")) :] or "/"
        status, body = self.answer(path) if path in PATHS else (404, b'{"error": "not_found"}')
        raw = [(k.encode(), v.encode()) for k, v in _headers(body)]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def _headers(body: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store")]  # fmt: skip

"""gunicorn config for the OpenTelemetry fork test: each worker sets up OTLP after the fork."""

from __future__ import annotations

from typing import Any

STATE: dict[str, Any] = {}


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def post_fork(server: Any, worker: Any) -> None:
    from pathoai_memobs import MemoryConfig, MemoryMonitor
    from pathoai_memobs.exporters.otel import instrument, setup_otlp

    provider = setup_otlp()  # in the worker: its exporting thread belongs to it
    STATE["provider"] = provider
    STATE["instruments"] = instrument(provider, monitor=MemoryMonitor(MemoryConfig()))

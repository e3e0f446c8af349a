"""Structured events through structlog, delivered by stdlib logging, and their names.

The library never configures logging by itself: events go to the stdlib logger
``pathoai_memobs`` carrying their fields as a structlog event dict, so whatever the
application set up receives them. ``configure_logging()`` is the one-call set-up for
applications (and the CLI): JSON lines in production, a readable console in a terminal,
with other libraries' stdlib records rendered the same way.

Session ids are secrets: no event carries one. Sessions appear by fingerprint only.
structlog, and stdlib logging itself, are imported on the first event, so
``import pathoai_memobs`` stays light.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

if TYPE_CHECKING:
    import logging as _stdlib

LOGGER_NAME: Final = "pathoai_memobs"

# Severities: stdlib logging's numbers, so callers need not import it to emit.
DEBUG: Final = 10
INFO: Final = 20
WARNING: Final = 30
ERROR: Final = 40

# Event names: public, stable, documented in docs/logging.md.
LEVEL_CHANGED: Final = "memory_level_changed"
EMERGENCY_CLEANUP: Final = "emergency_cleanup"
CLEANUP_CALLBACK_FAILED: Final = "cleanup_callback_failed"
CLEANUP_CALLBACK_OVERRAN: Final = "cleanup_callback_overran"
CLEANUP_CALLBACK_FUTILE: Final = "cleanup_callback_futile"
PROACTIVE_GC: Final = "proactive_gc"
REQUEST_REJECTED: Final = "request_rejected"
SESSION_REMOVED: Final = "session_removed"
SESSION_HOOK_FAILED: Final = "session_removal_hook_failed"
MONITOR_ERROR: Final = "monitor_error"
EXPORTER_EXPOSED: Final = "exporter_exposed"
EXPORTER_CLIENT_DROPPED: Final = "exporter_client_dropped"
GC_TIMER_UNAVAILABLE: Final = "gc_timer_unavailable"
RUNGS_OUT_OF_ORDER: Final = "rungs_out_of_order"
ROUTE_NEVER_FITS: Final = "route_never_fits"
CACHES_SHRUNK: Final = "caches_shrunk"
SESSIONS_SPILLED: Final = "sessions_spilled"
SPILL_REFUSED: Final = "spill_refused"
ALLOCATOR_TRIMMED: Final = "allocator_trimmed"
ALLOCATOR_ARENAS_HIGH: Final = "allocator_arenas_high"
PREVIOUS_RUN: Final = "previous_run"
GPU_READER_OFF: Final = "gpu_reader_off"
GPU_DEVICE_LOST: Final = "gpu_device_lost"
GPU_LEVEL_CHANGED: Final = "gpu_level_changed"
GPU_EMERGENCY_CLEANUP: Final = "gpu_emergency_cleanup"
GPU_OOM_CAUGHT: Final = "gpu_oom_caught"
WORKER_RECYCLING: Final = "worker_recycling"
WORKER_RECYCLE_DEFERRED: Final = "worker_recycle_deferred"

Format = Literal["auto", "json", "console"]


@functools.cache
def _stdlib_logger() -> _stdlib.Logger:
    import logging  # noqa: PLC0415 -- about 0.7 MiB, paid when something is logged

    return logging.getLogger(LOGGER_NAME)


@functools.cache
def _logger() -> Any:
    import structlog  # noqa: PLC0415 -- 40 ms of import, paid on the first event only

    return structlog.wrap_logger(
        _stdlib_logger(),
        processors=[
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def emit(severity: int, event: str, /, **fields: Any) -> None:
    """Send one structured event (no-op when the stdlib logger would drop that level)."""
    if _stdlib_logger().isEnabledFor(severity):
        _logger().log(severity, event, **fields)


def raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``file:line in function``: enough to find the bug, with
    nothing of its message or its frames' locals (which may hold a secret)."""
    tb = exc.__traceback__
    if tb is None:
        return "unknown"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"


class RateLimit:
    """At most one event per ``period_s``; counts what it held back, for the next one."""

    def __init__(self, period_s: float = 1.0, clock: Any = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def allow(self) -> int | None:
        """The number of events suppressed since the last allowed one, or None to suppress."""
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._held += 1
                return None
            self._next = now + self.period_s
            held, self._held = self._held, 0
            return held


def configure_logging(
    fmt: Format = "auto", level: int | str = "INFO", stream: TextIO | None = None
) -> _stdlib.Handler:
    """Install one handler on the root logger rendering every record as JSON or console.

    ``auto`` picks console when ``stream`` is a terminal and JSON otherwise. Returns the
    handler, so a caller (or a test) can remove it again.
    """
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler

"""Which requests need how much memory: a table the app writes, matched without regexes.

Keys are ``"/path"`` (any method), ``"METHOD /path"``, or a prefix ending in ``*``
(``"POST /slides/*"``). An exact path wins over a prefix, a longer prefix over a shorter
one, and a method-specific entry over an any-method one. Values are MiB, as in the
reference's ``check_memory_available(required_mb)``, a ``Need`` (host MiB and GPU MiB on a
device), or a callable that sizes each request with either (given the ASGI scope or the
WSGI environ; e.g. from Content-Length).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..exceptions import (
    InsufficientGpuMemoryError,
    InsufficientMemoryError,
    SessionMemoryLimitError,
    SessionNotFoundError,
    SpillCorruptError,
)
from ..gpu_errors import is_cuda_oom
from ..logging import ROUTE_NEVER_FITS, WARNING, emit
from ..units import MIB, non_negative, to_bytes_mb

#: Seconds a client is told to wait after a CUDA OOM the handler raised: the GPU's cleanup
#: (started by it) empties torch's cache within about that.
CUDA_OOM_RETRY_S = 2


@dataclass(frozen=True)
class Need:
    """What one request needs: host MiB, and GPU MiB on ``device`` (NVML's index)."""

    mb: float = 0.0
    gpu_mb: float = 0.0
    device: int = 0

    def __post_init__(self) -> None:
        to_bytes_mb(self.mb, "Need.mb")
        to_bytes_mb(self.gpu_mb, "Need.gpu_mb")
        if isinstance(self.device, bool) or not isinstance(self.device, int) or self.device < 0:
            raise ValueError(f"Need.device must be a GPU index >= 0, got {self.device!r}")


#: MiB (or a Need) for a route, or a callable that returns them for one request.
Size = float | Need | Callable[[Any], "float | Need"]


def need_of(size: Size, request: Any) -> Need:
    """The Need of one request: a route's fixed size, or its callable's answer."""
    value = size(request) if callable(size) else size
    return value if isinstance(value, Need) else Need(float(value))


if TYPE_CHECKING:
    from ..monitor import MemoryMonitor

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RouteTable:
    """Compiled route marks: exact paths and prefixes, each by method (None: any)."""

    exact: Mapping[tuple[str | None, str], Size]
    prefixes: tuple[tuple[str | None, str, Size], ...]

    @classmethod
    def compile(cls, routes: Mapping[str, Size]) -> RouteTable:
        """Validate and compile; a key or amount of the wrong type raises TypeError, a bad
        one ValueError, each naming it."""
        if not isinstance(routes, Mapping):
            raise TypeError(f"routes must be a mapping of 'METHOD /path' to MB, got {routes!r}")
        exact: dict[tuple[str | None, str], Size] = {}
        prefixes: list[tuple[str | None, str, Size]] = []
        for key, given in routes.items():
            if not isinstance(key, str):
                raise TypeError(f"route keys are strings like 'POST /analyze', got {key!r}")
            mb: Size = given  # a callable sizes each request itself, checked per call
            if not callable(given) and not isinstance(given, Need):
                to_bytes_mb(given, f"memory for route {key!r}")
                mb = float(given)
            method, _, path = key.strip().rpartition(" ")
            method_key = method.upper() or None
            if method_key is not None and method_key not in _METHODS:
                raise ValueError(f"route {key!r}: unknown method {method!r}")
            if not path.startswith("/"):
                raise ValueError(f"route {key!r}: the path must start with '/'")
            if path.endswith("*"):
                prefixes.append((method_key, path[:-1], mb))
            else:
                exact[(method_key, path)] = mb
        prefixes.sort(key=lambda p: (-len(p[1]), p[0] is None))
        return cls(exact, tuple(prefixes))

    def largest_fixed_mb(self) -> float:
        """The largest fixed size in the table (0 when there is none)."""
        sizes = [*self.exact.values(), *(mb for _, _, mb in self.prefixes)]
        return max((_host_mb(mb) for mb in sizes if not callable(mb)), default=0.0)

    def need(self, method: str, path: str) -> Size | None:
        """MiB the request needs, or None when the route is not marked. HEAD is a GET
        whose body is dropped (the framework still runs the GET handler), so it needs what
        GET needs."""
        if method == "HEAD" and ("HEAD", path) not in self.exact:
            method = "GET"
        for key in ((method, path), (None, path)):
            if key in self.exact:
                return self.exact[key]
        for m, prefix, mb in self.prefixes:
            if (m is None or m == method) and path.startswith(prefix):
                return mb
        return None


AppT = TypeVar("AppT")


class AdmissionMiddlewareBase(Generic[AppT]):
    """What both admission middlewares (ASGI and WSGI) take: the app they wrap, the
    monitor, the route table (checked for routes that never fit), the wait in line, and
    ``session``: the session a request works on (from its scope or environ; None for
    none), kept from its arrival, so freeing idle memory for others never removes the
    session of a request still waiting in line (it may spill it: it comes back once the
    request is admitted)."""

    def __init__(
        self,
        app: AppT,
        monitor: MemoryMonitor,
        routes: Mapping[str, Size],
        *,
        wait_s: float = 10.0,
        session: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.app = app
        self.monitor = monitor
        self.routes = RouteTable.compile(routes)
        self.wait_s = non_negative("wait_s", wait_s, maximum=3600)
        if session is not None and not callable(session):
            raise TypeError(f"session must be a callable of the request, got {session!r}")
        self.session_of = session
        report_routes_that_never_fit(self.routes, monitor)  # refused even idle: say so now
        if session is not None:  # sessions may not crowd out the largest route
            largest = to_bytes_mb(self.routes.largest_fixed_mb(), "the largest route")
            monitor.gate.budget.keep_room_for(largest)

    def session(self, request: Any) -> tuple[bool, str | None]:
        """Whether the request is new work (for no session, where the app says which it
        works on), and the session it works on (None for none): kept while the request
        waits, pinned and in memory once admitted (``MemoryMonitor.reserve(session=)``)."""
        sid = self.session_of(request) if self.session_of is not None else None
        if not sid or self.monitor.sessions is None:
            return self.session_of is not None, None
        return False, sid


def report_routes_that_never_fit(table: RouteTable, monitor: MemoryMonitor) -> list[str]:
    """Warn (``route_never_fits``) of each fixed route size larger than what admission can
    ever grant at this limit (the limit less the floor): such a route is refused even idle,
    and nothing else says why. The keys, for the caller."""
    reading = monitor.last_reading or monitor.sample()
    grantable = reading.total_bytes - monitor.floor_bytes
    never = []
    sizes = [(m, p, mb) for (m, p), mb in table.exact.items()] + list(table.prefixes)
    for method, path, mb in sizes:
        if not callable(mb) and _host_mb(mb) * MIB > grantable:
            key = f"{method} {path}" if method else path
            never.append(key)
            emit(
                WARNING,
                ROUTE_NEVER_FITS,
                route=key,
                required_bytes=int(_host_mb(mb) * MIB),
                grantable_bytes=max(0, grantable),
                limit_bytes=reading.total_bytes,
            )
    return never


Answer = tuple[int, list[tuple[str, str]], bytes]
REASONS = {404: "Not Found", 413: "Content Too Large", 503: "Service Unavailable"}


def _json(status: int, doc: dict[str, object], *extra: tuple[str, str]) -> Answer:
    body = json.dumps(doc).encode()
    headers = [
        ("content-type", "application/json"),
        *extra,
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
    ]
    return status, headers, body


def _host_mb(size: float | Need) -> float:
    return size.mb if isinstance(size, Need) else float(size)


def error_answer(exc: BaseException) -> Answer | None:
    """The HTTP answer for a library error raised while handling a request, or None for
    anything else: short of memory 503 with Retry-After, an unknown or expired session 404,
    a session over its memory limit 413, a session whose spilled data could not be read
    back (and was removed) 404, torch's CUDA out-of-memory 503 with Retry-After (counted by
    the middlewares). No body names a session id."""
    if isinstance(exc, InsufficientMemoryError):
        return refusal(exc)
    if is_cuda_oom(exc):
        retry = str(CUDA_OOM_RETRY_S)
        doc = {"error": "insufficient_gpu_memory", "detail": "the GPU ran out of memory; "
               "retry later", "retry_after_s": CUDA_OOM_RETRY_S}  # fmt: skip
        return _json(503, doc, ("retry-after", retry))
    if isinstance(exc, SessionNotFoundError):
        return not_found(exc)
    if isinstance(exc, SpillCorruptError):
        return _json(404, {"error": "session_lost", "detail": "the session's data could not "
                           "be read back from disk intact; it was removed"})  # fmt: skip
    if isinstance(exc, SessionMemoryLimitError):
        return _json(
            413,
            {
                "error": "session_memory_limit",
                "detail": "the session would exceed its memory limit",
                "limit_bytes": exc.limit_bytes,
            },
        )
    return None


def not_found(exc: SessionNotFoundError) -> Answer:
    """The 404 answer for a session that is unknown, expired or was freed."""
    return _json(404, {"error": "session_not_found", "detail": str(exc)})


def refusal(exc: InsufficientMemoryError) -> tuple[int, list[tuple[str, str]], bytes]:
    """The 503 answer: status, headers (with Retry-After) and a small JSON body."""
    retry = max(1, round(exc.retry_after_s or 1))
    doc: dict[str, object] = {
        "error": "insufficient_memory",
        "detail": "the service is short of memory; retry later",
        "retry_after_s": retry,
    }
    if isinstance(exc, InsufficientGpuMemoryError):
        doc |= {"error": "insufficient_gpu_memory", "gpu": exc.device,
                "detail": "the GPU is short of memory; retry later"}  # fmt: skip
    return _json(503, doc, ("retry-after", str(retry)))

"""The exporter's own HTTP server: ``/metrics`` on loopback by default, with TLS (each
handshake in its connection's thread, within the client timeout), mutual TLS and basic auth
for exposure beyond it; refuses a configuration that would serve less than it asks for, and
binds nothing until the TLS files have been read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import make_wsgi_app as _prom_wsgi_app

from ..logging import EXPORTER_CLIENT_DROPPED, EXPORTER_EXPOSED, RateLimit, emit

if TYPE_CHECKING:
    from ..debug_memory import DebugMemory
    from ..probes import Probes

DEFAULT_PORT = 9464


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    #: Set for TLS: each connection's handshake then runs in its own thread, within
    #: ``_Handler.timeout``, so one silent client never holds up the accept loop.
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_Handler.timeout)
        wrapped = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            wrapped.do_handshake()
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that stalls, hangs up or fails its handshake: one line, at most one a
        second (with how many were held back), never a traceback on stderr."""
        held = _DROPPED.allow()
        if held is not None:
            exc = sys.exc_info()[1]
            emit(logging.INFO, EXPORTER_CLIENT_DROPPED, error=type(exc).__name__, suppressed=held)


_DROPPED = RateLimit(1.0)


class _Handler(WSGIRequestHandler):
    timeout = 10  # a slow or stalled client is dropped after 10 s of silence

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _guarded(
    app: Callable[..., Any], basic_auth: tuple[str, str] | None,
    debug: Callable[..., Iterable[bytes]] | None = None,
    probes: Callable[..., Iterable[bytes]] | None = None,
) -> Callable[..., Iterable[bytes]]:  # fmt: skip
    """Serve ``/metrics`` (and ``/`` as a pointer to it), ``/debug/memory`` where given;
    404 elsewhere; basic auth, if set, for all of them but the probes (``/readyz``,
    ``/livez``, where given: a kubelet's probe carries no credentials, and they tell only
    the level)."""
    expected = None
    if basic_auth is not None:
        user, password = basic_auth
        expected = f"{user}:{password}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if probes is not None and environ.get("PATH_INFO") in ("/readyz", "/livez"):
            return probes(environ, start_response)
        if expected is not None:
            header = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, token = header.partition(" ")
            try:
                given = base64.b64decode(token, validate=True) if scheme == "Basic" else b""
            except (binascii.Error, ValueError):
                given = b""
            if not hmac.compare_digest(given, expected):
                start_response(
                    "401 Unauthorized",
                    [("WWW-Authenticate", 'Basic realm="metrics"'), ("Content-Length", "0")],
                )
                return [b""]
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/debug/memory" and debug is not None:
            return debug(environ, start_response)
        if path == "/":
            body = b"pathoai-memobs exporter: see /metrics\n"
            start_response(
                "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            )
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]

    return guarded


class MetricsServer:
    """A running exporter: ``url``, ``port``, and ``stop()``."""

    def __init__(self, server: _Server, thread: threading.Thread, scheme: str) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.port = int(port)
        self.host = host.decode() if isinstance(host, bytes) else str(host)
        self.url = f"{scheme}://{self.host}:{self.port}/metrics"

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout_s)


def start_http_server(
    port: int = DEFAULT_PORT,
    addr: str = "127.0.0.1",
    *,
    registry: CollectorRegistry = REGISTRY,
    certfile: str | None = None,
    keyfile: str | None = None,
    client_cafile: str | None = None,
    client_auth_required: bool = False,
    basic_auth: tuple[str, str] | None = None,
    debug: DebugMemory | None = None,
    probes: Probes | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` from a daemon thread, on loopback unless told otherwise.

    For exposure beyond loopback: ``certfile``/``keyfile`` turn on TLS (1.2 or later),
    ``client_cafile`` with ``client_auth_required`` asks for client certificates (mutual
    TLS), and ``basic_auth=(user, password)`` asks for HTTP basic credentials.
    ``port=0`` picks a free port (read it back from ``.port``). ``debug`` (a
    ``debug_memory.DebugMemory``) also serves ``/debug/memory``, off by default; ``probes``
    (a ``probes.Probes``) serves ``/readyz`` and ``/livez`` for Kubernetes.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer 0-65535, got {port!r}")
    if not isinstance(addr, str):
        raise TypeError(f"addr must be a string, got {addr!r}")
    context = _tls_context(certfile, keyfile, client_cafile, client_auth_required)
    app = _guarded(_prom_wsgi_app(registry), _credentials(basic_auth),
                   debug.wsgi if debug is not None else None,
                   probes.wsgi if probes is not None else None)  # fmt: skip
    server_class: type[_Server] = _Server
    if ":" in addr:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = make_server(addr, port, app, server_class, _Handler)  # nothing can fail after it
    server.tls = context
    scheme = "https" if context is not None else "http"
    if not _loopback(addr) and context is None and basic_auth is None:
        emit(logging.WARNING, EXPORTER_EXPOSED, addr=addr, port=port, tls=False, auth=False)
    thread = threading.Thread(target=server.serve_forever, name="pathoai-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread, scheme)


def _tls_context(
    certfile: str | None, keyfile: str | None, cafile: str | None, required: bool
) -> ssl.SSLContext | None:
    """The server's TLS context, built (and its files read) before any port is bound; a
    configuration that would serve less than it asks for is refused."""
    if (certfile is None) != (keyfile is None):
        raise ValueError("certfile and keyfile go together")
    if required and cafile is None:
        raise ValueError("client_auth_required needs client_cafile")
    if certfile is None:
        if cafile is not None or required:
            raise ValueError("client certificates (mutual TLS) need certfile and keyfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if cafile is not None:
        context.load_verify_locations(cafile=cafile)
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return context


def _credentials(basic_auth: object) -> tuple[str, str] | None:
    """A ``(user, password)`` pair of non-empty strings (the user without ``:``), or None."""
    if basic_auth is None:
        return None
    if not isinstance(basic_auth, tuple) or len(basic_auth) != 2:
        raise TypeError("basic_auth must be a (user, password) tuple")
    user, password = basic_auth
    if not isinstance(user, str) or not isinstance(password, str):
        raise TypeError("basic_auth must be a (user, password) tuple of strings")
    if not user or not password or ":" in user:
        raise ValueError("basic_auth needs a non-empty user without ':' and a non-empty password")
    return user, password


def _loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr == "localhost"

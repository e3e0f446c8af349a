"""The exporter's HTTP server under hostile or careless use: silent TLS clients, stalled
clients, configurations that would serve less than they ask for."""

from __future__ import annotations

import logging
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pathoai_memobs.exporters import server as server_module
from pathoai_memobs.exporters.prometheus import start_http_server
from pathoai_memobs.logging import RateLimit

from .certs import make_certs
from .promstack import free_port


def test_a_silent_tls_client_does_not_hold_up_other_scrapes(tmp_path: Path) -> None:
    make_certs(tmp_path)
    srv = start_http_server(
        0,
        registry=CollectorRegistry(),
        certfile=str(tmp_path / "server.pem"),
        keyfile=str(tmp_path / "server.key"),
    )
    silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    try:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        started = time.monotonic()
        with urllib.request.urlopen(srv.url, context=ctx, timeout=5) as r:
            assert r.status == 200
        assert time.monotonic() - started < 3  # not the silent clients' 10 s timeout
    finally:
        for s in silent:
            s.close()
        srv.stop()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"client_auth_required": True}, ValueError),
        ({"client_cafile": "ca.pem"}, ValueError),
        ({"client_cafile": "ca.pem", "client_auth_required": True}, ValueError),
        ({"certfile": "x.pem"}, ValueError),
        ({"basic_auth": "up"}, TypeError),
        ({"basic_auth": ("u", "p", "x")}, TypeError),
        ({"basic_auth": ("u", 5)}, TypeError),
        ({"basic_auth": ("", "p")}, ValueError),
        ({"basic_auth": ("u", "")}, ValueError),
        ({"basic_auth": ("a:b", "p")}, ValueError),
    ],
)
def test_configurations_that_would_serve_less_are_refused_before_binding(
    options: dict[str, object], error: type[Exception]
) -> None:
    port = free_port()
    with pytest.raises(error):
        start_http_server(port, registry=CollectorRegistry(), **options)  # type: ignore[arg-type]
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing was left listening


def test_a_failed_tls_setup_leaves_no_port_bound(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        start_http_server(
            port,
            registry=CollectorRegistry(),
            certfile=str(tmp_path / "bad.pem"),
            keyfile=str(tmp_path / "bad.pem"),
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_stalled_client_is_one_rate_limited_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(server_module._Handler, "timeout", 0.3)
    monkeypatch.setattr(server_module, "_DROPPED", RateLimit(1.0))  # fresh: no earlier drops
    caplog.set_level(logging.INFO)
    srv = start_http_server(0, registry=CollectorRegistry())
    try:
        stalled = []
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            stalled.append(s)
        time.sleep(1.0)
        for s in stalled:
            s.close()
        with urllib.request.urlopen(srv.url, timeout=5) as r:
            assert r.status == 200
    finally:
        srv.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    dropped = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    dropped = [m for m in dropped if m["event"] == "exporter_client_dropped"]
    assert 1 <= len(dropped) <= 2  # five timeouts within a second or so: one line (two at most)

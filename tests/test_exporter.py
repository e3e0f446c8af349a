"""The Prometheus catalogue and exporter: conventions, promtool, docs, serving, abuse."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pathoai_memobs import GarbageCollectionManager, MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.exporters.catalogue import CATALOGUE
from pathoai_memobs.exporters.prometheus import MetricsServer, instrument, start_http_server
from pathoai_memobs.reading import Reading, combine

from .certs import make_certs

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
GIB = 1 << 30


class Settable:
    def __init__(self, available: int, total: int = 8 * GIB) -> None:
        self.available, self.total = available, total

    def sample(self) -> Reading:
        return combine(self.total, self.available, None, None, None, 0, time.time(), 0.0)


def parts() -> tuple[MemoryMonitor, SessionManager, GarbageCollectionManager, Settable]:
    sessions = SessionManager(top_k=3)
    memory = Settable(6 * GIB)
    monitor = MemoryMonitor(MemoryConfig(), sampler=memory, sessions=sessions)
    monitor.register_cleanup_callback(lambda: None, name="model_cache")
    return monitor, sessions, GarbageCollectionManager(), memory


def exposition(registry: CollectorRegistry) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool missing: make test installs Debian's prometheus")
    return found


def test_every_series_follows_the_conventions_and_is_in_the_catalogue() -> None:
    monitor, sessions, gcm, _ = parts()
    registry = CollectorRegistry()
    instrument(monitor, sessions, gcm, registry=registry)
    families = exposition(registry)
    exposed = {
        f.name + ("_total" if f.type == "counter" else "")  # type: ignore[attr-defined]
        for f in families.values()
    }
    # the text parser sees a gauge histogram as a histogram plus _gcount and _gsum gauges
    exposed -= {"pathoai_session_memory_bytes_gcount", "pathoai_session_memory_bytes_gsum"}
    optional = {"pathoai_memory_pressure_stall_ratio", "pathoai_multiprocess_workers"}
    optional.add("pathoai_multiprocess_malformed_files_total")  # multiprocess mode only
    optional.add("pathoai_sessions_budget_bytes")  # once a largest request is declared
    optional.add("pathoai_session_spill_budget_bytes")  # while spilling is on
    optional.add("pathoai_memory_charged_bytes")  # read from a cgroup only
    optional.add("pathoai_worker_recycles_total")  # RecycleCollector, under gunicorn
    optional.add("pathoai_previous_run_info")  # with a state directory and a past run
    optional |= {"pathoai_session_spill_disk_free_bytes", "pathoai_session_spill_disk_size_bytes"}
    optional |= {m.name for m in CATALOGUE if m.name.startswith("pathoai_gpu_")}  # with a GPU
    optional.discard("pathoai_gpu_oom_errors_total")  # caught OOMs: from the start
    assert exposed == {m.name for m in CATALOGUE} - optional  # all exported from the start
    for m in CATALOGUE:
        assert m.name.startswith("pathoai_")
        assert (m.kind == "counter") == m.name.endswith("_total"), m.name
        base = m.name.removesuffix("_total")
        if m.unit:
            assert base.endswith("_" + m.unit), m.name
        assert not re.search(r"_(mb|mib|kb|percent|ms|milliseconds)\b", m.name), m.name
        assert "session_id" not in m.labels and "sid" not in m.labels
    ratio = [
        s.value
        for f in families.values()
        for s in f.samples  # type: ignore[attr-defined]
        if s.name.endswith("_ratio")
    ]
    assert ratio and all(0 <= v <= 1 for v in ratio)


def test_values_match_the_python_api() -> None:
    monitor, sessions, gcm, memory = parts()
    registry = CollectorRegistry()
    instrument(monitor, sessions, gcm, registry=registry)
    ids = [sessions.create_session() for _ in range(5)]
    for i, sid in enumerate(ids):
        sessions.update_session(sid, image=np.ones((i + 1) * MIB, np.uint8))
    sessions.delete_session(ids[0])
    memory.available = 2 * GIB
    text = generate_latest(registry).decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert values[("pathoai_memory_available_bytes", ())] == 2 * GIB
    assert values[("pathoai_memory_used_ratio", ())] == pytest.approx(0.75)
    assert values[("pathoai_sessions_active", ())] == 4
    assert values[("pathoai_sessions_created_total", ())] == 5
    assert values[("pathoai_sessions_removed_total", (("reason", "explicit"),))] == 1
    assert values[("pathoai_sessions_removed_total", (("reason", "emergency"),))] == 0
    agg = sessions.aggregates()
    assert values[("pathoai_session_memory_bytes_gsum", ())] == agg.total_bytes
    assert values[("pathoai_session_memory_max_bytes", ())] == agg.largest_bytes
    top = {k[1][0][1]: v for k, v in values.items() if k[0] == "pathoai_session_top_memory_bytes"}
    assert list(top.values()) == sorted(top.values(), reverse=True) and len(top) == 3
    assert set(top) == {fp for fp, _ in agg.top}
    assert values[("pathoai_cleanup_callback_failures_total", (("callback", "model_cache"),))] == 0
    assert values[("pathoai_memory_emergency_threshold_bytes", ())] == 500 * MIB
    for sid in ids:
        assert sid not in text  # never an id in a label


def test_promtool_check_metrics_finds_nothing(tmp_path: Path) -> None:
    monitor, sessions, gcm, _ = parts()
    sessions.update_session(sessions.create_session(), a=np.ones(MIB))
    registry = CollectorRegistry()
    instrument(monitor, sessions, gcm, registry=registry)
    out = subprocess.run(
        [promtool(), "check", "metrics"],
        input=generate_latest(registry),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out


# -- serving ------------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, SessionManager]]:
    monitor, sessions, gcm, _ = parts()
    registry = CollectorRegistry()
    instrument(monitor, sessions, gcm, registry=registry)
    server = start_http_server(0, registry=registry)
    yield server, sessions
    server.stop()


def get(url: str, **kw: object) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5, **kw) as r:  # type: ignore[arg-type]
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_server_binds_loopback_and_serves_metrics_only(
    served: tuple[MetricsServer, SessionManager],
) -> None:
    server, _ = served
    assert server.host == "127.0.0.1"
    status, body = get(server.url)
    assert status == 200 and b"pathoai_memory_used_ratio" in body
    assert get(server.url.replace("/metrics", "/nope"))[0] == 404


def test_bad_clients_leave_it_serving(served: tuple[MetricsServer, SessionManager]) -> None:
    server, _ = served
    # a slow, partial request holds one thread, not the server
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    # huge headers are refused
    big = socket.create_connection(("127.0.0.1", server.port))
    big.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
    big.settimeout(5)
    reply = big.recv(100)
    assert reply.startswith(b"HTTP/1.0 4") or reply.startswith(b"HTTP/1.1 4") or reply == b""
    big.close()
    # garbage is answered and forgotten
    junk = socket.create_connection(("127.0.0.1", server.port))
    junk.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
    junk.close()
    # many concurrent scrapes all succeed
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: get(server.url)[0], range(64)))
    assert statuses == [200] * 64
    slow.close()
    assert get(server.url)[0] == 200


def test_basic_auth() -> None:
    registry = CollectorRegistry()
    instrument(MemoryMonitor(MemoryConfig(), sampler=Settable(GIB)), registry=registry)
    server = start_http_server(0, registry=registry, basic_auth=("prom", "s3cret"))
    try:
        assert get(server.url)[0] == 401
        for creds, want in ((b"prom:wrong", 401), (b"prom:s3cret", 200)):
            req = urllib.request.Request(
                server.url, headers={"Authorization": "Basic " + base64.b64encode(creds).decode()}
            )
            assert get(req)[0] == want  # type: ignore[arg-type]
    finally:
        server.stop()


def test_mutual_tls(tmp_path: Path) -> None:
    make_certs(tmp_path)
    ca = tmp_path / "ca.pem"
    registry = CollectorRegistry()
    instrument(MemoryMonitor(MemoryConfig(), sampler=Settable(GIB)), registry=registry)
    server = start_http_server(
        0,
        registry=registry,
        certfile=str(tmp_path / "server.pem"),
        keyfile=str(tmp_path / "server.key"),
        client_cafile=str(ca),
        client_auth_required=True,
    )
    try:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(ca))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(server.url, context=ctx, timeout=5).read()
        ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        status, body = get(server.url, context=ctx)
        assert status == 200 and b"pathoai_memory_used_ratio" in body
        assert get(server.url, context=ctx)[0] == 200  # still serving after the refusal
    finally:
        server.stop()


def test_bad_server_options_are_refused() -> None:
    with pytest.raises(ValueError):
        start_http_server(0, client_auth_required=True)
    with pytest.raises(ValueError):
        start_http_server(0, certfile="x.pem")


def test_asgi_and_wsgi_mounts() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from pathoai_memobs.exporters.prometheus import make_asgi_app

    registry = CollectorRegistry()
    instrument(MemoryMonitor(MemoryConfig(), sampler=Settable(GIB)), registry=registry)
    app = Starlette(routes=[Mount("/metrics", make_asgi_app(registry))])
    with TestClient(app) as client:
        r = client.get("/metrics/")
        assert r.status_code == 200 and "pathoai_memory_used_ratio" in r.text
    threading.enumerate()  # nothing left behind to assert: TestClient closed the loop

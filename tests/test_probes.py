"""Kubernetes probes: /readyz flips with EMERGENCY and a stale monitor, /livez with the
monitor's thread; served by the exporter (without its basic auth), as WSGI and as ASGI."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.exporters.server import start_http_server
from pathoai_memobs.pressure import Level
from pathoai_memobs.probes import Probes, readiness

from .scripted import Scripted, wait_for

MIB, GIB = 1 << 20, 1 << 30


def test_readiness_is_a_pure_decision() -> None:
    assert readiness(Level.CRITICAL, 100.0, 101.0, 5.0) == (True, "ok")
    assert readiness(Level.EMERGENCY, 100.0, 101.0, 5.0) == (False, "emergency")
    assert readiness(Level.NORMAL, 100.0, 106.0, 5.0) == (False, "stale")
    lenient = readiness(Level.EMERGENCY, 100.0, 101.0, 5.0, unready_in_emergency=False)
    assert lenient == (True, "ok")


def fetch(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def status(url: str, auth: str | None = None) -> int:
    return fetch(url, auth)[0]


def get(url: str) -> tuple[int, dict[str, object]]:
    code, body = fetch(url)
    return code, json.loads(body or b"{}")


def test_the_exporter_serves_probes_that_follow_the_monitor_without_credentials() -> None:
    memory = Scripted(4 * GIB, total=8 * GIB)
    m = MemoryMonitor(MemoryConfig(monitoring_interval_sec=0.05), sampler=memory)
    server = start_http_server(0, registry=CollectorRegistry(), basic_auth=("u", "p"),
                               probes=Probes(m, stale_after_s=1.0))  # fmt: skip
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(f"{base}/livez") == (503, {"alive": False, "reason": "not_running"})
        m.start()
        wait_for(lambda: get(f"{base}/readyz")[0] == 200)
        assert get(f"{base}/livez") == (200, {"alive": True})
        assert get(f"{base}/readyz")[1] == {"ready": True, "reason": "ok", "level": "NORMAL"}
        memory.available = 100 * MIB  # under the 500 MB floor
        wait_for(lambda: get(f"{base}/readyz")[0] == 503)
        assert get(f"{base}/readyz")[1]["reason"] == "emergency"
        memory.available = 4 * GIB
        wait_for(lambda: get(f"{base}/readyz")[0] == 200)
        memory.fail = OSError("the cgroup vanished")  # readings fail: the monitor goes stale
        wait_for(lambda: get(f"{base}/readyz")[1].get("reason") == "stale", timeout=5)
        assert status(f"{base}/metrics") == 401  # the metrics keep their credentials
        assert status(f"{base}/metrics", "u:p") == 200
    finally:
        m.stop()
        server.stop()


def test_the_probes_mount_in_an_asgi_app_and_take_their_setting() -> None:
    memory = Scripted(100 * MIB, total=8 * GIB)  # EMERGENCY from the first reading
    m = MemoryMonitor(MemoryConfig(), sampler=memory)
    m.sample()
    strict = Starlette(routes=[Mount("/healthz", app=Probes(m).asgi)])
    lenient = Starlette(routes=[Mount("/healthz", app=Probes(m, unready_in_emergency=False).asgi)])
    assert TestClient(strict).get("/healthz/readyz").status_code == 503
    assert TestClient(lenient).get("/healthz/readyz").json() == {
        "ready": True, "reason": "ok", "level": "EMERGENCY",
    }  # fmt: skip
    assert TestClient(strict).get("/healthz/other").status_code == 404


BAD_SETTINGS = [
    ({"stale_after_s": 0}, ValueError),
    ({"stale_after_s": True}, ValueError),
    ({"unready_in_emergency": "yes"}, TypeError),
]


@pytest.mark.parametrize(("kw", "error"), BAD_SETTINGS)
def test_bad_probe_settings_are_refused(kw: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Probes(MemoryMonitor(MemoryConfig(), sampler=Scripted(GIB)), **kw)  # type: ignore[arg-type]

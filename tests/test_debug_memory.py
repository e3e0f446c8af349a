"""/debug/memory: off unless asked, behind the exporter's auth, one request at a time;
the summary (no session id, key or content), each action, bad input, and `top` reading it.
A real exporter server on loopback, real sessions and real tracemalloc."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.debug_memory import DebugMemory
from pathoai_memobs.exporters.server import MetricsServer, start_http_server

MIB = 1 << 20
AUTH = ("oncall", "s3cret")


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, SessionManager, str]]:
    sessions = SessionManager()
    monitor = MemoryMonitor(MemoryConfig(enable_background_monitoring=False), sessions=sessions)
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.ones(8 * MIB, np.uint8), patient="Jane Doe")
    server = start_http_server(0, registry=CollectorRegistry(), basic_auth=AUTH,
                               debug=DebugMemory(monitor))  # fmt: skip
    yield server, sessions, sid
    server.stop()
    if tracemalloc.is_tracing():
        tracemalloc.stop()


def get(server: MetricsServer, query: str = "", auth: tuple[str, str] | None = AUTH) -> Any:
    url = f"http://127.0.0.1:{server.port}/debug/memory{query}"
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read().decode()
    return json.loads(body) if "format=json" in query or "action=" in query else body


def test_it_is_off_unless_asked_for() -> None:
    server = start_http_server(0, registry=CollectorRegistry())
    try:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/debug/memory", timeout=10)
        assert missing.value.code == 404
    finally:
        server.stop()


def test_the_summary_says_what_holds_memory_and_never_a_secret(
    served: tuple[MetricsServer, SessionManager, str],
) -> None:
    server, sessions, sid = served
    with pytest.raises(urllib.error.HTTPError) as denied:
        get(server, "?format=json", auth=None)
    assert denied.value.code == 401  # the exporter's basic auth guards it too
    doc = get(server, "?format=json")
    assert doc["reading"]["level"] == "NORMAL" and doc["managed_bytes"] >= 8 * MIB
    (largest,) = doc["sessions"]["largest"]
    assert largest["session"] == sessions.get_session(sid).fingerprint  # type: ignore[union-attr]
    assert largest["values"][0] == {"type": "ndarray", "bytes": largest["values"][0]["bytes"]}
    assert {"counts", "frozen", "generations"} <= set(doc["gc"])
    raw = json.dumps(doc)
    assert sid not in raw and "Jane Doe" not in raw and "patient" not in raw and "slide" not in raw
    text = get(server)
    assert "managed" in text and largest["session"] in text and sid not in text


def test_actions_trace_snapshot_diff_trim_collect(
    served: tuple[MetricsServer, SessionManager, str],
) -> None:
    server, _, _ = served
    assert get(server, "?action=snapshot")["tracing"] is False  # a hint, not an error
    started = get(server, "?action=trace&frames=5&seconds=30")
    assert started == {"tracing": True, "started": True, "frames": 5, "stops_after_s": 30.0}
    hoard = [bytearray(4096) for _ in range(2000)]  # noqa: F841 -- allocated while tracing
    snap = get(server, "?action=snapshot")
    assert snap["top"] and "objects_by_type" in snap
    more = [bytearray(8192) for _ in range(2000)]  # noqa: F841
    diff = get(server, "?action=diff")
    assert diff["diff"] and max(d["size_diff_bytes"] for d in diff["diff"]) > 8 * MIB
    assert get(server, "?action=trim")["returned_bytes"] >= 0
    assert get(server, "?action=collect")["collected"] >= 0


@pytest.mark.parametrize("query", ["?action=nope", "?action=trace&frames=0",
                                   "?action=trace&seconds=x"])  # fmt: skip
def test_bad_actions_are_400_and_change_nothing(
    served: tuple[MetricsServer, SessionManager, str], query: str
) -> None:
    server, _, _ = served
    with pytest.raises(urllib.error.HTTPError) as bad:
        get(server, query)
    assert bad.value.code == 400 and "error" in json.loads(bad.value.read())
    assert not tracemalloc.is_tracing()


def test_one_request_at_a_time() -> None:
    monitor = MemoryMonitor(MemoryConfig(enable_background_monitoring=False))
    view = DebugMemory(monitor)
    statuses: list[str] = []
    assert view._busy.acquire()  # a request in progress
    try:
        view.wsgi({"QUERY_STRING": ""}, lambda status, headers: statuses.append(status))
    finally:
        view._busy.release()
    assert statuses == ["429 Too Many Requests"]
    view.wsgi({"QUERY_STRING": "format=json"}, lambda status, headers: statuses.append(status))
    assert statuses[-1] == "200 OK"


def test_top_shows_it_once_as_json_and_refreshing_as_text() -> None:
    plain = start_http_server(0, registry=CollectorRegistry(), debug=DebugMemory(
        MemoryMonitor(MemoryConfig(enable_background_monitoring=False))))  # fmt: skip
    try:
        url = f"http://127.0.0.1:{plain.port}/debug/memory"
        cmd = [sys.executable, "-m", "pathoai_memobs", "top", "--url", url]
        once = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert once.returncode == 0, once.stderr
        assert "reading" in json.loads(once.stdout)
        live = subprocess.run([*cmd, "--interval", "0.2", "--seconds", "1"], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        assert live.returncode == 0 and live.stdout.count("memory    ") >= 2
        gone = subprocess.run([sys.executable, "-m", "pathoai_memobs", "top", "--url",
                               "http://127.0.0.1:1/debug/memory", "--json"],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert gone.returncode == 1 and "cannot read" in gone.stderr
    finally:
        plain.stop()


def test_a_slow_look_answers_503_and_holds_off_the_next_until_it_ends() -> None:
    monitor = MemoryMonitor(MemoryConfig(enable_background_monitoring=False))
    view = DebugMemory(monitor)
    view.max_wait_s = 0.2
    release = threading.Event()
    real = view.summary

    def slow() -> dict[str, Any]:
        release.wait(10)  # a snapshot of a huge heap, say
        return real()

    view.summary = slow  # type: ignore[method-assign]
    statuses: list[str] = []
    view.wsgi({"QUERY_STRING": ""}, lambda status, headers: statuses.append(status))
    view.wsgi({"QUERY_STRING": ""}, lambda status, headers: statuses.append(status))
    assert statuses == ["503 Service Unavailable", "429 Too Many Requests"]
    release.set()
    view.summary = real  # type: ignore[method-assign]
    deadline = time.monotonic() + 5
    while not view._busy.acquire(blocking=False):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    view._busy.release()
    view.wsgi({"QUERY_STRING": "format=json"}, lambda status, headers: statuses.append(status))
    assert statuses[-1] == "200 OK"

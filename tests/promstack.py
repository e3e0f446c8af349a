"""Real Prometheus (and Alertmanager) processes for tests: loopback, temporary data, cleanup.

Started from the Debian packages that `make test` installs; a missing binary fails under
CI (where `make test` must have installed it) and skips elsewhere, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from pathoai_memobs.tools import stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"{names[0]} is not installed (make test installs the Debian package)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


class Prometheus:
    """``pathoai_memobs.tools.stack.prometheus`` on a free port, with query helpers for tests."""

    def __init__(self, workdir: Path, scrape_targets: list[str], rule_files: list[Path] = (),
                 alertmanager: str | None = None, interval: str = "1s") -> None:  # fmt: skip
        binary("prometheus")
        self.port = free_port()
        self.service = stack.prometheus(
            workdir, scrape_targets, port=self.port, rule_files=list(rule_files),
            alertmanager=alertmanager, interval=interval,
        )  # fmt: skip
        self.url = self.service.url

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, promql: str, predicate: Any, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.value(promql)
            if value is not None and predicate(value):
                return value
            time.sleep(0.25)
        raise AssertionError(f"{promql} never satisfied the condition (last: {value})")

    def stop(self) -> None:
        self.service.stop()


def check_stack_command(command: list[str], cwd: str | None = None) -> None:
    """Run ``<command> stack`` for a few seconds and check what it promises: Prometheus with
    the shipped rules and Alertmanager on loopback, both gone after it stops (SIGTERM)."""
    import subprocess

    binary("prometheus")
    binary("prometheus-alertmanager", "alertmanager")
    prom, am = free_port(), free_port()
    argv = [*command, "stack", "--duration", "8", "--target", "127.0.0.1:9"]
    argv += ["--prometheus-port", str(prom), "--alertmanager-port", str(am)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("prometheus") and f"127.0.0.1:{prom}" in first, first
        with urllib.request.urlopen(f"http://127.0.0.1:{prom}/api/v1/rules", timeout=5) as r:
            rules = json.loads(r.read())["data"]["groups"]
        assert any(g["name"] == "pathoai-memory.alerts" for g in rules)
        with urllib.request.urlopen(f"http://127.0.0.1:{am}/-/ready", timeout=5) as r:
            assert r.status == 200
        out, err = proc.communicate(timeout=60)
    finally:
        stack.terminate(proc)  # SIGTERM first: the stack command then stops its own servers
    assert proc.returncode == 0, err
    assert "stack stopped" in out
    assert_nothing_serves(prom, am)


def assert_nothing_serves(*ports: int) -> None:
    """Fail if anything still answers on these loopback ports (after a short grace)."""
    time.sleep(0.5)
    for port in ports:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
            raise AssertionError(f"port {port} still served after stop")
        except OSError:
            pass


class Webhook:
    """Alertmanager's receivers, inside the test: records every notification."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, str]] = []  # (time, receiver, alert, status)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for alert in body["alerts"]:
                    hook.events.append(
                        (
                            time.time(),
                            self.path.strip("/"),
                            alert["labels"]["alertname"],
                            alert["status"],
                        )
                    )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def first(self, alert: str, status: str) -> float | None:
        return next((t for t, _, a, s in self.events if a == alert and s == status), None)

    def wait(self, alert: str, status: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first(alert, status)
            if found is not None:
                return found
            time.sleep(0.2)
        raise AssertionError(f"{alert} {status} never reached the webhook: {self.events}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alertmanager_config(target: Path, webhook: str, *, fast: bool = True) -> Path:
    """The shipped routing with its receivers pointed at ``webhook`` (and, when ``fast``,
    group waits of 1 s, so a test sees a notification at once)."""
    doc = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "alerts" / "alertmanager.yml").read_text()
    )
    for receiver in doc["receivers"]:
        receiver["webhook_configs"][0]["url"] = f"{webhook}/{receiver['name']}"
    for route in [doc["route"], *doc["route"]["routes"]] if fast else []:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    target.write_text(yaml.safe_dump(doc))
    return target

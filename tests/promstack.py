"""Real Prometheus (and Alertmanager) processes for tests: loopback, temporary data, cleanup.

Started from the Debian packages that `make test` installs; a missing binary fails under
CI (where `make test` must have installed it) and skips elsewhere, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pathoai_memobs import stack


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
    """``pathoai_memobs.stack.prometheus`` on a free port, with query helpers for tests."""

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

"""A local monitoring stack: the real Prometheus and Alertmanager (Debian packages that
``make`` installs) on loopback, with the shipped rules and routing, pointed at a target.

Used by ``pathoai-memobs stack`` (``main``) and by the tests. Each service runs in a
temporary directory that is removed when it stops; nothing listens beyond 127.0.0.1. The
rules and routing come from ``assets``, so an installed wheel runs it without a checkout.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any, TextIO

from . import assets


class StackError(RuntimeError):
    """A stack component is missing or did not start; the message says which and why."""


def find_binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(f"{names[0]} is not installed (make installs the Debian package)")


def wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise StackError(f"{name} exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{url} not ready after {timeout_s:.0f} s")
        time.sleep(0.2)


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not exited in ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Service:
    """A started server process with its URL and working directory."""

    def __init__(self, name: str, argv: list[str], url: str, workdir: Path, ready: str) -> None:
        self.name, self.url, self.workdir = name, url, workdir
        self._log: IO[bytes] = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 -- stop() closes
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_ready(name, url + ready, self.proc)
        except StackError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 15.0) -> None:
        terminate(self.proc, timeout_s)
        self._log.close()


def prometheus(
    workdir: Path,
    targets: list[str],
    *,
    port: int,
    rule_files: list[Path] | None = None,
    alertmanager: str | None = None,
    interval: str = "5s",
) -> Service:
    """Prometheus scraping ``targets`` (job ``pathoai``) with ``rule_files``."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in (rule_files or [])],
        "scrape_configs": [{"job_name": "pathoai", "static_configs": [{"targets": targets}]}],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    argv = [
        find_binary("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--rules.alert.resend-delay=1s",
        "--log.level=warn",
    ]
    return Service("prometheus", argv, f"http://127.0.0.1:{port}", workdir, "/-/ready")


def alertmanager(workdir: Path, config: Path, *, port: int) -> Service:
    """Alertmanager on loopback, clustering off (nothing listens beyond 127.0.0.1)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_binary("prometheus-alertmanager", "alertmanager"),
        f"--config.file={config}",
        f"--storage.path={workdir / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    return Service("alertmanager", argv, f"http://127.0.0.1:{port}", workdir, "/-/ready")


class Stack:
    """Prometheus + Alertmanager with the shipped assets, in one temporary directory."""

    def __init__(self, target: str, *, prometheus_port: int = 9090, alertmanager_port: int = 9093,
                 interval: str = "5s") -> None:  # fmt: skip
        self.dir = Path(tempfile.mkdtemp(prefix="pathoai-stack-"))
        self.services: list[Service] = []
        try:
            assets.write(self.dir / "assets")  # the shipped rules, routing and dashboards
            rules = self.dir / "assets" / "alerts" / "pathoai-memory.rules.yml"
            routing = self.dir / "assets" / "alerts" / "alertmanager.yml"
            am = alertmanager(self.dir, routing, port=alertmanager_port)
            self.services.append(am)
            self.services.append(
                prometheus(
                    self.dir,
                    [target],
                    port=prometheus_port,
                    rule_files=[rules],
                    alertmanager=f"127.0.0.1:{alertmanager_port}",
                    interval=interval,
                )
            )
        except BaseException:
            self.stop()
            raise

    def urls(self) -> dict[str, str]:
        return {s.name: s.url for s in self.services}

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services = []
        shutil.rmtree(self.dir, ignore_errors=True)


def main(
    target: str,
    prometheus_port: int,
    alertmanager_port: int,
    duration: float,
    out: TextIO = sys.stdout,
) -> int:
    """Start Prometheus and Alertmanager pointed at ``target``; stop them, and remove their
    temporary directory, on Ctrl-C, SIGTERM or when ``duration`` (0: never) runs out."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        try:
            stack = Stack(
                target, prometheus_port=prometheus_port, alertmanager_port=alertmanager_port
            )
        except StackError as exc:
            print(f"stack: {exc}", file=sys.stderr)
            return 1
        try:
            urls = stack.urls()
            print(
                f"prometheus    {urls['prometheus']}  (scraping {target}, rules loaded)", file=out
            )
            print(f"alertmanager  {urls['alertmanager']}", file=out)
            grafana = stack.dir / "assets" / "grafana" / "provisioning"
            print(f"grafana       point your Grafana's provisioning at {grafana}", file=out)
            print(f"workdir       {stack.dir} (removed on stop)", file=out)
            print("Ctrl-C or SIGTERM stops everything.", file=out, flush=True)
            stop.wait(duration if duration > 0 else None)
        finally:
            stack.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stack stopped", file=out, flush=True)
    return 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

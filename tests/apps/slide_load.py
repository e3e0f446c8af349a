"""The realistic load test of the serving issue: the slide service in a real memory-limited
cgroup, served by uvicorn (one process) or gunicorn (uvicorn workers), and concurrent
clients that upload, analyse, read, pause and often abandon their session, obeying
Retry-After. ``run_load`` returns what the clients got; ``make bench`` and the short test
in ``make test`` both call it.

Each client keeps one keep-alive connection, so under gunicorn its requests stay with the
worker that holds its session, and the clients are spread evenly over the workers (as a
sticky load balancer would place them: gunicorn's workers race for each connection, and
one often takes them all). A connection found on a worker that has its share already is
closed and opened again (``Balancer``).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathoai_memobs.tools.cgroup_sandbox import create_memory_cgroup

GIB = 1 << 30
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Tally:
    """What every client saw, merged."""

    statuses: dict[str, int] = field(default_factory=dict)
    analyses: list[float] = field(default_factory=list)  # latency of each successful one
    lost: int = 0  # a request that found its session gone
    no_retry_after: int = 0  # 503s without a Retry-After
    other_5xx: int = 0
    #: connection errors (the server, or a worker, died under the client) by exception and route
    broken: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, what: str) -> None:
        """One more of ``what`` (lost, no_retry_after), from any client thread."""
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)

    def count_broken(self, kind: str) -> None:
        with self.lock:
            self.broken[kind] = self.broken.get(kind, 0) + 1

    def count(self, route: str, status: int) -> None:
        with self.lock:
            key = f"{route} {status}"
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if status >= 500 and status != 503:
                self.other_5xx += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Balancer:
    """Where the clients' connections landed (worker pid -> how many), so each worker gets
    ``share`` of them; ``None`` share: one process, nothing to balance."""

    def __init__(self, share: int | None) -> None:
        self.share = share
        self.lock = threading.Lock()
        self.count: dict[int, int] = {}
        self.tries = 0

    def connect(self, port: int) -> http.client.HTTPConnection:
        """A keep-alive connection on a worker with room (after up to 200 tries, any)."""
        for _ in range(200):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if self.share is None:
                return conn
            try:
                conn.request("GET", "/worker")
                response = conn.getresponse()
                pid = int(response.read())
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                time.sleep(0.1)
                continue
            with self.lock:
                self.tries += 1
                if self.count.get(pid, 0) < self.share:
                    self.count[pid] = self.count.get(pid, 0) + 1
                    return conn
            conn.close()
            time.sleep(0.01)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60)


class Client:
    """One user: a keep-alive connection, a loop of upload, analyse, read, pause."""

    def __init__(
        self, port: int, tally: Tally, rng: random.Random, abandon: float, *, burst: bool,
        slide_mb: tuple[int, int] = (150, 300), balancer: Balancer | None = None,
    ) -> None:  # fmt: skip
        self.port, self.tally, self.rng, self.abandon = port, tally, rng, abandon
        self.slide_mb = slide_mb
        self.burst = burst  # uploads only, every session abandoned: the gunicorn burst
        self.balancer = balancer or Balancer(None)
        self.conn = self.balancer.connect(port)

    def call(self, method: str, route: str, query: str, deadline: float) -> tuple[int, Any]:
        """One request, retried after each 503 as its Retry-After says, until the deadline;
        one still unanswered then is given up (the run is over: it is not counted)."""
        while True:
            started = time.monotonic()
            if started >= deadline:
                return 0, None
            try:
                if self.conn.sock is None:
                    self.conn.connect()
                assert self.conn.sock is not None
                self.conn.sock.settimeout(deadline - started)
                self.conn.request(method, f"{route}?{query}")
                response = self.conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                # a worker died (its replacement takes the client), or the run ended while
                # this request waited (its socket timed out at the deadline): not counted
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if time.monotonic() >= deadline:
                    return 0, None
                self.tally.count_broken(f"{type(exc).__name__} {method} {route}")
                time.sleep(0.5)
                continue
            self.tally.count(f"{method} {route}", response.status)
            if response.status == 200 and route == "/analyze":
                with self.tally.lock:
                    self.tally.analyses.append(time.monotonic() - started)
            if response.status != 503:
                return response.status, json.loads(body) if body else None
            hint = response.getheader("Retry-After")
            if hint is None:
                self.tally.note("no_retry_after")
            wait = float(hint) if hint else 1.0
            if time.monotonic() + wait > deadline:
                return 503, None
            time.sleep(wait)

    def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            mb = self.rng.randint(*self.slide_mb)
            status, body = self.call("POST", "/upload", f"mb={mb}", deadline)
            if status != 200:
                continue
            sid = body["session"]
            if self.burst:
                continue
            for method, route in (("POST", "/analyze"), ("GET", "/result")):
                status, _ = self.call(method, route, f"session={sid}", deadline)
                if status == 404:
                    self.tally.note("lost")
                if status != 200:
                    break
            time.sleep(self.rng.uniform(0.5, 2.0))
            if self.rng.random() >= self.abandon:  # the others close the tab
                self.call("DELETE", "/session", f"session={sid}", deadline)
        self.conn.close()


def _server_argv(port: int, workers: int) -> list[str]:
    app = "tests.apps.slide_service:app"
    if workers == 0:  # one uvicorn process
        return [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--timeout-keep-alive",
            "120",
        ]
    return [sys.executable, "-m", "gunicorn", app, "-k", "uvicorn.workers.UvicornWorker",
            "-w", str(workers), "-b", f"127.0.0.1:{port}", "--keep-alive", "120",
            "--log-level", "warning", "--graceful-timeout", "5"]  # fmt: skip


def _wait_ready(port: int, proc: subprocess.Popen[Any], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before serving")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/result?session=x")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start serving in time")


def run_load(
    mode: str,
    *,
    seconds: float = 90,
    clients: int = 12,
    workers: int = 0,
    limit_bytes: int = 2 * GIB,
    abandon: float = 0.5,
    seed: int = 1,
    burst: bool = False,
    ledger: bool = True,
    env: dict[str, str] | None = None,
    slide_mb: tuple[int, int] = (150, 300),
    spill: bool = True,
) -> dict[str, Any]:
    """Serve ``mode`` in a fresh cgroup of ``limit_bytes`` (``workers`` = 0: one uvicorn
    process, else gunicorn with that many) and drive ``clients`` for ``seconds``. ``burst``:
    uploads only; ``ledger``: the workers share one (set False to show what it prevents);
    ``slide_mb``: the range of the clients' slide sizes; ``spill``: the library spills idle
    sessions to a directory on disk (/var/tmp: /tmp may be tmpfs), removed afterwards."""
    group = create_memory_cgroup(limit_bytes, prefix="pathoai-load")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pathoai-load-") as shared:
        environ = {**os.environ, "SLIDE_MODE": mode, "PYTHONPATH": str(ROOT), **(env or {})}
        if workers and ledger:
            environ["MEMORY_LEDGER_DIR"] = shared
        if workers:  # the workaround's semaphore and session cap span the workers (files)
            environ.setdefault("SLIDE_HEAVY_LOCK_DIR", shared)
            environ.setdefault("SLIDE_SESSION_SLOTS_DIR", shared)
        spill_dir = None
        if spill and mode == "library" and "SESSION_SPILL_DIR" not in environ:
            parent = "/var/tmp" if os.path.isdir("/var/tmp") else None
            spill_dir = tempfile.mkdtemp(prefix="pathoai-load-spill-", dir=parent)
            environ["SESSION_SPILL_DIR"] = spill_dir
        proc = group.popen(_server_argv(port, workers), cwd=ROOT, env=environ,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        try:
            _wait_ready(port, proc)
            tally = Tally()
            balancer = Balancer(-(-clients // workers) if workers else None)
            users = [Client(port, tally, random.Random(seed * 1000 + i), abandon, burst=burst,
                            slide_mb=slide_mb, balancer=balancer)
                     for i in range(clients)]  # fmt: skip
            deadline = time.monotonic() + seconds
            threads = [threading.Thread(target=u.run, args=(deadline,)) for u in users]
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 120)
            alive = proc.poll() is None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            oom = group.oom_kills()
            group.remove()
            if spill_dir is not None:
                shutil.rmtree(spill_dir, ignore_errors=True)
    report = summarize(mode, workers, seconds, tally, oom=oom, alive=alive, err=err)
    report["clients_per_worker"] = sorted(balancer.count.values())
    return report


def summarize(
    mode: str, workers: int, seconds: float, tally: Tally, *, oom: int, alive: bool, err: str
) -> dict[str, Any]:
    """The report's numbers (see bench/RESULTS.md)."""
    total = sum(tally.statuses.values())
    refused = sum(n for k, n in tally.statuses.items() if k.endswith(" 503"))
    lat = sorted(tally.analyses)
    return {
        "mode": mode,
        "server": "uvicorn" if workers == 0 else f"gunicorn x{workers}",
        "analyses": len(lat),
        "goodput_per_min": len(lat) / seconds * 60,
        "requests": total,
        "share_503": refused / total if total else 0.0,
        "p50_s": statistics.median(lat) if lat else None,
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "lost": tally.lost,
        "oom_kills": oom,
        "alive": alive,
        "broken": sum(tally.broken.values()),
        "broken_kinds": tally.broken,
        "no_retry_after": tally.no_retry_after,
        "other_5xx": tally.other_5xx,
        "statuses": tally.statuses,
        "stderr_tail": err[-1500:],
    }


if __name__ == "__main__":  # python -m tests.apps.slide_load MODE [SECONDS [WORKERS [burst]]]
    mode = sys.argv[1] if len(sys.argv) > 1 else "library"
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    flags = sys.argv[4:]
    report = run_load(mode, seconds=secs, workers=n, burst="burst" in flags,
                      ledger="noledger" not in flags)  # fmt: skip
    print(json.dumps(report, indent=1))

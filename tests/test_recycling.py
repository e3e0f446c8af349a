"""Memory-based worker recycling with real gunicorn in a real memory-limited cgroup: a
leaking worker is recycled before the container is OOM-killed, no request fails, one worker
recycles at a time, and each recycle is counted and logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pathoai_memobs.exporters.recycles import RecycleCollector
from pathoai_memobs.recycling import WorkerRecycler, recycles, should_recycle
from pathoai_memobs.tools.cgroup_sandbox import MemoryCgroup

from .promstack import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

APP = """
import os
LEAK = []  # what a leaking C extension or an unbounded global does

def app(environ, start_response):
    LEAK.append(b"x" * (8 << 20))  # 8 MiB written: resident at once
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""

CONF = """
import sys
sys.path.insert(0, {root!r})
from pathoai_memobs.logging import configure_logging
from pathoai_memobs.recycling import WorkerRecycler

configure_logging("json")
bind = "127.0.0.1:{port}"
workers = 2
graceful_timeout = 10
WorkerRecycler(max_growth_mb=64, lock_dir={locks!r}, check_interval_s=0.1,
               warmup_s=0).install(globals())
"""


def test_the_decision_is_pure_and_bad_settings_are_refused(tmp_path: Path) -> None:
    assert should_recycle(200 * MIB, 100 * MIB, 64 * MIB)
    assert not should_recycle(164 * MIB, 100 * MIB, 64 * MIB)
    for bad in ({"max_growth_mb": 0}, {"max_growth_mb": True}, {"check_interval_s": -1},
                {"warmup_s": -1}):  # fmt: skip
        with pytest.raises(ValueError):
            WorkerRecycler(**{"max_growth_mb": 64, **bad}, lock_dir=tmp_path)  # type: ignore[arg-type]
    assert recycles(tmp_path) == 0


def test_a_leaking_gunicorn_worker_is_recycled_and_no_request_fails(
    tmp_path: Path, make_cgroup: Callable[[int], MemoryCgroup]
) -> None:
    group = make_cgroup(400 * MIB)  # the leak below is 800 MiB: without recycling, OOM
    port, locks = free_port(), tmp_path / "locks"
    (tmp_path / "leaky.py").write_text(APP)
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(CONF.format(root=str(ROOT), port=port, locks=str(locks)))
    log = (tmp_path / "gunicorn.log").open("w+")
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(conf),
        "--chdir",
        str(tmp_path),
        "leaky:app",
    ]
    server = group.popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=30)
        statuses: list[int] = []
        pids: set[str] = set()
        lock = threading.Lock()

        def client() -> None:
            for _ in range(50):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
                        code, pid = r.status, r.read().decode()
                except OSError as exc:  # a refused or reset connection is a failed request
                    code, pid = getattr(exc, "code", 0) or 0, ""
                with lock:
                    statuses.append(code)
                    pids.add(pid)
                time.sleep(0.02)

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(statuses) == 100 and set(statuses) == {200}, statuses
        assert group.oom_kills() == 0
        assert server.poll() is None  # the master is alive
        assert recycles(locks) >= 3  # 800 MiB of leak in 64 MiB steps over two workers
        assert len(pids) >= 4  # fresh workers served
    finally:
        server.terminate()
        server.wait(timeout=30)
    log.seek(0)
    events = [json.loads(line) for line in log if line.startswith("{")]
    recycled = [e for e in events if e.get("event") == "worker_recycling"]
    assert len(recycled) == recycles(locks)
    assert all(e["unmanaged_bytes"] - e["baseline_bytes"] > 64 * MIB for e in recycled)
    registry = CollectorRegistry()
    registry.register(RecycleCollector(locks))
    scraped = generate_latest(registry).decode()
    assert f"pathoai_worker_recycles_total {float(recycles(locks))}" in scraped

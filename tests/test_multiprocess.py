"""Multiprocess mode under a real gunicorn with 4 workers: one /metrics for all of them."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pathoai_memobs.tools.stack import terminate

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def wait_until(fn: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if fn():  # type: ignore[operator]
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout} s (last error: {last})")


@contextlib.contextmanager
def explained_by(log_path: Path) -> Iterator[None]:
    """Re-raise a failure with the tail of the server's log, which says why a worker died."""
    try:
        yield
    except (AssertionError, OSError) as exc:
        tail = log_path.read_bytes()[-4000:].decode(errors="replace")
        raise AssertionError(f"{exc!r}\n-- gunicorn's log --\n{tail}") from exc


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """gunicorn -w 4 with its log in a file (a pipe nobody reads would block it once full),
    the log's tail added to any failure so a worker's death says why."""
    app_port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "gunicorn.log"
    env = dict(
        os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PATHOAI_METRICS_PORT=str(metrics_port)
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-w",
                "4",
                "-b",
                f"127.0.0.1:{app_port}",
                "-c",
                "tests/apps/gunicorn_app.py",
                "--log-level",
                "warning",
                "tests.apps.gunicorn_app:app",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:  # the server has its own copy of the log's descriptor
        with explained_by(log_path):
            wait_until(lambda: scrape(metrics_port)[("pathoai_multiprocess_workers", ())] == 4)
        yield app_port, metrics_port, log_path
    finally:
        terminate(proc, 20)


def test_four_workers_one_metrics_and_a_dead_worker_goes_away(
    gunicorn: tuple[int, int, Path],
) -> None:
    app_port, metrics_port, log_path = gunicorn
    with explained_by(log_path):
        _four_workers_then_one_killed(app_port, metrics_port)


def _four_workers_then_one_killed(app_port: int, metrics_port: int) -> None:
    served: collections.Counter[int] = collections.Counter()
    for _ in range(40):
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/session", timeout=5) as r:
            served[int(r.read())] += 1
    m = scrape(metrics_port)
    assert m[("pathoai_sessions_active", ())] == 40
    assert m[("pathoai_sessions_created_total", ())] == 40
    assert m[("pathoai_session_memory_bytes_gsum", ())] >= 40 * (1 << 20)
    assert m[("pathoai_monitor_running", ())] == 4  # every worker's monitor thread
    assert m[("pathoai_memory_limit_bytes", ())] > 0
    gc_count = sum(v for (n, _), v in m.items() if n == "pathoai_gc_duration_seconds_count")
    assert gc_count > 0  # the workers' GC histograms add up
    # promtool agrees with the merged exposition
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        body = r.read()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert check.returncode == 0 and not check.stdout.strip(), check

    victim, lost = served.most_common(1)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: (
            (mm := scrape(metrics_port))[("pathoai_sessions_active", ())] == 40 - lost
            and mm[("pathoai_multiprocess_workers", ())] == 4  # the replacement publishes
        )
    )
    after = scrape(metrics_port)
    assert after[("pathoai_sessions_created_total", ())] == 40  # counts are kept
    gc_after = sum(v for (n, _), v in after.items() if n == "pathoai_gc_duration_seconds_count")
    assert gc_after >= gc_count  # a counter never goes backwards


def test_malformed_worker_files_are_skipped_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from prometheus_client import CollectorRegistry, generate_latest

    from pathoai_memobs import MemoryConfig, MemoryMonitor
    from pathoai_memobs.exporters.multiprocess import PREFIX, MultiprocessCollector, Publisher
    from pathoai_memobs.exporters.prometheus import MemobsCollector

    Publisher(MemobsCollector(MemoryMonitor(MemoryConfig()), None, None), tmp_path).publish()
    good = json.loads(next(tmp_path.glob(f"{PREFIX}*.json")).read_text())
    fam = good["families"][0]
    variants = [
        "{not json",
        json.dumps([1, 2, 3]),
        json.dumps({**good, "families": "x"}),
        json.dumps({**good, "pid": "1"}),
        json.dumps({**good, "families": [{**fam, "samples": [["x", {}, "NaN?"]]}]}),
        json.dumps({**good, "families": [{**fam, "samples": [["x", {"a": 1}, 1.0]]}]}),
        json.dumps({**good, "families": [{**fam, "type": "sideways"}]}),
    ]
    for i, text in enumerate(variants):
        (tmp_path / f"{PREFIX}{900000 + i}.json").write_text(text)
    registry = CollectorRegistry()
    collector = MultiprocessCollector(registry, tmp_path)
    for _ in range(3):  # every scrape works; each bad file is reported once
        text = generate_latest(registry).decode()
        assert "pathoai_memory_used_ratio" in text
    assert collector.malformed_total == len(variants)
    assert f"pathoai_multiprocess_malformed_files_total {float(len(variants))}" in text
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    assert sum(m.get("where") == "multiprocess_file" for m in logged) == len(variants)

"""The command line, run for real in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathoai_memobs.tools.stack import terminate


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pathoai_memobs", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_watch_prints_live_readings() -> None:
    out = _run("watch", "--seconds", "0.5", "--interval", "0.2", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) >= 2
    assert all(0 < r["percent_used"] < 100 and r["total_mb"] > 0 for r in rows)


def test_check_config_names_the_bad_variable() -> None:
    out = _run("check-config", env={"MAX_SESSION_MEMORY_GB": "lots"})
    assert out.returncode == 2
    assert "MAX_SESSION_MEMORY_GB" in out.stderr and "'lots'" in out.stderr


def test_check_config_shows_where_values_came_from() -> None:
    out = _run("check-config", env={"SESSION_TIMEOUT_MINUTES": "12"})
    assert out.returncode == 0, out.stderr
    assert "env:SESSION_TIMEOUT_MINUTES" in out.stdout


def test_import_stays_light() -> None:
    code = (
        "import sys, pathoai_memobs; print(sorted(m for m in ('prometheus_client', "
        "'opentelemetry', 'structlog', 'psutil', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_status_prints_a_valid_reading_and_where_settings_come_from() -> None:
    out = _run("status", "--json", env={"MAX_MEMORY_PERCENT": "80"})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    r = doc["reading"]
    assert r["source"] in {"host", "cgroup_v1", "cgroup_v2"}
    assert 0 < r["used_bytes"] < r["limit_bytes"] and 0 < r["used_ratio"] < 1
    assert r["level"] in {"NORMAL", "WARNING", "CRITICAL", "EMERGENCY"}
    assert doc["config"]["max_memory_percent"] == {
        "value": 80.0,
        "source": "env:MAX_MEMORY_PERCENT",
    }
    assert doc["config"]["session_timeout_minutes"]["source"] == "default"
    text = _run("status")
    assert text.returncode == 0 and "available" in text.stdout


def test_status_refuses_a_bad_environment() -> None:
    out = _run("status", env={"SESSION_TIMEOUT_MINUTES": "-3"})
    assert out.returncode == 2 and "SESSION_TIMEOUT_MINUTES" in out.stderr


def test_demo_serves_metrics_with_sessions_and_cleans_up() -> None:
    import glob
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from .promstack import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pathoai_memobs",
            "demo",
            "--duration",
            "10",
            "--port",
            str(port),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    created = 0.0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and created == 0:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == "pathoai_sessions_created_total":
                        created = s.value
        assert created > 0
        out, err = proc.communicate(timeout=60)
    finally:
        terminate(proc)  # SIGTERM first: the stack command then stops its own servers
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert rows and rows[-1]["sessions_created"] > 0
    assert "demo finished" in out
    assert not glob.glob("/sys/fs/cgroup/**/pathoai-demo-*", recursive=True)


def test_stack_starts_prometheus_and_alertmanager_and_stops_them() -> None:
    from .promstack import check_stack_command

    check_stack_command([sys.executable, "-m", "pathoai_memobs"])


def test_bad_flags_are_one_line_naming_the_flag_and_exit_2() -> None:
    cases = [
        (["watch", "--seconds", "nan"], "--seconds"),
        (["watch", "--seconds", "inf"], "--seconds"),
        (["watch", "--interval", "-1"], "--interval"),
        (["demo", "--port", "70000"], "--port"),
        (["demo", "--log", "/missing/folder/x.jsonl"], "--log"),
        (["stack", "--duration", "-5"], "--duration"),
        (["assets"], "--out"),
    ]
    for args, flag in cases:
        out = _run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert flag in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_check_config_refuses_a_value_past_its_bound() -> None:
    out = _run("check-config", env={"MAX_SESSION_MEMORY_GB": "1e300"})
    assert out.returncode == 2 and "MAX_SESSION_MEMORY_GB" in out.stderr


def test_assets_into_a_file_is_one_line_and_exit_1(tmp_path: object) -> None:
    import pathlib

    target = pathlib.Path(str(tmp_path)) / "a-file"
    target.write_text("x")
    out = _run("assets", "--out", str(target))
    assert out.returncode == 1 and "not a folder" in out.stderr and "Traceback" not in out.stderr


def test_stack_stops_everything_on_sigterm_and_removes_its_directory() -> None:
    import pathlib
    import signal

    from .promstack import assert_nothing_serves, binary, free_port

    binary("prometheus")
    binary("prometheus-alertmanager", "alertmanager")
    prom, am = free_port(), free_port()
    argv = [sys.executable, "-m", "pathoai_memobs", "stack", "--target", "127.0.0.1:9"]
    argv += ["--prometheus-port", str(prom), "--alertmanager-port", str(am)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        workdir = next(line.split()[1] for line in lines if line.startswith("workdir"))
        assert pathlib.Path(workdir).is_dir()
        proc.send_signal(signal.SIGTERM)  # no --duration: only the signal ends it
        out, err = proc.communicate(timeout=60)
    finally:
        terminate(proc)
    assert proc.returncode == 0, err
    assert "stack stopped" in out
    assert not pathlib.Path(workdir).exists()
    assert_nothing_serves(prom, am)


def test_status_and_check_config_report_the_rungs_at_this_limit() -> None:
    from pathoai_memobs import MemoryConfig, MemoryMonitor
    from pathoai_memobs.tools.cli import _rungs

    for command in ("check-config", "status"):
        out = _run(command, "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        rungs = doc["rungs_at_this_limit"] if command == "check-config" else doc["reading"]["rungs"]
        assert rungs["in_order"] is True  # the defaults, at this machine's limit
    explicit = MemoryConfig(max_memory_percent=84, emergency_cleanup_threshold_mb=1000)
    assert _rungs(MemoryMonitor(explicit), 4 << 30)["in_order"] is False  # floor at 75.6 %
    assert _rungs(MemoryMonitor(MemoryConfig()), 2 << 30)["in_order"] is True  # fitted

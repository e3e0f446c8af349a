"""The command line, run for real in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys


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

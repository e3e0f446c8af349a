"""A fleet in miniature: three replicas, each its own process in its own memory-limited
cgroup with its own exporter and probes, one real Prometheus scraping them all with the
generated rules. The fleet recording rules sum correctly; when one replica is squeezed, the
per-instance alerts fire for it alone and its /readyz flips while the others stay ready."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pathoai_memobs.assets import AssetOptions, render
from pathoai_memobs.tools import stack
from pathoai_memobs.tools.cgroup_sandbox import MemoryCgroup

from .promstack import Prometheus, free_port, wait_http
from .scripted import wait_for

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
FAST = {"PathoAIMemoryWarning": "1s", "PathoAIMemoryCritical": "1s", "PathoAIMemoryEmergency": "1s"}


def ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def firing(prom: Prometheus, alert: str) -> set[str]:
    found = prom.query(f'ALERTS{{alertname="{alert}", alertstate="firing"}}')
    return {a["metric"]["instance"] for a in found}


@pytest.mark.cgroup
def test_three_replicas_one_prometheus_the_fleet_rules_and_one_squeezed_instance(
    make_cgroup: Callable[[int], MemoryCgroup], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        render(AssetOptions(for_windows=FAST)).files["alerts/pathoai-memory.rules.yml"]
    )
    ports = [free_port() for _ in range(3)]
    replicas = []
    prom = None
    try:
        for n, port in enumerate(ports, start=1):  # replica n holds n sessions
            argv = [sys.executable, str(ROOT / "tests" / "workloads" / "grow_memory.py"),
                    "--port", str(port), "--floor-mb", "48", "--sessions", str(n)]  # fmt: skip
            replicas.append(make_cgroup(512 * MIB).popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))  # fmt: skip
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/metrics", timeout=60)
        prom = Prometheus(tmp_path / "prom", [f"127.0.0.1:{p}" for p in ports], [rules])
        prom.wait_value('pathoai:instances:count{job="pathoai"}', lambda v: v == 3, 60)
        prom.wait_value('pathoai:sessions_active:sum{job="pathoai"}', lambda v: v == 1 + 2 + 3, 30)
        per_instance = prom.value('sum(pathoai_session_memory_bytes_gsum{job="pathoai"})')
        assert prom.value('pathoai:session_memory_bytes:sum{job="pathoai"}') == per_instance
        assert per_instance is not None and per_instance >= 6 * MIB
        assert [ready(p) for p in ports] == [200, 200, 200]
        assert prom.value('pathoai:instances_in_emergency:count{job="pathoai"}') == 0

        squeezed = replicas[1]  # the second replica fills its cgroup past every rung
        assert squeezed.stdin is not None and squeezed.stdout is not None
        squeezed.stdin.write("ratio 0.95\n")
        squeezed.stdin.flush()
        assert squeezed.stdout.readline().startswith("ok")
        target = f"127.0.0.1:{ports[1]}"
        wait_for(lambda: ready(ports[1]) == 503, timeout=30)
        assert ready(ports[0]) == ready(ports[2]) == 200
        prom.wait_value('pathoai:instances_in_emergency:count{job="pathoai"}', lambda v: v == 1, 30)
        wait_for(lambda: firing(prom, "PathoAIMemoryEmergency") == {target}, timeout=30)
        wait_for(lambda: firing(prom, "PathoAIMemoryCritical") == {target}, timeout=30)
        # One query names the worst instance and its ratio at one instant: two queries a
        # scrape apart would compare two different samples of a ratio that keeps moving.
        top = prom.query('topk(1, pathoai_memory_used_ratio{job="pathoai"})')
        assert [series["metric"]["instance"] for series in top] == [target]
        worst = float(top[0]["value"][1])
        recorded = prom.value('pathoai:memory_used_ratio:max{job="pathoai"}')
        assert recorded is not None
        assert worst >= 0.9  # the worst instance is the squeezed one, past the Emergency rung
        assert abs(recorded - worst) < 0.02  # recorded at its own evaluation, a moment apart
        assert firing(prom, "PathoAIMemoryEmergency") == {target}  # still that one alone
    finally:
        if prom is not None:
            prom.stop()
        for replica in replicas:
            stack.terminate(replica, 10)

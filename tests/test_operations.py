"""Operations assets: rules (promtool), Alertmanager (amtool, and a real one), dashboards,
runbooks; every panel and rule query against a real Prometheus; alerts from real pressure."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, ProcessCollector

from pathoai_memobs import (
    GarbageCollectionManager,
    MemoryConfig,
    MemoryMonitor,
    SessionManager,
)
from pathoai_memobs.bounded_cache import BoundedCache
from pathoai_memobs.exceptions import InsufficientMemoryError, SessionNotFoundError
from pathoai_memobs.exporters.prometheus import instrument, start_http_server
from pathoai_memobs.gpu_errors import CAUGHT
from pathoai_memobs.readers.gpu import GpuReader
from pathoai_memobs.spill_store import SpillStore
from pathoai_memobs.tools import stack
from pathoai_memobs.tools.cgroup_sandbox import MemoryCgroup

from . import gpu_standin
from .promstack import Prometheus, Webhook, alertmanager_config, binary, free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "pathoai-memory.rules.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "pathoai-memory-overview.json"


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


# -- static checks --------------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = binary("promtool")
    check = run(promtool, "check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    unit = run(promtool, "test", "rules", str(ROOT / "alerts" / "pathoai-memory.rules.test.yml"))
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout + unit.stderr, unit.stderr
    tested = set(
        re.findall(
            r"alertname: (\w+)", (RULES.parent / "pathoai-memory.rules.test.yml").read_text()
        )
    )
    assert tested == {a["alert"] for a in alerts()}  # every alert has unit tests


def test_amtool_checks_the_alertmanager_config() -> None:
    amtool = binary("amtool")
    out = run(amtool, "check-config", str(ROOT / "alerts" / "alertmanager.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_complete_and_has_a_runbook() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbooks, re.M)}
    for a in alerts():
        name = a["alert"]
        assert re.fullmatch(r"PathoAI[A-Z][A-Za-z0-9]+", name), name
        assert a.get("for"), name
        assert a["labels"]["severity"] in {"critical", "warning"}, name
        ann = a["annotations"]
        assert ann["summary"] and ann["description"], name
        assert "$value" in ann["summary"] + ann["description"] or "absent" in a["expr"], name
        assert ann["runbook_url"] == f"docs/runbooks.md#{name.lower()}"
        assert name.lower() in anchors, f"no runbook section for {name}"


def test_dashboards_equal_their_generator_and_have_units() -> None:
    out = run(sys.executable, str(ROOT / "grafana" / "generate.py"), "--check")
    assert out.returncode == 0, out.stdout
    dash = json.loads(DASHBOARD.read_text())
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "namespace", "instance"} <= names
    assert "Fleet" in {p["title"] for p in dash["panels"] if p["type"] == "row"}
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 18
    for p in panels:
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
    for provisioning in (ROOT / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(provisioning.read_text())["apiVersion"] == 1


# -- every query against a real Prometheus ------------------------------------------------


def panel_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    every = {v["name"]: v["allValue"] for v in dash["templating"]["list"] if "allValue" in v}
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for name, value in every.items():  # "All", as Grafana sends it
                expr = expr.replace(f"${name}", value)
            expr = expr.replace("$__rate_interval", "1m")
            gens = ["0", "1", "2"] if "$generation" in expr else [""]
            out += [(p["title"], expr.replace("$generation", g)) for g in gens]
    return out


def spilling_sessions(where: Path) -> SessionManager:
    """Sessions that spill (buffers from 512 KiB, idle or not) and whose restores refused in
    EMERGENCY answer at once rather than wait in line."""
    store = SpillStore(str(where), max_bytes=1 << 30, encrypt=False)
    sessions = SessionManager(top_k=5, spill=store, spill_min_bytes=1 << 19, spill_idle_s=0)
    sessions.restore_wait_s = 0.0
    return sessions


def reread_and_cache(
    sessions: SessionManager, sid: str | None, tiles: BoundedCache[int, bytes]
) -> None:
    """Read the previous session back (the emergency may have spilled it), and use a cache."""
    if sid is not None:
        with contextlib.suppress(InsufficientMemoryError):
            sessions.get_session(sid)
    tiles.put(len(tiles) + tiles.evictions["bound"], b"t" * (1 << 20))
    tiles.get(0)


def standin_gpu() -> tuple[GpuReader, gpu_standin.Tensor]:
    """A stand-in GPU near its floor (this machine has none), so its panels have data: a
    model on it, to hold while Prometheus scrapes, and a CUDA OOM answered."""
    gpu = gpu_standin.devices(1)
    gpu[0].others = 8 * gpu_standin.GIB - 900 * gpu_standin.MIB
    torch = gpu_standin.FakeTorch(gpu)
    CAUGHT.caught(gpu_standin.OutOfMemoryError("CUDA out of memory. GPU 0 has a total capacity"))
    return GpuReader(gpu_standin.FakeNvml(gpu), torch=lambda: torch), torch.empty(300 << 20)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus with the shipped rules, scraping an exporter under a workload."""
    sessions = spilling_sessions(tmp_path_factory.mktemp("spill"))
    gcm = GarbageCollectionManager()
    # A floor above what is free puts the service in EMERGENCY at once: cleanups, evictions
    # and rejections then happen for real, so every panel has something to show.
    free_mb = MemoryMonitor().get_current_metrics().available_mb
    config = MemoryConfig(
        emergency_cleanup_threshold_mb=free_mb + 1024, monitoring_interval_sec=0.2
    )
    reader, _model = standin_gpu()
    monitor = MemoryMonitor(
        config, sessions=sessions, gc_manager=gcm, emergency_cooldown_s=0.5, gpu=reader
    )

    def broken() -> None:
        raise RuntimeError("a cache that cannot be cleared")

    monitor.register_cleanup_callback(broken, name="broken_cache")
    tiles: BoundedCache[int, bytes] = BoundedCache(8, name="tiles", monitor=monitor)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    instrument(monitor, sessions, gcm, registry=registry)
    exporter = start_http_server(0, registry=registry)
    stop = threading.Event()

    def workload() -> None:
        while True:  # a user mid-request: pinned, never evicted
            kept = sessions.create_session()
            with contextlib.suppress(SessionNotFoundError), sessions.use(kept):
                sessions.update_session(kept, image=np.ones(1 << 20, np.uint8))
                churn()
                return

    def churn() -> None:
        previous = None
        while not stop.is_set():
            reread_and_cache(sessions, previous, tiles)
            previous = sid = sessions.create_session()
            with contextlib.suppress(SessionNotFoundError):  # evicted before its upload
                sessions.update_session(
                    sid, image=np.ones(1 << 20, np.uint8), tiles=[b"x" * 1000] * 50
                )
            gcm.collect_with_stats(0)
            with contextlib.suppress(InsufficientMemoryError):
                monitor.check_memory_available(10)
            stop.wait(0.05)

    worker = threading.Thread(target=workload, daemon=True)
    monitor.start()
    worker.start()
    rule_dir = tmp_path_factory.mktemp("rules")
    (rule_dir / RULES.name).write_text(RULES.read_text())
    prom = Prometheus(
        tmp_path_factory.mktemp("prom"), [f"127.0.0.1:{exporter.port}"], [rule_dir / RULES.name]
    )
    try:
        prom.wait_value("count(pathoai_sessions_active)", lambda v: v >= 1, 60)
        time.sleep(4)  # a few scrapes, so rate() windows hold two samples or more
        yield prom
    finally:
        stop.set()
        worker.join(5)
        monitor.stop()
        prom.stop()
        exporter.stop()


@pytest.mark.parametrize(("title", "expr"), panel_queries(), ids=lambda x: str(x)[:60])
def test_every_panel_query_returns_data(scraped: Prometheus, title: str, expr: str) -> None:
    if "pressure_stall" in expr and not Path("/proc/pressure/memory").exists():
        pytest.skip("this kernel exposes no PSI (/proc/pressure/memory is absent)")
    deadline = time.monotonic() + 15  # a scrape missed under load leaves a gap, not a hole
    while not scraped.query(expr):
        assert time.monotonic() < deadline, f"panel {title!r} is empty: {expr}"
        time.sleep(0.5)


def test_every_rule_expression_runs(scraped: Prometheus) -> None:
    for rule in rules():
        result = scraped.query(rule["expr"])  # a query error raises
        if "record" in rule:
            assert result, f"recording rule {rule['record']} returns nothing"


# -- alerts end to end from real pressure ---------------------------------------------------


def fast_rules(target: Path) -> Path:
    """The shipped rules with every for: shortened to 2 s and each peak window
    (max_over_time) to 2 s; the expressions are otherwise unchanged."""
    text = re.sub(r"^(\s+)for: \S+$", r"\1for: 2s", RULES.read_text(), flags=re.M)
    text = re.sub(r"max_over_time\((\w+)\[1m\]\)", r"max_over_time(\1[2s])", text)
    target.write_text(text)
    return target


@pytest.mark.cgroup
def test_alerts_fire_in_order_from_real_pressure_and_resolve(
    make_cgroup: Callable[[int], MemoryCgroup], tmp_path: Path
) -> None:
    group = make_cgroup(1 << 30)
    webhook = Webhook()
    am_port, app_port = free_port(), free_port()
    binary("prometheus-alertmanager", "alertmanager")
    am = stack.alertmanager(
        tmp_path, alertmanager_config(tmp_path / "am.yml", webhook.url), port=am_port
    )
    child = group.popen(
        [
            sys.executable,
            str(ROOT / "tests" / "workloads" / "grow_memory.py"),
            "--port",
            str(app_port),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    prom = None
    try:
        wait_http(f"http://127.0.0.1:{app_port}/metrics")
        prom = Prometheus(
            tmp_path / "prom",
            [f"127.0.0.1:{app_port}"],
            [fast_rules(tmp_path / "rules.yml")],
            alertmanager=f"127.0.0.1:{am_port}",
        )
        prom.wait_value("pathoai_memory_used_ratio", lambda v: v > 0, 60)

        def command(text: str) -> str:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(text + "\n")
            child.stdin.flush()
            return child.stdout.readline()

        assert command("ratio 0.865").startswith("ok")
        warned = webhook.wait("PathoAIMemoryWarning", "firing")
        assert command("ratio 0.915").startswith("ok")
        critical = webhook.wait("PathoAIMemoryCritical", "firing")
        reply = command("ratio 0.95").split()
        assert int(reply[2]) < 64 << 20, reply  # under the (lowered) floor
        emergency = webhook.wait("PathoAIMemoryEmergency", "firing")
        assert warned < critical < emergency
        assert group.oom_kills() == 0
        receivers = {(a, r) for _, r, a, s in webhook.events if s == "firing"}
        assert ("PathoAIMemoryWarning", "work-queue") in receivers
        assert ("PathoAIMemoryCritical", "pager") in receivers
        assert command("free").startswith("ok")
        for name in ("PathoAIMemoryEmergency", "PathoAIMemoryCritical", "PathoAIMemoryWarning"):
            webhook.wait(name, "resolved")
        command("exit")
    finally:
        if prom is not None:
            prom.stop()
        am.stop()
        stack.terminate(child, 10)
        webhook.stop()

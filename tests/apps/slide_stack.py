"""The slide service under load with the alerting stack watching it: a real Prometheus
scraping the service's /metrics with the shipped rules, and a real Alertmanager routing
to a webhook in this process. What the on-call engineer would have been told.

``scale`` multiplies every duration of the rules (each ``for:`` and the one-minute peak
window) so a short run in ``make test`` checks the same expressions; the bench runs them as
shipped (``scale=1``) for long enough to fire.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from pathoai_memobs.tools import stack
from tests.promstack import Prometheus, Webhook, alertmanager_config, free_port

from .slide_load import GIB, run_load

RULES = Path(__file__).resolve().parents[2] / "alerts" / "pathoai-memory.rules.yml"
ALERTS = ("PathoAIMemoryWarning", "PathoAIMemoryCritical", "PathoAIMemoryEmergency")
STALE = "PathoAIMonitorStale"
_UNITS = {"s": 1, "m": 60, "h": 3600}


def _seconds(text: str) -> float:
    return float(text[:-1]) * _UNITS[text[-1]]


def scaled_rules(target: Path, scale: float) -> Path:
    """The shipped rules with every ``for:`` and peak window times ``scale`` (at least 1 s)."""

    def scaled(d: str) -> str:
        return f"{max(1, round(_seconds(d) * scale))}s"

    text = re.sub(r"(?m)^(\s+for: )(\S+)$", lambda m: m[1] + scaled(m[2]), RULES.read_text())
    text = re.sub(r"max_over_time\((\w+)\[(\w+)\]\)",
                  lambda m: f"max_over_time({m[1]}[{scaled(m[2])}])", text)  # fmt: skip
    target.write_text(text)
    return target


def run_with_stack(
    seconds: float,
    *,
    scale: float = 1.0,
    scrape: str = "5s",
    env: dict[str, str] | None = None,
    slide_mb: tuple[int, int] = (150, 300),
) -> dict[str, Any]:
    """``run_load("library", seconds=...)`` in 2 GiB with Prometheus and Alertmanager; the
    load report plus, per alert, seconds from the start to its first firing notification
    (None: never), which alerts fired in Prometheus (Alertmanager inhibits a warning while
    the matching critical fires), whether the stale alert was ever pending, and the used
    ratio's range."""
    webhook = Webhook()
    metrics, am_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="pathoai-slide-stack-") as tmp:
        work = Path(tmp)
        am_config = alertmanager_config(work / "am.yml", webhook.url, fast=scale < 1)
        am = stack.alertmanager(work / "am", am_config, port=am_port)
        prom = None
        try:
            rules = [scaled_rules(work / "rules.yml", scale)]
            prom = Prometheus(work / "prom", [f"127.0.0.1:{metrics}"], rules,
                              alertmanager=f"127.0.0.1:{am_port}", interval=scrape)  # fmt: skip
            started = time.time()
            report = run_load("library", seconds=seconds, limit_bytes=2 * GIB, slide_mb=slide_mb,
                              env={**(env or {}), "SLIDE_METRICS_PORT": str(metrics)})  # fmt: skip
            time.sleep(2 * _seconds(scrape))  # the last notifications on their way
            window = f"{int(time.time() - started) + 1}s"
            report["used_ratio_max"] = prom.value(
                f"max_over_time(pathoai_memory_used_ratio[{window}])"
            )
            report["used_ratio_min"] = prom.value(
                f"min_over_time(pathoai_memory_used_ratio[{window}])"
            )
            stale = prom.value(f'count_over_time(ALERTS{{alertname="{STALE}"}}[{window}])')
            report["stale_pending_or_firing"] = bool(stale)
            report["fired_in_prometheus"] = {  # notified or not (a critical inhibits a warning)
                name: bool(prom.value(f'count_over_time(ALERTS{{alertname="{name}",'
                                      f'alertstate="firing"}}[{window}])'))
                for name in (*ALERTS, STALE)
            }  # fmt: skip
        finally:
            if prom is not None:
                prom.stop()
            am.stop()
            webhook.stop()
    report["fired_after_s"] = {
        name: (None if (t := webhook.first(name, "firing")) is None else t - started)
        for name in (*ALERTS, STALE)
    }
    report["receivers"] = sorted({(a, r) for _, r, a, s in webhook.events if s == "firing"})
    return report


if __name__ == "__main__":  # python -m tests.apps.slide_stack SECONDS [SCALE]
    import json
    import sys

    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 40
    factor = float(sys.argv[2]) if len(sys.argv) > 2 else 1 / 15
    out = run_with_stack(secs, scale=factor, scrape="1s" if factor < 1 else "5s",
                         env={"SLIDE_LEAK_MB": "1150", "SLIDE_LEAK_MB_PER_S": "25"})  # fmt: skip
    out.pop("stderr_tail")
    print(json.dumps(out, indent=1))

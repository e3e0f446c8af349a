"""Run in a small memory cgroup: the monitor's process starts a sibling that allocates past
the limit and is OOM-killed; prints the OOM count the monitor reads before and after.
``--serve PORT --trigger FILE``: serve /metrics meanwhile and start the sibling only once
FILE exists (so a Prometheus has scraped the count before), then go on serving."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prometheus_client import CollectorRegistry

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.exporters.prometheus import instrument, start_http_server

HOG = "import numpy as np\nx = []\nwhile True:\n    x.append(np.ones(16 << 20, np.uint8))\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", type=int, default=None)
    ap.add_argument("--trigger", default=None)
    ap.add_argument("--linger", type=float, default=60.0)
    a = ap.parse_args()
    monitor = MemoryMonitor(MemoryConfig(enable_background_monitoring=False))
    server = None
    if a.serve is not None:
        registry = CollectorRegistry()
        instrument(monitor, registry=registry)
        server = start_http_server(a.serve, registry=registry)
        while a.trigger and not os.path.exists(a.trigger):
            time.sleep(0.1)
    before = monitor.oom_kills()
    sibling = subprocess.run([sys.executable, "-c", HOG], check=False)
    after = monitor.oom_kills()
    print(json.dumps({"before": before, "after": after, "sibling": sibling.returncode,
                      "source": monitor.sample().source}), flush=True)  # fmt: skip
    if server is not None:
        time.sleep(a.linger)  # until the test stops it
        server.stop()


if __name__ == "__main__":
    main()

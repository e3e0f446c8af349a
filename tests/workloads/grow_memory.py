"""A service whose memory an end-to-end test drives: it serves /metrics (and the probes,
/readyz and /livez) and grows or frees memory on command (stdin: ``ratio 0.87``, ``free``,
``exit``), answering on stdout; ``--sessions N`` holds N small sessions.

The emergency floor is lowered to 64 MiB (``--floor-mb``) so that, in a 1 GiB cgroup, the
warning (85 %), critical (90 %) and emergency (< 64 MiB available) rungs come in order;
the exported threshold gauges carry that floor to the alert rules.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.exporters.prometheus import instrument, start_http_server
from pathoai_memobs.probes import Probes

CHUNK = 8 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--floor-mb", type=float, default=64)
    ap.add_argument("--sessions", type=int, default=0)
    a = ap.parse_args()
    config = MemoryConfig(
        emergency_cleanup_threshold_mb=a.floor_mb,
        monitoring_interval_sec=0.2,
        enable_request_rejection=False,
    )
    monitor = MemoryMonitor(config)
    sessions = SessionManager.from_config(config)
    for _ in range(a.sessions):
        sessions.update_session(sessions.create_session(), slide=np.ones(1 << 20, np.uint8))
    instrument(monitor, sessions)
    server = start_http_server(a.port, probes=Probes(monitor))
    held: list[np.ndarray] = []
    with monitor:
        for line in sys.stdin:
            cmd, *args = line.split()
            if cmd == "ratio":
                goal = float(args[0])
                while monitor.sample().used_ratio < goal:
                    held.append(np.ones(CHUNK, np.uint8))
            elif cmd == "free":
                held.clear()
            elif cmd == "exit":
                break
            r = monitor.sample()
            print(f"ok {r.used_ratio:.4f} {r.available_bytes}", flush=True)
    server.stop()


if __name__ == "__main__":
    main()

"""A process that keeps allocating: a new 64 MiB array in a new session every 0.3 s, with no
admission at all, in a memory-limited cgroup, with the monitor on its defaults (including
its 5 s emergency cooldown) and a SessionManager attached. Only emergency cleanup stands
between it and the OOM killer. Prints one JSON line of what happened on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--every", type=float, default=0.3)
    args = parser.parse_args()

    from pathoai_memobs import MemoryConfig, MemoryMonitor
    from pathoai_memobs.logging import configure_logging
    from pathoai_memobs.session_manager import SessionManager

    configure_logging("json", stream=sys.stderr)
    sessions = SessionManager(timeout_minutes=30, max_memory_gb=1.0)
    monitor = MemoryMonitor(MemoryConfig(), sessions=sessions)  # defaults: cooldown 5 s
    stored = 0
    with monitor:
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            sid = sessions.create_session()
            sessions.update_session(sid, image=np.ones(args.mb * MIB, np.uint8))
            stored += 1
            time.sleep(args.every)
    totals = monitor.emergency_totals
    print(
        json.dumps(
            {
                "completed": True,
                "stored": stored,
                "live": len(sessions),
                "evicted": sessions.removed_total("emergency"),
                "runs": totals.runs,
                "errors": monitor.errors_total,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

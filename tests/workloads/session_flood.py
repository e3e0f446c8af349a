"""A service under a flood of users, each uploading a 100 MiB slide and storing results.

Run inside a memory-limited cgroup. ``--bare`` keeps everything with no manager (the OOM
killer ends it); the default runs the full manager: admission through ``reserve``, the
background monitor, emergency eviction of least-recently-used sessions. Prints one JSON
line of what happened on stdout; structured logs (JSON) go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import numpy as np

MIB = 1 << 20


def bare(users: int, image_mb: int, results_mb: int) -> None:
    kept = []
    for i in range(users):
        kept.append((np.ones(image_mb * MIB, np.uint8), np.ones(results_mb * MIB, np.uint8)))
        print(json.dumps({"user": i}), file=sys.stderr, flush=True)
    print(json.dumps({"completed": True, "kept": len(kept)}), flush=True)


def managed(users: int, image_mb: int, results_mb: int, patience_s: float) -> None:
    from pathoai_memobs import InsufficientMemoryError, MemoryConfig, MemoryMonitor
    from pathoai_memobs.logging import configure_logging
    from pathoai_memobs.session_manager import SessionManager

    configure_logging("json", stream=sys.stderr)
    sessions = SessionManager(timeout_minutes=30, max_memory_gb=1.0)
    hooked: list[tuple[str, str]] = []
    sessions.on_remove(lambda sid, data, reason: hooked.append((sid, reason)))
    monitor = MemoryMonitor(MemoryConfig(), sessions=sessions, emergency_cooldown_s=0.2)
    ids, rejected, dropped = [], 0, 0
    with monitor:
        for _ in range(users):
            deadline = time.monotonic() + patience_s
            while True:
                try:
                    with monitor.reserve(image_mb):  # the upload is declared...
                        sid = sessions.create_session()
                        ids.append(sid)
                        sessions.update_session(sid, image=np.ones(image_mb * MIB, np.uint8))
                    break
                except InsufficientMemoryError as exc:
                    rejected += 1
                    if time.monotonic() > deadline:
                        dropped += 1
                        break
                    time.sleep(min(exc.retry_after_s or 1, 1) / 5)
            if ids and sessions.get_session(ids[-1]) is not None:
                # ...the analysis results are not: memory creeps below the floor.
                results = np.ones(results_mb * MIB, np.uint8)
                with contextlib.suppress(KeyError):  # evicted meanwhile
                    sessions.update_session(ids[-1], results=results)
                del results
            time.sleep(0.05)
        time.sleep(0.5)  # let a last cleanup finish
        sources = list(monitor.wakeup_sources)
    totals = monitor.emergency_totals
    print(
        json.dumps(
            {
                "completed": True,
                "rejected": rejected,
                "dropped": dropped,
                "active": len(sessions),
                "evicted": sessions.removed_total("emergency"),
                "hooked_emergency": sum(1 for _, r in hooked if r == "emergency"),
                "hooked_ids_known": all(sid in ids for sid, _ in hooked),
                "emergency_runs": totals.runs,
                "evicted_by_monitor": totals.evicted_sessions,
                "errors": monitor.errors_total,
                "wakeup_sources": sources,
                "wakeups": monitor.wakeups_total,
                "ids": ids,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bare", action="store_true")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--image-mb", type=int, default=100)
    ap.add_argument("--results-mb", type=int, default=60)
    ap.add_argument("--patience-s", type=float, default=1.0, help="a user's retry budget")
    a = ap.parse_args()
    if a.bare:
        bare(a.users, a.image_mb, a.results_mb)
    else:
        managed(a.users, a.image_mb, a.results_mb, a.patience_s)

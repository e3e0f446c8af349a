"""A service under a flood of users, each uploading a 100 MiB slide and storing results.

Run inside a memory-limited cgroup. ``--bare`` keeps everything with no manager (the OOM
killer ends it); the default runs the full manager: admission through ``reserve``, the
background monitor, emergency eviction of least-recently-used sessions. ``--spill DIR``
spills sessions to DIR before any eviction, and at the end reads every session back and
compares its slide's hash with the one taken at upload. Prints one JSON line of what
happened on stdout; structured logs (JSON) go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from typing import Any

import numpy as np

MIB = 1 << 20


def bare(users: int, image_mb: int, results_mb: int) -> None:
    kept = []
    for i in range(users):
        kept.append((np.ones(image_mb * MIB, np.uint8), np.ones(results_mb * MIB, np.uint8)))
        print(json.dumps({"user": i}), file=sys.stderr, flush=True)
    print(json.dumps({"completed": True, "kept": len(kept)}), flush=True)


def _slide(user: int, image_mb: int) -> np.ndarray:  # type: ignore[type-arg]
    """A slide of its own bytes (every page touched), so a mix-up would show in its hash."""
    return np.random.default_rng(user).integers(0, 255, image_mb * MIB, dtype=np.uint8)


def _come_back(sessions: Any, ids: list[str], hashes: dict[str, str]) -> tuple[int, int]:
    """Every user comes back: each session read (restored from disk) and its slide's hash
    checked, one at a time, then ended. (identical, lost)."""
    identical = lost = 0
    for sid in ids:
        data = sessions.get_session(sid)
        if data is None:
            lost += 1
            continue
        identical += hashlib.sha256(data.data["image"]).hexdigest() == hashes[sid]
        del data
        sessions.delete_session(sid)
    return identical, lost


def managed(
    users: int, image_mb: int, results_mb: int, patience_s: float, spill: str | None = None
) -> None:
    from pathoai_memobs import InsufficientMemoryError, MemoryConfig, MemoryMonitor
    from pathoai_memobs.logging import configure_logging
    from pathoai_memobs.session_manager import SessionManager

    configure_logging("json", stream=sys.stderr)
    store = None
    if spill:
        from pathoai_memobs.spill_store import SpillStore

        store = SpillStore(spill, max_bytes=8 << 30)
    # a user of the flood comes back only at the end: idle a second is idle enough to spill
    sessions = SessionManager(timeout_minutes=30, max_memory_gb=1.0, spill=store, spill_idle_s=1)
    hashes: dict[str, str] = {}
    hooked: list[tuple[str, str]] = []
    sessions.on_remove(lambda sid, data, reason: hooked.append((sid, reason)))
    monitor = MemoryMonitor(MemoryConfig.from_env(), sessions=sessions, emergency_cooldown_s=0.2)
    ids, rejected, dropped = [], 0, 0
    with monitor:
        for _ in range(users):
            deadline = time.monotonic() + patience_s
            while True:
                try:
                    with monitor.reserve(image_mb):  # the upload is declared...
                        sid = sessions.create_session()
                        ids.append(sid)
                        image = (
                            _slide(len(ids), image_mb)
                            if spill
                            else np.ones(image_mb * MIB, np.uint8)
                        )
                        hashes[sid] = hashlib.sha256(image).hexdigest()
                        sessions.update_session(sid, image=image)
                        del image
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
        spilled_sessions = sum(bool(s.spilled) for s in sessions._sessions.values())
        identical, lost = _come_back(sessions, ids, hashes) if spill else (0, 0)
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
                "spilled_sessions_at_end": spilled_sessions,
                "spill_refusals": dict(sessions.spill_refusals),
                "identical": identical,
                "lost": lost,
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
    ap.add_argument("--spill", default=None, help="spill sessions to this directory")
    a = ap.parse_args()
    if a.bare:
        bare(a.users, a.image_mb, a.results_mb)
    else:
        managed(a.users, a.image_mb, a.results_mb, a.patience_s, a.spill)

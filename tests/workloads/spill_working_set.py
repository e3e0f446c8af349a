"""Run in a memory cgroup: one 256 MiB session, spilled, then read back; prints the
cgroup's working set (what the OOM killer counts: usage less inactive page cache) at each
step, as the monitor reads it, so a test can check that a spill frees what it says."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.spill_store import SpillStore


def working_set(monitor: MemoryMonitor) -> int:
    gc.collect()
    time.sleep(0.2)  # the kernel's counters settle
    reading = monitor.sample()
    assert reading.source.startswith("cgroup"), reading.source
    return reading.used_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spill", required=True)
    ap.add_argument("--mb", type=int, default=256)
    a = ap.parse_args()
    now = [0.0]
    store = SpillStore(a.spill, max_bytes=4 << 30)
    sessions = SessionManager(clock=lambda: now[0], spill=store, spill_idle_s=1)
    monitor = MemoryMonitor(MemoryConfig(enable_background_monitoring=False))
    sid = sessions.create_session()
    slide = np.random.default_rng(3).integers(0, 255, a.mb << 20, dtype=np.uint8)
    digest = hash(slide[:: 1 << 16].tobytes())
    sessions.update_session(sid, slide=slide)
    del slide
    before = working_set(monitor)
    now[0] += 5
    freed = sessions.spill_idle(1)
    spilled = working_set(monitor)
    data = sessions.get_session(sid)
    assert data is not None
    same = hash(data.data["slide"][:: 1 << 16].tobytes()) == digest
    restored = working_set(monitor)
    print(json.dumps({"before": before, "spilled": spilled, "restored": restored,
                      "freed": freed, "same": same}))  # fmt: skip


if __name__ == "__main__":
    main()

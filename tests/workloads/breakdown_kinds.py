"""Run in a memory cgroup: make memory of each kind in turn (session arrays, a leak outside
any session, a tmpfs file, page cache from a file read) and print, after each step, the
charge breakdown and managed/unmanaged bytes as the monitor reads them."""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager

MIB = 1 << 20


def snapshot(monitor: MemoryMonitor) -> dict[str, object]:
    gc.collect()
    time.sleep(0.3)  # the kernel's counters settle
    reading = monitor.sample()
    charged, process = monitor.memory_breakdown()
    managed = monitor.managed_bytes()
    unmanaged = max(0, reading.used_bytes - managed)
    return {"charged": charged, "process": process, "managed": managed,
            "unmanaged": unmanaged, "source": reading.source}  # fmt: skip


def main() -> None:
    spill_dir, shm = sys.argv[1], f"/dev/shm/pathoai-kinds-{os.getpid()}"
    sessions = SessionManager(max_memory_gb=1)
    monitor = MemoryMonitor(MemoryConfig(enable_background_monitoring=False), sessions=sessions)
    steps = {"start": snapshot(monitor)}
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.full(128 * MIB, 1, np.uint8))
    steps["session"] = snapshot(monitor)
    leak = [np.full(32 * MIB, 2, np.uint8) for _ in range(3)]  # held outside any session
    steps["leak"] = snapshot(monitor)
    try:
        with open(shm, "wb") as f:  # tmpfs: memory charged to the cgroup, not a file
            f.write(b"s" * (64 * MIB))
        steps["tmpfs"] = snapshot(monitor)
    finally:
        os.unlink(shm)
    fd, path = tempfile.mkstemp(dir=spill_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(64 * MIB))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # start uncached
    steps["before_read"] = snapshot(monitor)
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    steps["read"] = snapshot(monitor)
    os.unlink(path)
    del leak
    print(json.dumps(steps))


if __name__ == "__main__":
    main()

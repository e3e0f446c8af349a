"""In a real cgroup limited to 512 MiB, the monitor sees the limit and follows allocations."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from pathoai_memobs.tools.cgroup_sandbox import MemoryCgroup

MIB = 1 << 20

CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from pathoai_memobs import MemoryConfig, MemoryMonitor

    monitor = MemoryMonitor(MemoryConfig())
    def report(tag):
        m = monitor.get_current_metrics()
        print(json.dumps({"tag": tag, "total_mb": m.total_mb, "used_mb": m.used_mb,
                          "available_mb": m.available_mb, "source": m.source}), flush=True)
    report("before")
    block = np.ones(200 * 2**20, dtype=np.uint8)   # 200 MiB, every page touched
    time.sleep(0.2)
    report("after")
    del block
    time.sleep(0.2)
    report("freed")
""")


@pytest.mark.cgroup
def test_monitor_inside_a_512_mib_cgroup(make_cgroup: Callable[[int], MemoryCgroup]) -> None:
    group = make_cgroup(512 * MIB)
    proc = group.popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = {r["tag"]: r for r in map(json.loads, out.splitlines())}
    before, after, freed = rows["before"], rows["after"], rows["freed"]
    assert before["source"] == group.version
    assert before["total_mb"] == 512
    grew = after["used_mb"] - before["used_mb"]
    assert abs(grew - 200) <= 0.05 * 200, rows
    assert after["available_mb"] == pytest.approx(512 - after["used_mb"], abs=1)
    assert freed["used_mb"] < after["used_mb"] - 150, rows
    assert group.oom_kills() == 0


@pytest.mark.cgroup
def test_cgroup_is_removed_with_what_runs_inside(
    make_cgroup: Callable[[int], MemoryCgroup],
) -> None:
    group = make_cgroup(64 * MIB)
    proc = group.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert proc.pid in group.pids() or proc.poll() is None
        group.remove()
        assert not group.path.exists()
        assert proc.wait(timeout=10) != 0
    finally:
        if proc.poll() is None:
            proc.kill()

"""Real pressure in a real 1 GiB cgroup: OOM-killed without the manager, not with it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pathoai_memobs.tools.cgroup_sandbox import MemoryCgroup

GIB = 1 << 30
WORKLOAD = str(Path(__file__).parent / "workloads" / "session_flood.py")


def run(group: MemoryCgroup, *args: str, workload: str = WORKLOAD) -> tuple[int, str, str]:
    """Run a workload script in ``group`` (the session flood for 12 users by default)."""
    argv = [*args] if workload != WORKLOAD else ["--users", "12", *args]
    proc = group.popen(
        [sys.executable, workload, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


@pytest.mark.cgroup
def test_without_the_manager_the_oom_killer_ends_the_service(
    make_cgroup: Callable[[int], MemoryCgroup],
) -> None:
    group = make_cgroup(1 * GIB)
    code, out, _ = run(group, "--bare")
    assert code == -signal.SIGKILL
    assert group.oom_kills() >= 1
    assert "completed" not in out


@pytest.mark.cgroup
def test_with_the_manager_the_service_runs_to_its_end(
    make_cgroup: Callable[[int], MemoryCgroup], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reference's 500 MB floor as set (by default it is fitted to a tenth of 1 GiB):
    # the results, which no request declares, creep under it, and the emergency must evict.
    monkeypatch.setenv("MEMORY_EMERGENCY_FLOOR_MB", "500")
    group = make_cgroup(1 * GIB)
    code, out, err = run(group)
    assert code == 0, err[-2000:]
    assert group.oom_kills() == 0
    r = json.loads(out.splitlines()[-1])
    assert r["completed"]
    assert r["evicted"] >= 1 and r["rejected"] >= 1  # both defences were needed
    assert r["hooked_emergency"] == r["evicted"] == r["evicted_by_monitor"]  # every one reported
    assert r["hooked_ids_known"]
    assert r["errors"] == {}
    assert "cgroup_v1_threshold" in r["wakeup_sources"] or group.version == "cgroup_v2"
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    kinds = {e["event"] for e in logs}
    assert {"memory_level_changed", "emergency_cleanup", "session_removed"} <= kinds
    assert all(e["reason"] == "emergency" for e in logs if e["event"] == "session_removed")
    for sid in r["ids"]:
        assert sid not in err  # a session id never reaches a log line


@pytest.mark.cgroup
def test_cleanup_keeps_up_with_a_process_that_keeps_allocating(
    make_cgroup: Callable[[int], MemoryCgroup],
) -> None:
    """64 MiB every 0.2 s into new sessions for 20 s, no admission, the monitor on its
    defaults: the old 5 s cooldown after any run let this reach the OOM killer (it did, side
    by side, where this passes). A run that frees something no longer holds the next one."""
    group = make_cgroup(1 * GIB)
    steady = str(Path(__file__).parent / "workloads" / "steady_alloc.py")
    code, out, err = run(group, "--seconds", "20", "--every", "0.2", workload=steady)
    assert code == 0, (code, err[-2000:])
    assert group.oom_kills() == 0
    r = json.loads(out.splitlines()[-1])
    assert r["stored"] * 64 > 1500  # far more than the cgroup could ever hold at once
    assert r["evicted"] >= 1 and r["runs"] >= 2
    assert r["errors"] == {}


@pytest.mark.cgroup
def test_with_spilling_the_flood_runs_to_its_end_and_loses_no_session(
    make_cgroup: Callable[[int], MemoryCgroup], tmp_path: Path
) -> None:
    """The same flood in 1 GiB, spilling to a disk directory: the emergency writes sessions
    out instead of evicting them, and at the end every user's slide comes back with the
    hash it was uploaded with."""
    group = make_cgroup(1 * GIB)
    spill = tmp_path / "spill"
    code, out, err = run(group, "--spill", str(spill), "--patience-s", "5")
    assert code == 0, err[-2000:]
    assert group.oom_kills() == 0
    r = json.loads(out.splitlines()[-1])
    keys = ("rejected", "dropped", "evicted", "identical", "lost", "spill_refusals")
    summary = {k: r[k] for k in keys}
    assert r["completed"] and r["evicted"] == 0 and r["dropped"] == 0, summary
    assert r["lost"] == 0 and r["identical"] == len(r["ids"]) == 12, summary
    assert r["spilled_sessions_at_end"] >= 1, summary  # spilling was needed, and did it
    assert not [p for p in spill.rglob("*") if p.is_file() and p.name != ".owner.lock"]


@pytest.mark.cgroup
def test_a_spill_lowers_the_cgroup_working_set_by_the_spilled_bytes(
    make_cgroup: Callable[[int], MemoryCgroup], tmp_path: Path
) -> None:
    """Not merely RSS: the written pages are dropped from the page cache, which the cgroup
    is charged for, so the working set the OOM killer counts falls by the spilled bytes
    (and rises by them again when the session comes back)."""
    group = make_cgroup(1 * GIB)
    workload = str(Path(__file__).parent / "workloads" / "spill_working_set.py")
    code, out, err = run(group, "--spill", str(tmp_path / "spill"), workload=workload)
    assert code == 0, err[-2000:]
    r = json.loads(out.splitlines()[-1])
    mib = 1 << 20
    assert r["freed"] > 255 * mib and r["same"], r
    assert r["before"] - r["spilled"] > 0.9 * r["freed"], r  # the working set fell by it
    assert r["restored"] - r["spilled"] > 0.9 * r["freed"], r  # and came back with it


@pytest.mark.cgroup
def test_each_kind_of_memory_shows_in_its_kind_and_in_unmanaged(
    make_cgroup: Callable[[int], MemoryCgroup], tmp_path: Path
) -> None:
    """In a real cgroup: session arrays are anon and managed; a leak outside any session is
    anon and unmanaged; a tmpfs file is shmem; a file read is page cache; each within 5 %
    of what was made."""
    group = make_cgroup(1 * GIB)
    workload = str(Path(__file__).parent / "workloads" / "breakdown_kinds.py")
    code, out, err = run(group, str(tmp_path), workload=workload)
    assert code == 0, err[-2000:]
    s = json.loads(out.splitlines()[-1])
    assert str(s["start"]["source"]).startswith("cgroup"), s  # read from the cgroup itself
    mib = 1 << 20

    def grew(step: str, before: str, key: str, kind: str | None = None) -> float:
        after, base = s[step][key], s[before][key]
        return ((after[kind] - base[kind]) if kind else (after - base)) / mib

    def near(value: float, expected: float) -> bool:
        return abs(value - expected) <= 0.05 * expected

    assert near(grew("session", "start", "charged", "anon"), 128), s
    assert near(grew("session", "start", "managed"), 128), s
    assert abs(grew("session", "start", "unmanaged")) < 0.05 * 128, s  # accounted for
    assert near(grew("leak", "session", "charged", "anon"), 96), s
    assert near(grew("leak", "session", "unmanaged"), 96), s  # outside any session
    assert near(grew("tmpfs", "leak", "charged", "shmem"), 64), s
    cache = grew("read", "before_read", "charged", "file_active") + grew(
        "read", "before_read", "charged", "file_inactive"
    )
    assert near(cache, 64), s


@pytest.mark.cgroup
def test_an_oom_kill_of_a_sibling_process_is_counted(
    make_cgroup: Callable[[int], MemoryCgroup],
) -> None:
    """The exporter's process survives; the kernel's count of the sibling it killed shows
    in ``oom_kills`` (what pathoai_oom_kills_total exports and PathoAIOOMKilled alerts on)."""
    group = make_cgroup(256 << 20)
    workload = str(Path(__file__).parent / "workloads" / "oom_sibling.py")
    code, out, err = run(group, workload=workload)
    assert code == 0, err[-2000:]
    r = json.loads(out.splitlines()[-1])
    assert r["sibling"] == -signal.SIGKILL and str(r["source"]).startswith("cgroup"), r
    assert r["after"] == r["before"] + 1 == group.oom_kills(), r


@pytest.mark.cgroup
def test_an_oom_kill_fires_pathoai_oom_killed_in_a_real_prometheus(
    make_cgroup: Callable[[int], MemoryCgroup], tmp_path: Path
) -> None:
    """The exporter serves from the cgroup; a real Prometheus with the shipped rules scrapes
    it; a sibling is OOM-killed; PathoAIOOMKilled fires. Its for: is scaled by 1/15 (4 s,
    not a minute): the rule's expression is the shipped one, and promtool's unit tests hold
    the full-length for:."""
    from .apps.slide_stack import scaled_rules
    from .promstack import Prometheus, binary, free_port

    binary("prometheus")
    group = make_cgroup(256 << 20)
    port, trigger = free_port(), tmp_path / "go"
    workload = str(Path(__file__).parent / "workloads" / "oom_sibling.py")
    proc = group.popen([sys.executable, workload, "--serve", str(port), "--trigger", str(trigger)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    rules = scaled_rules(tmp_path / "rules.yml", 1 / 15)
    prom = Prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"], [rules])
    try:
        prom.wait_value("pathoai_oom_kills_total", lambda v: v >= 0, 60)
        time.sleep(2)  # two scrapes at the old count
        trigger.touch()
        firing = 'count(ALERTS{alertname="PathoAIOOMKilled", alertstate="firing"})'
        fired = prom.wait_value(firing, lambda v: v >= 1, 150)
        assert fired == 1 and group.oom_kills() >= 1
    finally:
        prom.stop()
        proc.kill()
        proc.communicate(timeout=30)

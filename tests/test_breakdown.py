"""What the memory is: the cgroup's charge and the process's memory by kind (parsed from
v1 and v2 fixture trees), managed against unmanaged memory, exported at scrape time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from pathoai_memobs import BoundedCache, MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.exporters.prometheus import instrument
from pathoai_memobs.readers.cgroup import CgroupLocation
from pathoai_memobs.readers.charges import ChargeReader, charges_v1, charges_v2, process_kinds

from .fstree import GIB, MIB, v1_tree, v2_tree
from .scripted import Scripted, events, wait_for

V2_STAT = (
    "anon 734003200\nfile 209715200\nkernel 31457280\nkernel_stack 1048576\n"
    "pagetables 2097152\nsock 0\nshmem 52428800\nactive_file 104857600\n"
    "inactive_file 52428800\nslab 20971520\n"
)
STATUS = (
    "Name:\tpython\nVmRSS:\t  900000 kB\nRssAnon:\t  800000 kB\n"
    "RssFile:\t   90000 kB\nRssShmem:\t   10000 kB\n"
)


def test_v2_kinds_use_the_kernels_total_or_add_up_its_parts() -> None:
    from pathoai_memobs.readers._files import parse_flat_keyed

    stat = parse_flat_keyed(V2_STAT.encode())
    kinds = charges_v2(stat)
    assert kinds == {"anon": 700 * MIB, "file_active": 100 * MIB, "file_inactive": 50 * MIB,
                     "shmem": 50 * MIB, "kernel": 30 * MIB}  # fmt: skip
    del stat["kernel"], stat["slab"]
    stat |= {"slab_reclaimable": 8 * MIB, "slab_unreclaimable": 4 * MIB}
    assert charges_v2(stat)["kernel"] == 12 * MIB + 3 * MIB  # slab + stacks + page tables


def test_v1_kinds_come_from_the_hierarchical_totals() -> None:
    stat = {"rss": 1, "total_rss": 600 * MIB, "total_active_file": 80 * MIB,
            "total_inactive_file": 40 * MIB, "total_shmem": 16 * MIB}  # fmt: skip
    assert charges_v1(stat, 9 * MIB) == {"anon": 600 * MIB, "file_active": 80 * MIB,
                                         "file_inactive": 40 * MIB, "shmem": 16 * MIB,
                                         "kernel": 9 * MIB}  # fmt: skip
    assert charges_v1(stat, None)["kernel"] == 0  # not accounted by this kernel


def test_process_kinds_are_read_from_status_in_bytes() -> None:
    assert process_kinds(STATUS) == {"anon": 800000 * 1024, "file": 90000 * 1024,
                                     "shmem": 10000 * 1024}  # fmt: skip
    assert process_kinds("Name:\tx\n") == {"anon": 0, "file": 0, "shmem": 0}


def test_the_reader_reads_fixture_trees_and_says_none_where_there_is_nothing(
    tmp_path: Path,
) -> None:
    v2 = v2_tree(tmp_path / "v2", limits={"/system.slice/app.service": str(2 * GIB)},
                 current=900 * MIB, inactive_file=50 * MIB)  # fmt: skip
    own = v2 / "sys/fs/cgroup/system.slice/app.service"
    (own / "memory.stat").write_text(V2_STAT)
    (v2 / "proc/self/status").write_text(STATUS)
    reader = ChargeReader(CgroupLocation("cgroup_v2", str(own), str(v2 / "sys/fs/cgroup")),
                          str(v2))  # fmt: skip
    charged, process = reader.charged(), reader.process()
    assert charged is not None and charged["anon"] == 700 * MIB
    assert process is not None and process["file"] == 90000 * 1024
    v1 = v1_tree(tmp_path / "v1", limits={"/": str(2 * GIB)}, usage=900 * MIB, inactive_file=0)
    assert ChargeReader(None, str(v1)).charged() is None  # no cgroup: nothing to say
    assert reader.oom_kills() == 1
    (v1 / "proc/vmstat").write_text("pgfault 10\noom_kill 4\n")
    assert ChargeReader(None, str(v1)).oom_kills() == 4  # outside a cgroup: the host's
    assert ChargeReader(None, str(tmp_path / "none")).process() is None


def test_managed_and_unmanaged_memory_and_the_breakdown_are_exported(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, limits={"/system.slice/app.service": str(8 * GIB)},
                   current=1 * GIB, inactive_file=50 * MIB)  # fmt: skip
    (root / "sys/fs/cgroup/system.slice/app.service/memory.stat").write_text(V2_STAT)
    (root / "proc/self/status").write_text(STATUS)
    sessions = SessionManager()
    config = MemoryConfig(enable_background_monitoring=False)
    monitor = MemoryMonitor(config, root=str(root), sessions=sessions)
    cache: BoundedCache[str, bytes] = BoundedCache(64, name="models", monitor=monitor)
    cache.put("w", b"x" * (16 * MIB))
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.ones(32 * MIB, np.uint8))
    registry = CollectorRegistry()
    instrument(monitor, sessions, registry=registry)
    value = registry.get_sample_value
    managed = value("pathoai_memory_managed_bytes")
    assert managed == sessions.total_bytes + cache.nbytes  # nothing reserved now
    assert value("pathoai_memory_charged_bytes", {"kind": "shmem"}) == 50 * MIB
    assert value("pathoai_memory_charged_bytes", {"kind": "kernel"}) == 30 * MIB
    assert value("pathoai_process_memory_bytes", {"kind": "anon"}) == 800000 * 1024
    used = GIB - 50 * MIB  # the fixture's working set: memory.current less inactive_file
    assert value("pathoai_memory_unmanaged_bytes") == used - managed
    monitor.register_cleanup_callback(lambda: None, name="model", size=lambda: 100 * MIB)
    monitor.register_cleanup_callback(lambda: None, name="broken", size=lambda: 1 // 0)
    assert value("pathoai_memory_managed_bytes") == managed + 100 * MIB  # a failing size: 0
    assert monitor.unregister_cleanup_callback("model")
    assert value("pathoai_memory_managed_bytes") == managed
    assert value("pathoai_oom_kills_total") == 1  # memory.events: oom_kill 1
    with monitor.reserve(10):
        assert value("pathoai_memory_managed_bytes") == managed + 10 * MIB


def test_level_changes_and_emergencies_say_what_is_managed(caplog: Any) -> None:
    s = Scripted(8 * GIB, total=8 * GIB)
    sessions = SessionManager()
    s.sessions = sessions
    m = MemoryMonitor(MemoryConfig(enable_background_monitoring=False), sampler=s,
                      sessions=sessions, emergency_cooldown_s=0)  # fmt: skip
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.ones(16 * MIB, np.uint8))
    caplog.set_level("INFO", logger="pathoai_memobs")
    s.available = 300 * MIB  # under the floor
    m.tick()
    (changed,) = events(caplog, "memory_level_changed")
    assert changed["managed_bytes"] == sessions.total_bytes
    assert changed["unmanaged_bytes"] >= 0
    wait_for(lambda: events(caplog, "emergency_cleanup"))  # the level started one
    run = events(caplog, "emergency_cleanup")[0]
    assert "managed_bytes" in run and "unmanaged_bytes" in run

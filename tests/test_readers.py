"""Readers and the combine rule, on fixture trees: host-only, cgroup v1 and v2."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathoai_memobs.readers import (
    CgroupReader,
    HostReader,
    MemorySampler,
    ProcessReader,
    find_memory_cgroup,
)
from pathoai_memobs.readers.cgroup import CgroupLocation
from pathoai_memobs.reading import combine

from .fstree import GIB, MIB, host_tree, v1_tree, v2_tree, write

V1_UNLIMITED = "9223372036854771712"


def test_host_reader_and_process_reader(tmp_path: Path) -> None:
    host_tree(tmp_path, total=8 * GIB, available=3 * GIB, rss=123 * MIB)
    assert HostReader(str(tmp_path)).read() == (8 * GIB, 3 * GIB)
    assert ProcessReader(str(tmp_path)).rss_bytes() == 123 * MIB


def test_host_reader_accepts_an_unusual_line_order(tmp_path: Path) -> None:
    write(tmp_path, {"proc/meminfo": "MemFree: 10 kB\nMemAvailable: 20 kB\nMemTotal: 40 kB\n"})
    assert HostReader(str(tmp_path)).read() == (40 * 1024, 20 * 1024)


def test_host_reader_sees_new_content_through_the_kept_descriptor(tmp_path: Path) -> None:
    host_tree(tmp_path, total=8 * GIB, available=3 * GIB)
    reader = HostReader(str(tmp_path))
    assert reader.read().available_bytes == 3 * GIB
    host_tree(tmp_path, total=8 * GIB, available=1 * GIB)
    assert reader.read().available_bytes == 1 * GIB


def test_no_memory_cgroup_means_host_view(tmp_path: Path) -> None:
    host_tree(tmp_path, total=8 * GIB, available=3 * GIB, rss=10 * MIB)
    assert find_memory_cgroup(str(tmp_path)) is None
    r = MemorySampler(str(tmp_path)).sample()
    assert r.source == "host"
    assert (r.total_bytes, r.used_bytes, r.available_bytes) == (8 * GIB, 5 * GIB, 3 * GIB)
    assert r.process_rss_bytes == 10 * MIB


def test_v1_nested_limit_is_the_lowest_up_the_hierarchy(tmp_path: Path) -> None:
    v1_tree(
        tmp_path,
        path="/kubepods/pod1/ctr",
        usage=900 * MIB,
        inactive_file=100 * MIB,
        limits={
            "/": V1_UNLIMITED,
            "/kubepods": V1_UNLIMITED,
            "/kubepods/pod1": str(2 * GIB),
            "/kubepods/pod1/ctr": str(4 * GIB),
        },
    )
    loc = find_memory_cgroup(str(tmp_path))
    assert loc is not None and loc.source == "cgroup_v1"
    assert loc.directory.endswith("sys/fs/cgroup/memory/kubepods/pod1/ctr")
    reader = CgroupReader(loc)
    assert reader.limit_bytes() == 2 * GIB
    assert reader.memory().working_set_bytes == 800 * MIB
    assert reader.events()["oom_kill"] == 3
    r = MemorySampler(str(tmp_path)).sample()
    assert r.source == "cgroup_v1"
    assert r.total_bytes == 2 * GIB
    assert r.used_bytes == 800 * MIB
    assert r.available_bytes == 2 * GIB - 800 * MIB
    assert r.percent_used == pytest.approx(800 / 2048 * 100)


def test_v1_in_a_container_whose_mount_root_is_its_own_cgroup(tmp_path: Path) -> None:
    # docker with cgroup v1: /proc/self/cgroup names the host path, the mount shows only it.
    v1_tree(
        tmp_path,
        path="/docker/abc",
        mount_root="/docker/abc",
        usage=300 * MIB,
        inactive_file=0,
        limits={"/": str(1 * GIB)},
    )
    loc = find_memory_cgroup(str(tmp_path))
    assert loc is not None
    assert loc.directory == loc.mount_point
    r = MemorySampler(str(tmp_path)).sample()
    assert (r.source, r.total_bytes, r.used_bytes) == ("cgroup_v1", 1 * GIB, 300 * MIB)


def test_v1_unlimited_falls_back_to_the_host(tmp_path: Path) -> None:
    v1_tree(
        tmp_path,
        usage=900 * MIB,
        inactive_file=0,
        total=8 * GIB,
        available=6 * GIB,
        limits={"/": V1_UNLIMITED, "/kubepods/pod1/ctr": V1_UNLIMITED},
    )
    r = MemorySampler(str(tmp_path)).sample()
    assert r.source == "host"
    assert r.cgroup_limit_bytes is None
    assert (r.total_bytes, r.available_bytes) == (8 * GIB, 6 * GIB)


def test_limit_above_host_memory_is_not_a_limit(tmp_path: Path) -> None:
    v2_tree(
        tmp_path,
        current=1 * GIB,
        inactive_file=0,
        total=8 * GIB,
        available=6 * GIB,
        limits={"/system.slice/app.service": str(64 * GIB)},
    )
    r = MemorySampler(str(tmp_path)).sample()
    assert (r.source, r.total_bytes, r.cgroup_limit_bytes) == ("host", 8 * GIB, 64 * GIB)


def test_v2_nested_limits_and_working_set(tmp_path: Path) -> None:
    v2_tree(
        tmp_path,
        path="/kubepods.slice/pod.slice/ctr.scope",
        current=700 * MIB,
        inactive_file=200 * MIB,
        limits={
            "/kubepods.slice": "max",
            "/kubepods.slice/pod.slice": str(1 * GIB),
            "/kubepods.slice/pod.slice/ctr.scope": "max",
        },
    )
    loc = find_memory_cgroup(str(tmp_path))
    assert loc is not None and loc.source == "cgroup_v2"
    assert CgroupReader(loc).events()["oom_kill"] == 1
    r = MemorySampler(str(tmp_path)).sample()
    assert (r.source, r.total_bytes, r.used_bytes) == ("cgroup_v2", 1 * GIB, 500 * MIB)
    assert r.available_bytes == 1 * GIB - 500 * MIB


def test_v2_available_is_capped_by_the_host(tmp_path: Path) -> None:
    # The cgroup has room, but the host itself is nearly out: the host wins.
    v2_tree(
        tmp_path,
        current=100 * MIB,
        inactive_file=0,
        total=16 * GIB,
        available=300 * MIB,
        limits={"/system.slice/app.service": str(4 * GIB)},
    )
    r = MemorySampler(str(tmp_path)).sample()
    assert r.available_bytes == 300 * MIB
    assert r.used_bytes == 100 * MIB


def test_v2_unlimited(tmp_path: Path) -> None:
    v2_tree(
        tmp_path,
        current=100 * MIB,
        inactive_file=0,
        total=16 * GIB,
        available=10 * GIB,
        limits={"/system.slice": "max", "/system.slice/app.service": "max"},
    )
    r = MemorySampler(str(tmp_path)).sample()
    assert (r.source, r.used_bytes) == ("host", 6 * GIB)


def test_hybrid_prefers_v1_memory_controller(tmp_path: Path) -> None:
    v1_tree(tmp_path, usage=10 * MIB, inactive_file=0, limits={"/kubepods/pod1/ctr": str(GIB)})
    loc = find_memory_cgroup(str(tmp_path))
    assert loc is not None and loc.source == "cgroup_v1"


def test_mountinfo_octal_escapes(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/a\n",
            "proc/self/mountinfo": "30 22 0:26 / /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n",
            "sys/fs/my cgroup/cgroup.controllers": "memory\n",
            "sys/fs/my cgroup/a/memory.max": "max\n",
        },
    )
    loc = find_memory_cgroup(str(tmp_path))
    assert loc is not None and loc.directory.endswith("my cgroup/a")


def test_chain_walks_up_to_the_mount_point() -> None:
    loc = CgroupLocation("cgroup_v2", "/r/sys/fs/cgroup/a/b", "/r/sys/fs/cgroup")
    assert loc.chain() == ["/r/sys/fs/cgroup/a/b", "/r/sys/fs/cgroup/a", "/r/sys/fs/cgroup"]


def test_unreadable_cgroup_file_raises_oserror(tmp_path: Path) -> None:
    v2_tree(tmp_path, current=1, inactive_file=0, limits={"/system.slice/app.service": "1024"})
    sampler = MemorySampler(str(tmp_path))
    (tmp_path / "sys/fs/cgroup/system.slice/app.service/memory.current").unlink()
    with pytest.raises(OSError):
        CgroupReader(sampler.cgroup.location).memory()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("limit", "working_set", "host_total", "host_avail", "expected"),
    [
        (None, None, 100, 40, ("host", 100, 60, 40)),
        (50, 20, 100, 40, ("cgroup_v2", 50, 20, 30)),
        (50, 20, 100, 10, ("cgroup_v2", 50, 20, 10)),  # host nearly out
        (50, 70, 100, 40, ("cgroup_v2", 50, 50, 0)),  # working set above limit (transient)
        (200, 20, 100, 40, ("host", 100, 60, 40)),  # limit above host memory
    ],
)
def test_combine_rule(
    limit: int | None,
    working_set: int | None,
    host_total: int,
    host_avail: int,
    expected: tuple[str, int, int, int],
) -> None:
    r = combine(host_total, host_avail, "cgroup_v2", limit, working_set, 7, 1.0, 2.0)
    assert (r.source, r.total_bytes, r.used_bytes, r.available_bytes) == expected
    assert r.process_rss_bytes == 7


def test_the_psutil_reader_gives_the_same_reading_where_proc_is_missing() -> None:
    """psutil is the reader for machines without /proc and cgroups; forced here on Linux."""
    from pathoai_memobs import MemoryConfig, MemoryMonitor
    from pathoai_memobs.readers.system import MemorySampler

    m = MemoryMonitor(MemoryConfig(), source="psutil")
    r = m.sample()
    host = MemorySampler(cgroup=False).sample()
    assert r.source == "psutil" and r.cgroup_limit_bytes is None
    assert r.total_bytes == host.total_bytes  # both read MemTotal
    assert abs(r.available_bytes - host.available_bytes) < 256 * MIB
    assert r.used_bytes + r.available_bytes == r.total_bytes
    assert 0 < r.process_rss_bytes < r.total_bytes
    assert m.get_current_metrics().source == "psutil"
    with pytest.raises(ValueError, match="source"):
        MemoryMonitor(MemoryConfig(), source="proc")


def test_auto_reads_procfs_under_any_root_but_a_real_one_without_proc(tmp_path: Path) -> None:
    from pathoai_memobs.readers.select import open_sampler
    from pathoai_memobs.readers.system import MemorySampler

    host_tree(tmp_path)
    assert isinstance(open_sampler("auto", str(tmp_path), 0.0), MemorySampler)
    with pytest.raises(OSError):  # a mistyped root is an error, not a silent psutil reading
        open_sampler("auto", str(tmp_path / "missing"), 0.0)

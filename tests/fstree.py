"""Build fake /proc and /sys/fs/cgroup trees on disk, so readers run on real files."""

from __future__ import annotations

from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20


def meminfo(total: int, available: int, free: int | None = None) -> str:
    """A /proc/meminfo text in the kernel's layout (values in kB)."""
    free = available // 2 if free is None else free
    return (
        f"MemTotal:       {total // 1024:>8} kB\n"
        f"MemFree:        {free // 1024:>8} kB\n"
        f"MemAvailable:   {available // 1024:>8} kB\n"
        "Buffers:            1024 kB\n"
        "Cached:          2097152 kB\n"
        "SwapCached:            0 kB\n"
        "HugePages_Total:       0\n"
        "Hugepagesize:       2048 kB\n"
    )


def statm(rss: int, page: int = 4096) -> str:
    return f"{(rss * 3) // page} {rss // page} 1234 56 0 7890 0\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def v1_stat(inactive_file: int, hierarchical_limit: int = 9223372036854771712) -> str:
    return (
        "cache 104857600\nrss 52428800\ninactive_file 1\nactive_file 2\n"
        f"hierarchical_memory_limit {hierarchical_limit}\n"
        f"total_cache 104857600\ntotal_rss 52428800\ntotal_inactive_file {inactive_file}\n"
        "total_active_file 4096\n"
    )


def v2_stat(inactive_file: int) -> str:
    return (
        "anon 52428800\nfile 104857600\nkernel 1048576\n"
        f"active_file 4096\ninactive_file {inactive_file}\nslab 1024\n"
    )


HOST_ONLY_MOUNTINFO = "22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw\n"


def host_tree(
    root: Path, *, total: int = 16 * GIB, available: int = 12 * GIB, rss: int = 100 * MIB
) -> Path:
    """A machine with no cgroup memory controller mounted."""
    return write(
        root,
        {
            "proc/meminfo": meminfo(total, available),
            "proc/self/statm": statm(rss),
            "proc/self/cgroup": "0::/\n",
            "proc/self/mountinfo": HOST_ONLY_MOUNTINFO,
        },
    )


def v1_tree(
    root: Path,
    *,
    limits: dict[str, str],
    usage: int,
    inactive_file: int,
    path: str = "/kubepods/pod1/ctr",
    mount_root: str = "/",
    total: int = 16 * GIB,
    available: int = 12 * GIB,
    rss: int = 100 * MIB,
) -> Path:
    """cgroup v1: ``limits`` maps a cgroup path (relative to the mount) to limit_in_bytes."""
    base = "sys/fs/cgroup/memory"
    rel = path[len(mount_root.rstrip("/")) :] if mount_root != "/" else path
    own = f"{base}{rel}".rstrip("/")
    files = {
        "proc/meminfo": meminfo(total, available),
        "proc/self/statm": statm(rss),
        "proc/self/cgroup": f"12:cpu,cpuacct:{path}\n4:memory:{path}\n1:name=systemd:{path}\n",
        "proc/self/mountinfo": HOST_ONLY_MOUNTINFO
        + "31 22 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
        + f"35 31 0:32 {mount_root} /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        + "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
        f"{own}/memory.usage_in_bytes": f"{usage}\n",
        f"{own}/memory.stat": v1_stat(inactive_file),
        f"{own}/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    }
    for cg, limit in limits.items():
        d = f"{base}{cg}".rstrip("/")
        files[f"{d}/memory.limit_in_bytes"] = f"{limit}\n"
        files.setdefault(f"{d}/memory.usage_in_bytes", f"{usage}\n")
    return write(root, files)


def v2_tree(
    root: Path,
    *,
    limits: dict[str, str],
    current: int,
    inactive_file: int,
    path: str = "/system.slice/app.service",
    total: int = 16 * GIB,
    available: int = 12 * GIB,
    rss: int = 100 * MIB,
) -> Path:
    """cgroup v2 (unified): ``limits`` maps a cgroup path to its memory.max text."""
    base = "sys/fs/cgroup"
    own = f"{base}{path}".rstrip("/")
    files = {
        "proc/meminfo": meminfo(total, available),
        "proc/self/statm": statm(rss),
        "proc/self/cgroup": f"0::{path}\n",
        "proc/self/mountinfo": HOST_ONLY_MOUNTINFO
        + "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        f"{base}/cgroup.controllers": "cpuset cpu io memory pids\n",
        f"{own}/memory.current": f"{current}\n",
        f"{own}/memory.stat": v2_stat(inactive_file),
        f"{own}/memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
    }
    for cg, limit in limits.items():
        files[f"{base}{cg}".rstrip("/") + "/memory.max"] = f"{limit}\n"
    return write(root, files)

"""What the memory is: the cgroup's charge by kind (memory.stat, v1 and v2) and this
process's resident memory by kind (/proc/self/status), read on demand (at scrape time,
never on the monitor's hot path). Parsing is pure; ``ChargeReader`` does the reading, under
a root path so tests point it at fixture trees.

And the OOM killer's count (``oom_kills``): a kill of a sibling process in the container is
otherwise invisible to the exporter, though the kernel counts it.

Kinds, a small fixed set so that they can be labels:

- charged: ``anon`` (heap, numpy arrays), ``file_active`` and ``file_inactive`` (page
  cache; inactive is what the working set leaves out), ``shmem`` (tmpfs, /dev/shm: memory,
  though it looks like files), ``kernel`` (slab, sockets, page tables, kernel stacks);
- process: ``anon``, ``file`` (mapped files: libraries, models loaded with mmap),
  ``shmem``.
"""

from __future__ import annotations

import os
import re
from typing import Final

from ..exporters.catalogue import CHARGE_KINDS, PROCESS_KINDS
from ._files import KeptOpenFile
from .cgroup import CgroupLocation

__all__ = ["CHARGE_KINDS", "PROCESS_KINDS", "ChargeReader", "charges_v1", "charges_v2"]
_V2_KERNEL: Final = ("slab", "sock", "pagetables", "kernel_stack", "percpu")


def charges_v2(stat: dict[str, int]) -> dict[str, int]:
    """The kinds from a v2 ``memory.stat`` (bytes). ``kernel`` is the kernel's own total
    where it reports one (5.18 and later), else the sum of its parts."""
    if "slab" not in stat:
        stat = {**stat, "slab": stat.get("slab_reclaimable", 0) + stat.get("slab_unreclaimable", 0)}
    kernel = stat.get("kernel", sum(stat.get(k, 0) for k in _V2_KERNEL))
    return {
        "anon": stat.get("anon", 0),
        "file_active": stat.get("active_file", 0),
        "file_inactive": stat.get("inactive_file", 0),
        "shmem": stat.get("shmem", 0),
        "kernel": kernel,
    }


def charges_v1(stat: dict[str, int], kmem: int | None) -> dict[str, int]:
    """The kinds from a v1 ``memory.stat`` (the hierarchical ``total_*`` keys) and
    ``memory.kmem.usage_in_bytes`` where the kernel accounts it (0 where it does not)."""
    return {
        "anon": stat.get("total_rss", stat.get("rss", 0)),
        "file_active": stat.get("total_active_file", stat.get("active_file", 0)),
        "file_inactive": stat.get("total_inactive_file", stat.get("inactive_file", 0)),
        "shmem": stat.get("total_shmem", stat.get("shmem", 0)),
        "kernel": kmem or 0,
    }


_STATUS: Final = re.compile(r"^Rss(Anon|File|Shmem):\s+(\d+)", re.M)
_STAT_KEYS: Final = (
    "anon", "file", "kernel", "kernel_stack", "pagetables", "sock", "shmem", "active_file",
    "inactive_file", "slab", "slab_reclaimable", "slab_unreclaimable", "percpu", "rss",
    "total_rss", "total_active_file", "total_inactive_file", "total_shmem",
)  # fmt: skip
_STAT: Final = re.compile(
    rb"^(" + b"|".join(k.encode() for k in set(_STAT_KEYS)) + rb") (\d+)$", re.M
)


def stat_values(text: bytes) -> dict[str, int]:
    """The keys of ``memory.stat`` the kinds are made of (one regex pass, not every line)."""
    return {k.decode(): int(v) for k, v in _STAT.findall(text)}


def process_kinds(status: str) -> dict[str, int]:
    """RssAnon, RssFile and RssShmem from ``/proc/<pid>/status`` (kB there), in bytes."""
    found = dict.fromkeys(PROCESS_KINDS, 0)
    for name, kb in _STATUS.findall(status):
        found[name.lower()] = int(kb) * 1024
    return found


def _read(f: KeptOpenFile) -> bytes | None:
    """A kept-open file's content (one pread), or None where it cannot be read."""
    try:
        return f.read()
    except OSError:
        return None


class ChargeReader:
    """Reads the charge breakdown of one cgroup (None outside one) and of one process, with
    kept-open files (a scrape costs a few preads, not opens)."""

    def __init__(self, location: CgroupLocation | None, root: str = "/", pid: str = "self") -> None:
        self.location = location
        self._status = KeptOpenFile(os.path.join(root, "proc", pid, "status"))
        self._vmstat = KeptOpenFile(os.path.join(root, "proc", "vmstat"))
        self._stat = self._events = self._kmem = None
        if location is not None:
            v1 = location.source == "cgroup_v1"
            d = location.directory
            self._stat = KeptOpenFile(os.path.join(d, "memory.stat"))
            self._events = KeptOpenFile(
                os.path.join(d, "memory.oom_control" if v1 else "memory.events")
            )
            self._kmem = KeptOpenFile(os.path.join(d, "memory.kmem.usage_in_bytes")) if v1 else None

    def charged(self) -> dict[str, int] | None:
        """The cgroup's charge by kind, or None where there is no cgroup or no stat file."""
        text = _read(self._stat) if self._stat is not None else None
        if text is None:
            return None
        stat = stat_values(text)
        if self._kmem is None:
            return charges_v2(stat)
        kmem = _read(self._kmem)
        return charges_v1(stat, int(kmem) if kmem and kmem.strip().isdigit() else None)

    def oom_kills(self) -> int | None:
        """Processes the OOM killer took: in this cgroup (``oom_kill`` in memory.events or
        memory.oom_control, siblings included), else on the host (/proc/vmstat); None where
        neither says."""
        text = _read(self._events if self._events is not None else self._vmstat)
        if text is None:
            return None
        lines = b"\n" + text
        key = lines.find(b"\noom_kill ")
        if key < 0:
            return None
        end = lines.find(b"\n", key + 1)
        return int(lines[key + 10 : end if end >= 0 else None].strip() or 0)

    def process(self) -> dict[str, int] | None:
        """This process's resident memory by kind (None where /proc has no status)."""
        text = _read(self._status)
        return None if text is None else process_kinds(text.decode("ascii", "replace"))

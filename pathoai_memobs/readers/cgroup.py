"""This process's memory cgroup (v1 or v2): where it is, its limit, usage and working set.

The location comes from ``/proc/self/cgroup`` and ``/proc/self/mountinfo``, never from a
guess at ``/sys/fs/cgroup``: in a container, under systemd or in a nested cgroup the
process's own cgroup is not the root one (Dask reads only the root cgroup; we don't).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ._files import KeptOpenFile, keyed_value, parse_flat_keyed

#: Limits at or above this are "unlimited" (v1 writes PAGE_COUNTER_MAX * page size).
UNLIMITED_AT = 1 << 62

CgroupSource = Literal["cgroup_v1", "cgroup_v2"]


@dataclass(frozen=True)
class CgroupLocation:
    """Where this process's memory cgroup lives, as paths under the reader's root."""

    source: CgroupSource
    directory: str
    mount_point: str

    def chain(self) -> list[str]:
        """Directories from this cgroup up to the hierarchy's mount point, nearest first."""
        dirs = [self.directory]
        current = self.directory
        mount = self.mount_point.rstrip("/") or "/"
        while current.rstrip("/") != mount and len(current) > len(mount):
            current = os.path.dirname(current.rstrip("/"))
            dirs.append(current)
        return dirs


class CgroupMemory(NamedTuple):
    """Usage and reclaimable page cache of a cgroup, in bytes."""

    usage_bytes: int
    inactive_file_bytes: int

    @property
    def working_set_bytes(self) -> int:
        """Usage minus inactive file cache: what the kubelet and the OOM killer act on."""
        return max(0, self.usage_bytes - self.inactive_file_bytes)


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(path: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` is a space)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), path)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of each cgroup mount."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lfields, rfields = left.split(), right.split()
        if len(lfields) < 5 or len(rfields) < 3:
            continue
        fstype = rfields[0]
        if fstype in ("cgroup", "cgroup2"):
            found.append(
                (_unescape(lfields[3]), _unescape(lfields[4]), fstype, set(rfields[2].split(",")))
            )
    return found


def _join(root: str, mount_root: str, mount_point: str, cgroup_path: str) -> str:
    """The directory of ``cgroup_path`` inside a hierarchy mounted at ``mount_point``."""
    rel = cgroup_path
    if mount_root != "/" and (cgroup_path + "/").startswith(mount_root.rstrip("/") + "/"):
        rel = cgroup_path[len(mount_root.rstrip("/")) :]
    base = os.path.join(root, mount_point.lstrip("/"))
    candidate = os.path.normpath(os.path.join(base, rel.lstrip("/")))
    # With a cgroup namespace or a bind-mounted subtree the path may not resolve:
    # then the mount itself is this process's cgroup.
    return candidate if os.path.isdir(candidate) else os.path.normpath(base)


def _own_cgroup_paths(cgroup_text: str) -> tuple[str | None, str | None]:
    """This process's memory cgroup path in the v1 hierarchy and its v2 path, if any."""
    v1_path = v2_path = None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier_id, controllers, path = parts
        if "memory" in controllers.split(","):
            v1_path = path
        elif hier_id == "0" and controllers == "":
            v2_path = path
    return v1_path, v2_path


def find_memory_cgroup(root: str = "/") -> CgroupLocation | None:
    """Locate this process's memory cgroup under ``root``; None where there is none.

    A v1 memory hierarchy wins over v2 (in hybrid mode the memory controller is bound to
    v1, and the v2 tree then has no memory files).
    """
    cgroup_text = _read_text(os.path.join(root, "proc/self/cgroup"))
    mountinfo = _read_text(os.path.join(root, "proc/self/mountinfo"))
    if cgroup_text is None or mountinfo is None:
        return None
    v1_path, v2_path = _own_cgroup_paths(cgroup_text)
    mounts = _mounts(mountinfo)
    if v1_path is not None:
        for mount_root, mount_point, fstype, opts in mounts:
            if fstype == "cgroup" and "memory" in opts:
                directory = _join(root, mount_root, mount_point, v1_path)
                if os.path.exists(os.path.join(directory, "memory.usage_in_bytes")):
                    base = os.path.normpath(os.path.join(root, mount_point.lstrip("/")))
                    return CgroupLocation("cgroup_v1", directory, base)
    if v2_path is not None:
        for mount_root, mount_point, fstype, _opts in mounts:
            if fstype == "cgroup2":
                directory = _join(root, mount_root, mount_point, v2_path)
                base = os.path.normpath(os.path.join(root, mount_point.lstrip("/")))
                controllers = _read_text(os.path.join(base, "cgroup.controllers")) or ""
                if "memory" in controllers.split() or os.path.exists(
                    os.path.join(directory, "memory.max")
                ):
                    return CgroupLocation("cgroup_v2", directory, base)
    return None


_M = ord("m")
_SPACE = ord(" ")


def parse_limit(data: bytes) -> int | None:
    """A ``memory.max`` / ``memory.limit_in_bytes`` text; None for "max", blank or unlimited.

    The kernel writes no leading blanks, so the first byte tells "max" or blank from a
    number; the number is read as ``int()`` reads it (the compiled rest loop mirrors
    both rules). Raises ValueError for anything else, a negative number included.
    """
    if not data or data[0] <= _SPACE or data[0] == _M:
        return None
    value = int(data)
    if value < 0:
        raise ValueError(f"a negative memory limit: {data[:64]!r}")
    return None if value >= UNLIMITED_AT else value


def lowest_limit(limits: list[bytes] | tuple[bytes, ...]) -> int | None:
    """The lowest of the limit texts read up the tree; None where all are unlimited."""
    lowest: int | None = None
    for data in limits:
        value = parse_limit(data)
        if value is not None and (lowest is None or value < lowest):
            lowest = value
    return lowest


def inactive_file(stat: bytes, key: bytes) -> int:
    """Inactive file cache from a ``memory.stat`` text; 0 where the key is absent."""
    try:
        return keyed_value(stat, key)
    except KeyError:
        return 0


class CgroupReader:
    """Reads limit, usage and working set of one cgroup (v1 or v2) with kept-open files.

    The limit is the lowest one from this cgroup up to the hierarchy's root, re-read on
    every call (limits can change at run time); usage and ``memory.stat`` are read only
    when asked, since they are needed only where a limit applies.
    """

    def __init__(self, location: CgroupLocation) -> None:
        self.location = location
        self.source: CgroupSource = location.source
        v1 = location.source == "cgroup_v1"
        limit_name = "memory.limit_in_bytes" if v1 else "memory.max"
        chain = location.chain()
        if v1 and len(chain) > 1:
            chain = chain[:-1]  # the v1 root cgroup can never carry a limit
        self.limit_files = [
            KeptOpenFile(os.path.join(d, limit_name))
            for d in chain
            if os.path.exists(os.path.join(d, limit_name))
        ]
        directory = location.directory
        self.usage_file = KeptOpenFile(
            os.path.join(directory, "memory.usage_in_bytes" if v1 else "memory.current")
        )
        self.stat_file = KeptOpenFile(os.path.join(directory, "memory.stat"))
        self.inactive_key = b"total_inactive_file " if v1 else b"inactive_file "
        self._events_path = os.path.join(directory, "memory.oom_control" if v1 else "memory.events")

    def limit_bytes(self) -> int | None:
        """The lowest limit up the hierarchy, or None where every level is unlimited."""
        return lowest_limit([f.read() for f in self.limit_files])

    def memory(self) -> CgroupMemory:
        """Current usage and inactive file cache of this cgroup (as MemorySampler reads them)."""
        return CgroupMemory(
            int(self.usage_file.read()), inactive_file(self.stat_file.read(), self.inactive_key)
        )

    def events(self) -> dict[str, int]:
        """Event counters: ``memory.events`` (v2) or ``memory.oom_control`` (v1).

        Both carry ``oom_kill``, the number of processes the OOM killer took in it.
        """
        text = _read_text(self._events_path)
        return {} if text is None else parse_flat_keyed(text.encode())

    def close(self) -> None:
        for f in (*self.limit_files, self.usage_file, self.stat_file):
            f.close()

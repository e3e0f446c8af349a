"""Which filesystem a directory lives on, from /proc/self/mountinfo under a root path.

The spill store asks it: a spill directory on tmpfs (or ramfs) keeps its pages in memory
charged to the same cgroup, so spilling there would free nothing.
"""

from __future__ import annotations

import os

#: Filesystems whose files are memory.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line; malformed lines are skipped."""
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if sep and len(fields) >= 5 and rest:
            found.append((_unescape(fields[4]), rest[0]))
    return found


def filesystem_of(path: str, mounts: list[tuple[str, str]]) -> str | None:
    """The type of the filesystem ``path`` is on: the longest mount point above it (the
    last mounted where two are the same); None when none is."""
    path = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for point, fstype in mounts:
        above = path == point or path.startswith(point.rstrip("/") + "/") or point == "/"
        if above and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return None if best is None else best[1]


def read_mounts(root: str = "/") -> list[tuple[str, str]]:
    """This process's mounts (an empty list where mountinfo cannot be read)."""
    try:
        with open(os.path.join(root, "proc/self/mountinfo"), encoding="utf-8") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []

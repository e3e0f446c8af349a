"""Host memory from ``/proc/meminfo``: MemTotal and MemAvailable, in bytes."""

from __future__ import annotations

import os
from typing import NamedTuple

from ._files import KeptOpenFile, keyed_value


class HostMemory(NamedTuple):
    """What the host kernel reports, in bytes."""

    total_bytes: int
    available_bytes: int


def meminfo_total_available(data: bytes) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes of a ``/proc/meminfo`` text; a plain tuple, for
    the sampler's hot path."""
    # Fast path for the kernel's layout since 3.14: MemTotal, MemFree, MemAvailable first,
    # each "Key: value kB". Anything else goes through the general parser.
    head = data.split(None, 8)
    if len(head) > 7 and head[0] == b"MemTotal:" and head[6] == b"MemAvailable:":
        return int(head[1]) << 10, int(head[7]) << 10
    return keyed_value(data, b"MemTotal:"), keyed_value(data, b"MemAvailable:")


def parse_meminfo(data: bytes) -> HostMemory:
    """MemTotal and MemAvailable of a ``/proc/meminfo`` text, in bytes."""
    return HostMemory(*meminfo_total_available(data))


class HostReader:
    """Reads ``<root>/proc/meminfo``; ``root`` lets tests use a fixture tree."""

    def __init__(self, root: str = "/") -> None:
        self._meminfo = KeptOpenFile(os.path.join(root, "proc/meminfo"))

    def read(self) -> HostMemory:
        return parse_meminfo(self._meminfo.read())

    @property
    def file(self) -> KeptOpenFile:
        return self._meminfo

    def close(self) -> None:
        self._meminfo.close()

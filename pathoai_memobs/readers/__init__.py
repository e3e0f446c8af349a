"""Readers of /proc and /sys/fs/cgroup. All OS memory I/O of the library happens here."""

from .cgroup import CgroupLocation, CgroupMemory, CgroupReader, find_memory_cgroup
from .host import HostMemory, HostReader
from .process import ProcessReader
from .system import MemorySampler

__all__ = [
    "CgroupLocation",
    "CgroupMemory",
    "CgroupReader",
    "HostMemory",
    "HostReader",
    "MemorySampler",
    "ProcessReader",
    "find_memory_cgroup",
]

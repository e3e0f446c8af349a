"""Readers of /proc and /sys/fs/cgroup, each taking a root path; with _rest.c, which reads the
same files, the only code of the library that reads them (tools/ writes cgroups apart)."""

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

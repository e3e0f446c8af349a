"""MemorySampler: host + this process's cgroup + process RSS, combined into one Reading.

The one read path of the library: the sampler preads the readers' kept descriptors and
parses each text with the readers' own functions (``meminfo_total_available``,
``parse_limit``, ``inactive_file``, ``parse_statm_rss``); the readers' methods go through
the same functions, and the compiled rest loop (``_rest.c``) mirrors them, held to them by
a property test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from ..reading import Reading, combine
from .cgroup import (
    CgroupLocation,
    CgroupReader,
    find_memory_cgroup,
    inactive_file,
    parse_limit,
)
from .host import HostReader, meminfo_total_available
from .process import ProcessReader, parse_statm_rss

_pread = os.pread


class MemorySampler:
    """Takes full samples of the effective memory picture; every path is under ``root``.

    The cgroup is located once, at construction. ``cgroup=False`` ignores cgroups
    (host-only view); a ``CgroupLocation`` overrides discovery. ``limit_ttl_s`` > 0 reuses
    the limits read up the cgroup tree for that long (limits change rarely, and each file
    is a syscall); 0, the default, reads them on every sample.
    """

    def __init__(
        self,
        root: str = "/",
        *,
        cgroup: CgroupLocation | bool = True,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        limit_ttl_s: float = 0.0,
    ) -> None:
        self.root = root
        self.limit_ttl_s = limit_ttl_s
        self._limit: int | None = None
        self._limit_until = -1.0
        self._last_rss = 0
        self.host = HostReader(root)
        self.process = ProcessReader(root)
        location = find_memory_cgroup(root) if cgroup is True else (cgroup or None)
        self.cgroup = CgroupReader(location) if location is not None else None
        self._wall_clock = wall_clock
        self._clock = clock
        # Descriptors opened now, so the hot path is one pread per file and nothing else.
        self._meminfo_fd = self.host.file.fileno()
        self._statm_fd = self.process.file.fileno()
        self._limit_fds: tuple[int, ...] = ()
        self._usage_fd = self._stat_fd = -1
        if self.cgroup is not None:
            self._limit_fds = tuple(f.fileno() for f in self.cgroup.limit_files)
            self._usage_fd = self.cgroup.usage_file.fileno()
            self._stat_fd = self.cgroup.stat_file.fileno()

    def sample(self, *, rss: bool = True, fresh_limits: bool = False) -> Reading:
        """One full sample: host meminfo, every cgroup limit up the tree, usage where limited,
        and RSS (``rss=False`` reuses the last one). ``fresh_limits`` reads the limits even
        within their TTL.

        This runs up to ten times a second, so it preads the kept descriptors directly
        instead of going through the readers' methods (which read the same way).
        """
        host_total, host_available = meminfo_total_available(_pread(self._meminfo_fd, 8192, 0))
        working_set = source = None
        now = self._clock()
        if now < self._limit_until and not fresh_limits:
            limit = self._limit
        else:
            limit = None  # lowest_limit's loop, without building its list on the hot path
            for fd in self._limit_fds:
                value = parse_limit(_pread(fd, 64, 0))
                if value is not None and (limit is None or value < limit):
                    limit = value
            if self.limit_ttl_s > 0:
                self._limit, self._limit_until = limit, now + self.limit_ttl_s
        if limit is not None and limit < host_total:
            cgroup = self.cgroup
            assert cgroup is not None  # a limit comes only from a cgroup's files
            usage = int(_pread(self._usage_fd, 64, 0))
            if usage < 0:  # as _rest.c: no usage is negative, so the text is garbage
                raise ValueError(f"a negative cgroup usage: {usage}")
            inactive = inactive_file(_pread(self._stat_fd, 8192, 0), cgroup.inactive_key)
            working_set = usage - inactive if inactive < usage else 0
            source = cgroup.source
        if rss:
            self._last_rss = parse_statm_rss(_pread(self._statm_fd, 256, 0))
        return combine(
            host_total,
            host_available,
            source,
            limit,
            working_set,
            self._last_rss,
            self._wall_clock(),
            now,
        )

    def rest_sample(self) -> Reading:
        """What both rest loops read per sample (this one and the compiled one in
        ``_rest.c``): meminfo, every limit file, usage and memory.stat where limited; the
        last RSS, not a new one."""
        return self.sample(rss=False, fresh_limits=True)

    @property
    def last_rss_bytes(self) -> int:
        """The RSS of the latest sample that read it."""
        return self._last_rss

    def descriptors(self) -> tuple[int, int, int, bytes, tuple[int, ...]]:
        """What ``rest_sample`` reads, in the compiled rest loop's order: the meminfo
        descriptor, the cgroup's usage and memory.stat (-1 without a cgroup), the
        inactive-file key of memory.stat, and the limit files up the tree."""
        key = self.cgroup.inactive_key if self.cgroup is not None else b""
        return (
            self._meminfo_fd,
            self._usage_fd,
            self._stat_fd,
            key,
            self._limit_fds,
        )

    def close(self) -> None:
        self.host.close()
        self.process.close()
        if self.cgroup is not None:
            self.cgroup.close()

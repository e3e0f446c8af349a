"""PsutilSampler: readings through psutil, for machines without /proc and cgroups.

macOS and Windows developer machines have neither ``/proc/meminfo`` nor a cgroup, so
the monitor reads host memory and this process's RSS through psutil there (``source``
"psutil"; no limit below the host's applies). psutil is imported only when this reader
is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..reading import Reading


class PsutilSampler:
    """Host memory and this process's RSS from psutil, as a Reading with source "psutil"."""

    cgroup = None  # psutil sees no cgroup: the host's memory is the limit

    def __init__(
        self,
        *,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import psutil  # noqa: PLC0415 -- only where this reader is chosen

        self._virtual_memory = psutil.virtual_memory
        self._process = psutil.Process()
        self._wall_clock = wall_clock
        self._clock = clock

    def sample(self) -> Reading:
        vm = self._virtual_memory()
        total, available = int(vm.total), int(vm.available)
        available = min(max(available, 0), total)
        return Reading(
            total,
            total - available,
            available,
            int(self._process.memory_info().rss),
            "psutil",
            self._wall_clock(),
            self._clock(),
            total,
            available,
            None,
        )

    def close(self) -> None:
        """Nothing is kept open."""

"""Memory the monitor can explain, for exporters and events: the charge breakdown and OOM
count (read on demand through ``readers.charges``, never on the hot path), and managed
memory, which the library and the application account for (Dask's split): session bytes,
reservations in flight, bounded caches, and cleanup callbacks that declare a size."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from .readers.cgroup import CgroupLocation
from .readers.charges import ChargeReader


class Breakdown:
    """One monitor's view of what its memory is."""

    def __init__(self, location: Callable[[], CgroupLocation | None], root: str) -> None:
        self._location, self._root = location, root
        self._reader: ChargeReader | None = None
        self.sizes: dict[str, Callable[[], int]] = {}  # cleanup callbacks' declared bytes

    def reader(self) -> ChargeReader:
        """The reader over the monitor's cgroup (made on first use)."""
        if self._reader is None:
            self._reader = ChargeReader(self._location(), self._root)
        return self._reader

    def declared_bytes(self) -> int:
        """What cleanup callbacks with a ``size`` report now (a size that fails counts 0)."""
        total = 0
        for size in list(self.sizes.values()):
            with contextlib.suppress(Exception):
                total += max(0, int(size()))
        return total

    def managed(self, sessions: int, reserved: int, caches: Iterable[Any]) -> int:
        """Managed bytes: ``sessions`` + ``reserved`` + caches' bytes + declared sizes."""
        return sessions + reserved + sum(int(c.nbytes) for c in caches) + self.declared_bytes()

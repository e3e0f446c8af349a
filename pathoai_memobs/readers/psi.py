"""Pressure stall information (PSI): the share of time tasks waited for memory.

Read from the cgroup's ``memory.pressure`` (v2) or ``/proc/pressure/memory``; ``avg10`` is
a percentage over the last 10 s, returned here as a ratio in 0..1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from ._files import KeptOpenFile
from .cgroup import CgroupLocation


class Pressure(NamedTuple):
    """``some``: at least one task stalled on memory; ``full``: all non-idle tasks did."""

    some_avg10: float
    full_avg10: float


def parse_psi(data: bytes) -> Pressure:
    """Parse the ``some``/``full`` lines; a missing ``full`` line (old kernels) reads 0."""
    values = {b"some": 0.0, b"full": 0.0}
    for line in data.splitlines():
        kind, _, rest = line.partition(b" ")
        if kind in values:
            for field in rest.split():
                if field.startswith(b"avg10="):
                    values[kind] = float(field[6:]) / 100.0
                    break
    return Pressure(values[b"some"], values[b"full"])


def psi_path(root: str, location: CgroupLocation | None) -> str:
    """The PSI file that covers this process: its v2 cgroup's, else the system's."""
    if location is not None and location.source == "cgroup_v2":
        path = os.path.join(location.directory, "memory.pressure")
        if os.path.exists(path):
            return path
    return os.path.join(root, "proc/pressure/memory")


class PsiReader:
    """Reads one PSI file with a kept descriptor."""

    def __init__(self, path: str) -> None:
        self.file = KeptOpenFile(path)

    def read(self) -> Pressure:
        """The current averages. Raises OSError where PSI is absent or disabled."""
        return parse_psi(self.file.read())

    def close(self) -> None:
        self.file.close()


class CachedPsi:
    """PSI read when asked, at most once per ``ttl_s``: only exporters and people look at
    it, so the monitor's thread never pays for it. Absent or disabled PSI (``psi=0``) reads
    None from then on: not an error."""

    def __init__(self, path: str | None, ttl_s: float, clock: Callable[[], float]) -> None:
        self._reader = PsiReader(path) if path is not None else None
        self._ttl_s = ttl_s
        self._clock = clock
        self._next = 0.0
        self._value: Pressure | None = None

    @classmethod
    def for_sampler(
        cls, sampler: object, root: str, ttl_s: float, clock: Callable[[], float]
    ) -> CachedPsi:
        """PSI for a procfs sampler (its cgroup's file, else the system's); none for psutil
        or a synthetic sampler."""
        if not hasattr(sampler, "descriptors"):
            return cls(None, ttl_s, clock)
        cgroup = getattr(sampler, "cgroup", None)
        return cls(psi_path(root, cgroup.location if cgroup else None), ttl_s, clock)

    def read(self) -> Pressure | None:
        reader = self._reader
        now = self._clock()
        if reader is not None and now >= self._next:
            self._next = now + self._ttl_s
            try:
                self._value = reader.read()
            except (OSError, ValueError):
                self._value, self._reader = None, None
                reader.close()
        return self._value

"""One memory reading in bytes, its MiB view for the public API, and the kubelet's combine rule.

Everything here is pure: the readers fetch numbers, ``combine`` decides what they mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from .units import MIB

__all__ = ["MIB", "MemoryMetrics", "Reading", "Source", "combine"]

Source = Literal["host", "cgroup_v1", "cgroup_v2", "psutil"]


class Reading(NamedTuple):
    """The effective memory picture at one instant, in bytes.

    ``source`` is the cgroup version whose limit bounds this process, or ``"host"`` where
    no limit below the host's memory applies. ``timestamp`` is wall-clock seconds since
    the epoch (for exporters); ``monotonic`` orders readings. A NamedTuple, because
    a sample is taken up to ten times a second and must stay cheap to build.
    """

    total_bytes: int
    used_bytes: int
    available_bytes: int
    process_rss_bytes: int
    source: Source
    timestamp: float
    monotonic: float
    host_total_bytes: int
    host_available_bytes: int
    cgroup_limit_bytes: int | None = None

    @property
    def used_ratio(self) -> float:
        """Used over total, 0..1."""
        return self.used_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def percent_used(self) -> float:
        return self.used_ratio * 100.0


@dataclass(frozen=True, slots=True)
class MemoryMetrics:
    """The reference's ``MemoryMetrics``: MB means MiB (2**20 bytes); ``timestamp`` is epoch s."""

    total_mb: float
    available_mb: float
    used_mb: float
    percent_used: float
    timestamp: float
    process_rss_mb: float
    source: Source

    @classmethod
    def from_reading(cls, reading: Reading) -> MemoryMetrics:
        return cls(
            total_mb=reading.total_bytes / MIB,
            available_mb=reading.available_bytes / MIB,
            used_mb=reading.used_bytes / MIB,
            percent_used=reading.percent_used,
            timestamp=reading.timestamp,
            process_rss_mb=reading.process_rss_bytes / MIB,
            source=reading.source,
        )


def combine(  # noqa: PLR0917 -- positional on purpose: called on every sample
    host_total: int,
    host_available: int,
    cgroup_source: Literal["cgroup_v1", "cgroup_v2"] | None,
    cgroup_limit: int | None,
    cgroup_working_set: int | None,
    process_rss: int,
    timestamp: float,
    monotonic: float,
) -> Reading:
    """The effective reading, as the kubelet computes it.

    total = min(host total, cgroup limit); used = the cgroup's working set where a limit
    below the host's memory applies, else host total minus MemAvailable;
    available = min(total - used, host MemAvailable), never below zero.
    """
    # Plain comparisons and a positional Reading, not min()/max() and keywords: this runs
    # on every sample, up to ten times a second.
    if (
        cgroup_source is not None
        and cgroup_limit is not None
        and cgroup_working_set is not None
        and cgroup_limit < host_total
    ):
        total = cgroup_limit
        used = cgroup_working_set if cgroup_working_set < total else total
        source: Source = cgroup_source
    else:
        total = host_total
        used = host_total - host_available if host_available < host_total else 0
        source = "host"
    available = total - used
    if host_available < available:  # noqa: PLR1730 -- see above
        available = host_available
    if available < 0:  # noqa: PLR1730
        available = 0
    return Reading(
        total,
        used,
        available,
        process_rss,
        source,
        timestamp,
        monotonic,
        host_total,
        host_available,
        cgroup_limit,
    )

"""Which reader a monitor samples through: /proc and cgroups, or psutil where those are absent."""

from __future__ import annotations

import os
from typing import Literal

from .psutil_reader import PsutilSampler
from .system import MemorySampler

SOURCES = ("auto", "procfs", "psutil")
SourceChoice = Literal["auto", "procfs", "psutil"]


def open_sampler(source: str, root: str, limit_ttl_s: float) -> MemorySampler | PsutilSampler:
    """``procfs``: MemorySampler under ``root``; ``psutil``: PsutilSampler; ``auto``: procfs,
    unless ``root`` is the real root and it has no /proc/meminfo (macOS, Windows). Anything
    else is a ValueError."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "auto":
        real = os.path.abspath(root) == "/"
        source = "psutil" if real and not os.path.exists("/proc/meminfo") else "procfs"
    if source == "psutil":
        return PsutilSampler()
    return MemorySampler(root, limit_ttl_s=limit_ttl_s)

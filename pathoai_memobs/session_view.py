"""What callers and exporters see of sessions: ``SessionData`` and ``SessionAggregates``
(no ids but the caller's own, in a field kept out of every repr)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SessionData:
    """A session as seen by the caller.

    ``data`` is a read-only *live view* of the session's keys: it shows later updates, and
    its values are the stored objects themselves, not copies. ``created_at`` and
    ``last_access`` are epoch seconds; ``memory_bytes`` is host memory, ``device_memory_bytes``
    accelerator memory (GPU tensors).
    """

    session_id: str = field(repr=False)  # a secret: never in a repr, a log line or a label
    created_at: float
    last_access: float
    data: Mapping[str, Any]
    memory_bytes: int
    device_memory_bytes: int
    fingerprint: str


@dataclass(frozen=True)
class SessionAggregates:
    """What the exporters publish: no ids, only counts, sizes and fingerprints."""

    active: int
    total_bytes: int
    device_bytes: int
    largest_bytes: int
    size_buckets: tuple[int, ...]  # non-cumulative counts per SIZE_BUCKETS slot (+ over)
    top: tuple[tuple[str, int], ...]  # (fingerprint, bytes), largest first
    created_total: int
    removed_total: Mapping[str, int]
    hook_failures_total: int

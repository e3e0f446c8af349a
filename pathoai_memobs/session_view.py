"""What callers and exporters see of sessions: ``SessionData`` and ``SessionAggregates``
(no ids but the caller's own, in a field kept out of every repr)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class LiveData(Mapping[str, Any]):
    """A session's keys, read-only and live. Reading a key whose buffer is on disk brings
    the whole session back first (``restore``), so a caller never sees a placeholder,
    however long ago it took this view."""

    __slots__ = ("_data", "_restore", "_spilled")

    def __init__(self, data: dict[str, Any], restore: Callable[[], None], spilled: type) -> None:
        self._data, self._restore, self._spilled = data, restore, spilled

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        if isinstance(value, self._spilled):
            self._restore()
            value = self._data[key]
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"<session data: {len(self._data)} keys>"


@dataclass(frozen=True)
class SessionData:
    """A session as seen by the caller.

    ``data`` is a read-only *live view* of the session's keys (``LiveData``): it shows later
    updates, its values are the stored objects themselves, not copies, and a value spilled
    to disk since is read back on access. ``created_at`` and
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

"""BoundedCache: a least-recently-used cache bounded in bytes, which gives memory back under
pressure: the first step of the ladder, before any session is touched.

What users build by hand for model weights and decoded tiles, with the two things a hand-made
one lacks: a byte bound (each value measured once, as sessions are, by ``sizeof.measure``,
or by the caller's ``sizeof``), and a monitor that shrinks it. Registered with a monitor
(``monitor=`` or ``MemoryMonitor.register_cache``), it is shrunk at WARNING and above by its
share of the bytes over the rung (``shares``), and emptied by an emergency cleanup.
Thread-safe; values are returned as stored, never copied.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from .exporters.catalogue import CACHE_EVICTION_CAUSES
from .sizeof import measure
from .units import MIB, to_bytes_mb

if TYPE_CHECKING:
    from .monitor import MemoryMonitor

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Why entries left a cache: its bound, the monitor's pressure step, or the caller.
EVICTION_CAUSES: Final = CACHE_EVICTION_CAUSES
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def shares(excess: int, sizes: list[int]) -> list[int]:
    """Bytes each cache gives up so that ``excess`` bytes are freed: in proportion to its
    size, none more than it holds (pure: the pressure step's decision)."""
    total = sum(sizes)
    if excess <= 0 or total <= 0:
        return [0] * len(sizes)
    if excess >= total:
        return list(sizes)
    return [min(size, -(-excess * size // total)) for size in sizes]  # rounded up


class BoundedCache(Generic[K, V]):
    """An LRU cache of at most ``max_mb`` MiB, named ``name`` in metrics and logs (a short
    lowercase identifier: it is a label value). A value larger than the bound is not kept."""

    def __init__(
        self,
        max_mb: float,
        *,
        name: str,
        sizeof: Callable[[V], int] | None = None,
        monitor: MemoryMonitor | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"name must be a short lowercase identifier, got {name!r}")
        if sizeof is not None and not callable(sizeof):
            raise TypeError(f"sizeof must be a callable of a value, got {sizeof!r}")
        self.name = name
        self.max_bytes = to_bytes_mb(max_mb, "max_mb")
        self._sizeof = sizeof
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[K, tuple[V, int]] = collections.OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.too_large = 0
        self.evictions: collections.Counter[str] = collections.Counter()
        self.evicted_bytes: collections.Counter[str] = collections.Counter()
        if monitor is not None:
            monitor.register_cache(self)

    def __repr__(self) -> str:
        return (f"<BoundedCache {self.name}: {len(self)} entries, "
                f"{self.nbytes / MIB:.1f} of {self.max_bytes / MIB:.1f} MiB>")  # fmt: skip

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K, default: Any = None) -> Any:
        """The value for ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return default
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: K, value: V) -> bool:
        """Keep ``value`` under ``key``, evicting the least recently used to stay within
        the bound; False (nothing kept, nothing evicted) when it alone exceeds the bound."""
        size = self._sizeof(value) if self._sizeof is not None else measure(value).host_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"sizeof must return bytes as an int >= 0, got {size!r}")
        dropped: list[tuple[V, int]] = []
        with self._lock:
            if size > self.max_bytes:
                self.too_large += 1
                return False
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
                dropped.append(old)
            self._entries[key] = (value, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                dropped.append(self._evict_oldest("bound"))
        del dropped  # the evicted values go here, outside the lock
        return True

    def pop(self, key: K, default: Any = None) -> Any:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return default
            self.nbytes -= entry[1]
            self.evictions["explicit"] += 1
            self.evicted_bytes["explicit"] += entry[1]
            return entry[0]

    def shrink(self, nbytes: int, cause: str = "pressure") -> int:
        """Evict least recently used entries until ``nbytes`` are freed (or it is empty);
        the bytes evicted (freed once nothing else refers to the values)."""
        freed, dropped = 0, []
        with self._lock:
            while freed < nbytes and self._entries:
                entry = self._evict_oldest(cause)
                freed += entry[1]
                dropped.append(entry)
        del dropped
        return freed

    def clear(self) -> int:
        """Evict everything (the emergency cleanup's step); the bytes evicted."""
        return self.shrink(self.nbytes + 1)

    def _evict_oldest(self, cause: str) -> tuple[V, int]:
        _, entry = self._entries.popitem(last=False)
        self.nbytes -= entry[1]
        self.evictions[cause] += 1
        self.evicted_bytes[cause] += entry[1]
        return entry

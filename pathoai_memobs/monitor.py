"""MemoryMonitor: container-aware readings, admission control and reservations.

Admission rule (pure, see ``admits``): an operation needing ``required`` bytes is admitted
when ``available - reserved - required >= floor``, where ``floor`` is the emergency
threshold (500 MB by default) and ``reserved`` is what admitted operations still hold.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from .config import MemoryConfig
from .exceptions import InsufficientMemoryError
from .readers.system import MemorySampler
from .reading import MIB, MemoryMetrics, Reading


class Sampler(Protocol):
    """Anything that returns a Reading: the real MemorySampler, or one over a fixture tree."""

    def sample(self) -> Reading: ...


def admits(
    available_bytes: int, reserved_bytes: int, required_bytes: int, floor_bytes: int
) -> bool:
    """True when ``required`` fits above the floor after what is already reserved."""
    return available_bytes - reserved_bytes - required_bytes >= floor_bytes


def to_bytes_mb(required_mb: object, name: str = "required_mb") -> int:
    """Validate a MiB amount from the public API and convert it to bytes.

    Raises ValueError for a non-number (bools included), NaN, infinity or a negative.
    """
    if isinstance(required_mb, bool) or not isinstance(required_mb, (int, float)):
        raise ValueError(f"{name} must be a number of MB, got {required_mb!r}")
    if not math.isfinite(required_mb) or required_mb < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {required_mb!r}")
    return math.ceil(required_mb * MIB)


class MemoryMonitor:
    """Reads memory as the OOM killer sees it and decides whether new work may start.

    ``root`` points every reader at another filesystem tree (tests use fixture trees);
    ``sampler`` replaces the readers altogether.
    """

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        root: str = "/",
        sampler: Sampler | None = None,
    ) -> None:
        self.config = config if config is not None else MemoryConfig()
        self._sampler: Sampler = sampler if sampler is not None else MemorySampler(root)
        self._floor_bytes = math.ceil(self.config.emergency_cleanup_threshold_mb * MIB)
        self._lock = threading.Lock()
        self._reserved_bytes = 0
        self._last: Reading | None = None

    # -- readings ---------------------------------------------------------------------------

    def sample(self) -> Reading:
        """Take a fresh reading (bytes) and remember it as the latest."""
        reading = self._sampler.sample()
        self._last = reading
        return reading

    @property
    def last_reading(self) -> Reading | None:
        """The latest reading taken, without taking a new one (None before the first)."""
        return self._last

    def get_current_metrics(self) -> MemoryMetrics:
        """A fresh reading in the reference's units (MiB, percent)."""
        return MemoryMetrics.from_reading(self.sample())

    # -- admission --------------------------------------------------------------------------

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by reservations in flight."""
        return self._reserved_bytes

    @property
    def floor_bytes(self) -> int:
        """The emergency floor below which available memory must not be pushed."""
        return self._floor_bytes

    def check_memory_available(self, required_mb: float) -> bool:
        """True when ``required_mb`` MiB fit above the emergency floor.

        When they don't: raises ``InsufficientMemoryError`` if request rejection is enabled
        (the default), else returns False. Bad input raises ValueError.
        """
        required = to_bytes_mb(required_mb)
        with self._lock:
            reading = self.sample()
            reserved = self._reserved_bytes
        if admits(reading.available_bytes, reserved, required, self._floor_bytes):
            return True
        return self._refuse(required, reading, reserved)

    @contextmanager
    def reserve(self, required_mb: float) -> Iterator[None]:
        """Admit ``required_mb`` MiB and hold them until the block ends.

        Two concurrent requests that each fit alone are not both admitted when together
        they don't. Refusal follows ``check_memory_available``: with request rejection
        disabled, a refused reservation still raises, since the block cannot be skipped.
        """
        required = to_bytes_mb(required_mb)
        with self._lock:
            reading = self.sample()
            reserved = self._reserved_bytes
            admitted = admits(reading.available_bytes, reserved, required, self._floor_bytes)
            if admitted:
                self._reserved_bytes = reserved + required
        if not admitted:
            raise self._error(required, reading, reserved)
        try:
            yield
        finally:
            with self._lock:
                self._reserved_bytes -= required

    def _error(self, required: int, reading: Reading, reserved: int) -> InsufficientMemoryError:
        return InsufficientMemoryError(
            required / MIB,
            reading.available_bytes / MIB,
            floor_mb=self._floor_bytes / MIB,
            reserved_mb=reserved / MIB,
        )

    def _refuse(self, required: int, reading: Reading, reserved: int) -> bool:
        if self.config.enable_request_rejection:
            raise self._error(required, reading, reserved)
        return False

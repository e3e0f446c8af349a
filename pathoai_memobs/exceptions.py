"""Error types. Every error the library raises on purpose derives from MemoryManagementError."""

from __future__ import annotations


class MemoryManagementError(Exception):
    """Base class of every error raised by pathoai_memobs."""


class ConfigError(MemoryManagementError, ValueError):
    """A setting is invalid; ``variable`` names it (environment variable or field)."""

    def __init__(self, variable: str, value: object, reason: str) -> None:
        self.variable = variable
        self.value = value
        self.reason = reason
        super().__init__(f"{variable}={value!r}: {reason}")


class InsufficientMemoryError(MemoryManagementError):
    """Admitting an operation would push available memory below the emergency floor.

    ``retry_after_s`` is a hint for HTTP ``Retry-After`` when the refusal is due to
    memory pressure that is expected to pass (``None`` when no hint applies).
    """

    def __init__(
        self,
        required_mb: float,
        available_mb: float,
        *,
        floor_mb: float | None = None,
        reserved_mb: float = 0.0,
        retry_after_s: float | None = None,
    ) -> None:
        self.required_mb = required_mb
        self.available_mb = available_mb
        self.floor_mb = floor_mb
        self.reserved_mb = reserved_mb
        self.retry_after_s = retry_after_s
        detail = f"required {required_mb:.1f} MB, available {available_mb:.1f} MB"
        if reserved_mb:
            detail += f", reserved by requests in flight {reserved_mb:.1f} MB"
        if floor_mb is not None:
            detail += f", emergency floor {floor_mb:.1f} MB"
        if retry_after_s is not None:
            detail += f"; retry after {retry_after_s:.0f} s"
        super().__init__(f"insufficient memory: {detail}")


class InsufficientGpuMemoryError(InsufficientMemoryError):
    """Admitting an operation would push GPU ``device``'s free memory below its floor (or
    the device is in its EMERGENCY): answered 503 with Retry-After like host memory. The MB
    figures are the device's."""

    def __init__(
        self,
        device: int,
        required_mb: float,
        available_mb: float,
        *,
        floor_mb: float | None = None,
        reserved_mb: float = 0.0,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(required_mb, available_mb, floor_mb=floor_mb, reserved_mb=reserved_mb,
                         retry_after_s=retry_after_s)  # fmt: skip
        self.device = device
        self.args = (f"GPU {device}: {self.args[0]}".replace("memory", "GPU memory", 1),)


class GpuUnavailableError(MemoryManagementError, ValueError):
    """GPU memory was asked of a device that cannot be read (no such index, no NVML nor
    torch CUDA, or the device was lost): a configuration or hardware fault, not pressure."""

    def __init__(self, device: int, readable: tuple[int, ...]) -> None:
        self.device = device
        self.readable = readable
        seen = ", ".join(map(str, readable)) or "none"
        super().__init__(f"GPU {device} cannot be read (readable devices: {seen})")


class ReadingUnavailableError(InsufficientMemoryError):
    """Memory could not be read (a source file vanished or holds garbage) and the last good
    reading is too old to admit on: refused as short of memory, so a web layer answers 503
    with ``retry_after_s``. ``cause`` is the reader's error type."""

    def __init__(self, cause: str, *, retry_after_s: float) -> None:
        self.cause = cause
        MemoryManagementError.__init__(
            self, f"memory could not be read ({cause}); retry after {retry_after_s:.0f} s"
        )
        self.required_mb = self.available_mb = 0.0
        self.floor_mb = None
        self.reserved_mb = 0.0
        self.retry_after_s = retry_after_s


class SessionNotFoundError(MemoryManagementError, KeyError):
    """No live session has that id (unknown, removed or expired). The id is not repeated."""

    def __init__(self) -> None:
        super().__init__("session not found (unknown, removed or expired)")

    def __str__(self) -> str:
        return str(self.args[0])


class SessionMemoryLimitError(MemoryManagementError):
    """An update would take a session over its memory limit; the session is unchanged."""

    def __init__(self, needed_bytes: int, limit_bytes: int, fingerprint: str = "") -> None:
        self.needed_bytes = needed_bytes
        self.limit_bytes = limit_bytes
        self.fingerprint = fingerprint
        who = f"session {fingerprint}" if fingerprint else "session"
        super().__init__(
            f"{who} would need {needed_bytes} bytes ({needed_bytes / 2**20:.1f} MB), "
            f"over its limit of {limit_bytes} bytes ({limit_bytes / 2**20:.1f} MB)"
        )


class SpillRefusedError(MemoryManagementError):
    """A buffer was not spilled (``cause``: budget, disk_full, memory_fs, io_error); it
    stays in memory, and the ladder goes on to its next step."""

    def __init__(self, cause: str, detail: str = "") -> None:
        self.cause = cause
        super().__init__(f"spill refused ({cause}){': ' + detail if detail else ''}")


class SpillCorruptError(MemoryManagementError):
    """A spilled buffer could not be read back intact (checksum or authentication failed,
    truncated or unreadable file): its data is never returned."""

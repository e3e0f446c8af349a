"""Kept-open files read with ``os.pread`` and allocation-light parsers for /proc and cgroup text.

Re-opening a /proc or cgroup file costs more than generating its text; keeping one
descriptor and reading from offset 0 each time is what makes a sample cheap.
"""

from __future__ import annotations

import contextlib
import os
import threading

_CHUNK = 8192


class KeptOpenFile:
    """A read-only file opened on first use and re-read from offset 0 with ``os.pread``."""

    __slots__ = ("_fd", "_lock", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._lock = threading.Lock()

    def read(self) -> bytes:
        """The file's whole current content. Raises OSError when it cannot be read."""
        fd = self._fd
        if fd < 0:
            fd = self._open()
        data = os.pread(fd, _CHUNK, 0)
        if len(data) < _CHUNK:
            return data
        parts = [data]
        offset = len(data)
        while data:
            data = os.pread(fd, _CHUNK, offset)
            parts.append(data)
            offset += len(data)
        return b"".join(parts)

    def fileno(self) -> int:
        """The kept descriptor, opened on first use (for hot paths that ``pread`` directly)."""
        return self._fd if self._fd >= 0 else self._open()

    def _open(self) -> int:
        with self._lock:
            if self._fd < 0:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            return self._fd

    def close(self) -> None:
        """Close the descriptor; a later ``read`` opens the file again."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __del__(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def keyed_value(data: bytes, key: bytes) -> int:
    """The integer after ``key`` on the line that starts with it (``memory.stat`` style).

    ``key`` includes its separator (``b"inactive_file "`` or ``b"MemTotal:"``); a trailing
    ``kB`` unit is converted to bytes. Raises KeyError when no line starts with ``key``.
    """
    if data.startswith(key):
        start = len(key)
    else:
        pos = data.find(b"\n" + key)
        if pos < 0:
            raise KeyError(key.decode())
        start = pos + 1 + len(key)
    end = data.find(b"\n", start)
    field = data[start:] if end < 0 else data[start:end]
    if field.endswith(b"kB"):
        return int(field[:-2]) * 1024
    return int(field)


def parse_flat_keyed(data: bytes) -> dict[str, int]:
    """Parse ``name value`` lines (memory.events, oom_control) into a dict."""
    result: dict[str, int] = {}
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                result[parts[0].decode()] = int(parts[1])
            except ValueError:
                continue
    return result

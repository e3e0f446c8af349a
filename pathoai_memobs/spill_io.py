"""File I/O for spill files that never stops short: reads that fill their buffers as far
as the file goes, writes that write everything (the kernel may move fewer bytes per call).
"""

from __future__ import annotations

import os


def pread_full(fd: int, buffers: list[memoryview], at: int) -> int:
    """Fill ``buffers`` from file offset ``at`` as far as the file goes (a short read is
    retried, so only the end of the file stops it); the bytes read."""
    got = 0
    for buffer in buffers:
        filled = 0
        while filled < len(buffer):
            n = os.preadv(fd, [buffer[filled:]], at + got)
            if n <= 0:
                return got
            filled, got = filled + n, got + n
    return got


def write_parts(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write every part, in order (the I/O thread's job for one chunk)."""
    for part in parts:
        write_all(fd, part)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` (a short write is continued)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

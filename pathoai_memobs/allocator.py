"""The C allocator's state, and giving its free memory back: glibc's ``mallinfo2`` (heap in
use, free bytes a trim could return, mmapped bytes), its arena count (``malloc_info``), and
``malloc_trim(0)`` with the bytes it returned measured.

Why: memory a Python service frees goes back to malloc, not to the kernel. With many
threads glibc keeps up to 8 arenas per core, each holding its own free lists, so a
process's resident set can stay gigabytes above what it uses (``MALLOC_ARENA_MAX=2`` is the
usual cure; one ``malloc_trim`` often returns hundreds of megabytes). Where the C library is
not glibc (musl, macOS) the reader says so once and stays off: ``Allocator.available``.

The trim policy is a pure function (``should_trim``); ``level_actions`` runs it off the
request path.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import tempfile
import threading
import time
from typing import Any, Final, NamedTuple

from .readers.process import ProcessReader

#: Trim when at least this much free heap could be returned (bytes).
TRIM_MIN_FREE_BYTES: Final = 64 << 20
#: Look at the allocator at most this often while memory is at WARNING or above (s).
TRIM_EVERY_S: Final = 10.0
#: Arenas come and go with threads, slowly: a count this recent is reused (s).
ARENAS_MAX_AGE_S: Final = 60.0
_FIELDS: Final = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                  "uordblks", "fordblks", "keepcost")  # fmt: skip


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


class Heap(NamedTuple):
    """The allocator's bytes: in use, free in its heaps (what a trim may return), and
    served by mmap (returned to the kernel on free already)."""

    in_use: int
    free: int
    mmapped: int


def should_trim(free_bytes: int, *, pressed: bool, removed_bytes: int,
                min_free: int = TRIM_MIN_FREE_BYTES) -> bool:  # fmt: skip
    """Trim when the heaps hold at least ``min_free`` free bytes and either memory is at
    WARNING or above (``pressed``) or sessions of at least that size were just removed."""
    return free_bytes >= min_free and (pressed or removed_bytes >= min_free)


def arenas_too_many(arenas: int, threads: int) -> bool:
    """Far more arenas than the threads need: each thread uses one, and an idle arena
    still holds its free lists (the MALLOC_ARENA_MAX advice applies)."""
    return arenas > max(8, 2 * threads)


class Allocator:
    """glibc's allocator of this process (``available`` False elsewhere)."""

    def __init__(self, root: str = "/") -> None:
        self._libc: Any = None
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None)
            libc.mallinfo2.restype = _Mallinfo2
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            libc.fopen.restype = ctypes.c_void_p
            libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            libc.fclose.argtypes = [ctypes.c_void_p]
            self._libc = libc
        self._rss = ProcessReader(root)
        self._lock = threading.Lock()  # one trim at a time
        self.trims = 0
        self.trimmed_bytes = 0
        self.last_arenas: int | None = None
        self._arenas_at = 0.0

    @property
    def available(self) -> bool:
        return self._libc is not None

    def heap(self) -> Heap | None:
        """The heap now (mallinfo2 walks the free lists: not for a hot path)."""
        if self._libc is None:
            return None
        info = self._libc.mallinfo2()
        return Heap(int(info.uordblks), int(info.fordblks), int(info.hblkhd))

    def arenas(self, max_age_s: float = ARENAS_MAX_AGE_S) -> int | None:
        """How many arenas malloc has (from ``malloc_info``'s XML, which costs a temporary
        file): the count read within ``max_age_s``, else read now."""
        if self._libc is None:
            return None
        if self.last_arenas is not None and time.monotonic() - self._arenas_at < max_age_s:
            return self.last_arenas
        self._arenas_at = time.monotonic()
        fd, path = tempfile.mkstemp(prefix="pathoai-malloc-")
        os.close(fd)
        try:
            stream = self._libc.fopen(path.encode(), b"w")
            if not stream:
                return self.last_arenas
            self._libc.malloc_info(0, stream)
            self._libc.fclose(stream)
            with open(path, encoding="ascii", errors="replace") as f:
                self.last_arenas = len(re.findall(r"<heap nr=", f.read()))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return self.last_arenas

    def trim(self) -> int:
        """``malloc_trim(0)``: free heap pages back to the kernel; the resident bytes that
        fell (0 when none, or where glibc is not there)."""
        if self._libc is None:
            return 0
        with self._lock:
            before = self._rss.rss_bytes()
            self._libc.malloc_trim(0)
            returned = max(0, before - self._rss.rss_bytes())
            self.trims += 1
            self.trimmed_bytes += returned
        return returned

"""SpillStore: large session buffers on local disk, encrypted, checksummed, never half-read.

A spill writes a temporary file (0600, in a per-process directory 0700 under the spill
directory, names that reveal nothing) and renames it into place; only then may the caller
let go of the buffer. Nothing of it may stay in the page cache (cached pages are charged to
the container, so a spill that left them would free nothing): it is written with O_DIRECT
(``spill_io.StagedWriter``), or, on a filesystem that refuses that, synced and its pages
dropped. The bytes are ``spill_format``'s: 4 MiB chunks sealed with AES-GCM under a key that
exists only in this process's memory (so files a crashed process left are unreadable), or
with a CRC-32 where encryption is off; a restore checks every chunk and raises
SpillCorruptError rather than return wrong data.

A restored array's file stays while the array lives (``spill_kept``): spilled again with
every chunk sealing as before, it is taken back without a write.

Each process holds a lock on its own directory for its life; opening a store removes the
directories of processes that died (``sweep``), whose files no key can read any more.
The decision whether to spill at all is ``refusal``, a pure function."""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import fcntl
import os
import secrets
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from .exceptions import ConfigError, SpillCorruptError, SpillRefusedError
from .readers.mounts import MEMORY_FILESYSTEMS, filesystem_of, read_mounts
from .spill_format import (
    CHUNK_BYTES,
    SpillCancelledError,
    SpillFormat,
    SpillRef,
    describe,
    load_aead,
)
from .spill_format import target as target_of
from .spill_io import DEPTH
from .spill_kept import KeptFiles

__all__ = ["CHUNK_BYTES", "SpillCancelledError", "SpillRef", "SpillStore", "refusal"]

LOCK_NAME: Final = ".owner.lock"


def refusal(  # noqa: PLR0917 -- one pure decision over the numbers it weighs
    nbytes: int, spilled: int, max_bytes: int, free: int, total: int, min_free_ratio: float,
    fstype: str | None,
) -> str | None:  # fmt: skip
    """Why ``nbytes`` may not be spilled now (None: it may): the store's budget, a disk that
    would be left with less than ``min_free_ratio`` free, or a filesystem that is memory."""
    if fstype in MEMORY_FILESYSTEMS:
        return "memory_fs"
    if spilled + nbytes > max_bytes:
        return "budget"
    if total > 0 and free - nbytes < min_free_ratio * total:
        return "disk_full"
    return None


class SpillStore:
    """Spilled buffers of this process in ``directory`` (see the module docstring)."""

    def __init__(
        self, directory: str, *, max_bytes: int, min_free_ratio: float = 0.1,
        encrypt: bool = True, root: str = "/", variable: str = "spill_dir",
    ) -> None:  # fmt: skip
        aead = load_aead() if encrypt else None
        if encrypt and aead is None:
            raise ConfigError(variable, directory, "encryption needs the 'cryptography' "
                              "package: pip install 'pathoai-memobs[spill]'")  # fmt: skip
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)  # patient data: the owner only
        except OSError as exc:
            raise ConfigError(variable, directory, f"cannot use it: {exc}") from None
        self.directory, self.max_bytes, self.min_free_ratio = directory, max_bytes, min_free_ratio
        self.fstype = filesystem_of(directory, read_mounts(root))
        self._format = SpillFormat(aead(aead.generate_key(bit_length=256)) if aead else None)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._doomed: collections.deque[SpillRef] = collections.deque()  # files to unlink
        self._unlinking = 0
        self._reaper: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._live: dict[str, int] = {}  # file name -> bytes, for buffers spilled and not back
        self._seals: dict[str, tuple[bytes, list[bytes]]] = {}  # name -> nonce, chunk seals
        self._kept = KeptFiles(self._went)  # restored buffers' files, while those live
        self.reused = 0  # spills that found their buffer's file intact and wrote nothing
        self.direct = True  # O_DIRECT writes, until the filesystem refuses them (EINVAL)
        self.spilled_bytes = 0  # the buffers' bytes on disk now (what the session lacks)
        self.disk_bytes = 0  # those and the files still being removed: what the budget counts
        self.swept = self.sweep()
        self.own = os.path.join(directory, f"p{secrets.token_hex(8)}")
        os.mkdir(self.own, 0o700)
        self._owner = os.open(os.path.join(self.own, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        atexit.register(_at_exit, weakref.ref(self))  # kept files go with the process

    @property
    def encrypted(self) -> bool:
        return self._format.encrypted

    def sweep(self) -> int:
        """Remove what dead processes left (their directories' locks are free); the files."""
        removed = 0
        for entry in os.scandir(self.directory):
            if not entry.is_dir(follow_symlinks=False) or not entry.name.startswith("p"):
                continue
            lock = os.path.join(entry.path, LOCK_NAME)
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                fd = -1
            try:
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live process
            except OSError:
                os.close(fd)
                continue
            for name in os.listdir(entry.path):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(entry.path, name))
                    removed += name != LOCK_NAME
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)
        return removed

    def disk(self) -> tuple[int, int]:
        """The spill filesystem's free bytes (for an unprivileged writer) and its size."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def check(self, nbytes: int) -> None:
        """Raise SpillRefusedError where ``nbytes`` may not be spilled now (kept files of
        restored buffers are removed first where the room is what is missing)."""
        for attempt in range(2):
            free, total = self.disk()
            cause = refusal(nbytes, self.disk_bytes, self.max_bytes, free, total,
                            self.min_free_ratio, self.fstype)  # fmt: skip
            if cause is None:
                return
            if attempt or cause not in ("budget", "disk_full") or not self._drop_kept():
                raise SpillRefusedError(cause)
            self.drain(5.0)

    def _drop_kept(self) -> bool:
        """Remove every kept file (they are only a saving); whether there were any."""
        with self._lock:
            refs = self._kept.forget_all()
            for ref in refs:
                self._doom(ref)
        return bool(refs)

    def spill(self, value: Any, stale: Callable[[], bool] | None = None) -> SpillRef:
        """Write ``value`` (a C-contiguous ndarray, bytes or bytearray) to disk; its ref.
        On any refusal or I/O error nothing is left behind and the caller keeps the value;
        likewise, SpillCancelledError as soon as ``stale()`` says it is no longer wanted
        (checked at each 4 MiB chunk)."""
        view, ref = describe(value)
        kept = self._intact(value, view, ref, stale)
        if kept is not None:
            return kept
        self.check(ref.nbytes)
        name = secrets.token_hex(16)
        tmp, final = os.path.join(self.own, f".{name}.tmp"), os.path.join(self.own, name)
        try:
            try:
                seals = self._format.write_file(tmp, view, ref, stale, self._io(), self.direct)
            except OSError as exc:
                if not self.direct or exc.errno != errno.EINVAL:
                    raise
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # this filesystem refuses O_DIRECT: buffered from now on
                self.direct = False
                seals = self._format.write_file(tmp, view, ref, stale, self._io(), False)
            os.rename(tmp, final)
        except (OSError, SpillCancelledError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, SpillCancelledError):
                raise
            raise SpillRefusedError("io_error", exc.strerror or str(exc)) from None
        with self._lock:
            self._live[name] = ref.nbytes
            self._seals[name] = seals
            self.spilled_bytes += ref.nbytes
            self.disk_bytes += ref.nbytes
        return SpillRef(name, ref.nbytes, ref.kind, ref.dtype, ref.shape)

    def _intact(self, value: Any, view: memoryview, ref: SpillRef,
                stale: Callable[[], bool] | None) -> SpillRef | None:  # fmt: skip
        """The kept file ``value`` was restored from, spilled again without a write where
        every chunk still seals to what the file holds (None: no such file, or the value
        changed, and then the file goes)."""
        with self._lock:
            self._collect()
            kept = self._kept.find(value)
            if kept is None:
                return None
            nonce, seals = self._seals[kept.name]
        same = (kept.kind, kept.dtype, kept.shape, kept.nbytes) == (
            ref.kind, ref.dtype, ref.shape, ref.nbytes)  # fmt: skip
        same = same and self._format.seals_match(view, kept, nonce, seals, stale)
        with self._lock:
            if self._kept.forget(kept.name) is None:
                return None  # removed meanwhile (the budget needed the room)
            if not same:
                self._doom(kept)
                return None
            self._live[kept.name] = kept.nbytes
            self.spilled_bytes += kept.nbytes
            self.reused += 1
        return kept

    def restore(self, ref: SpillRef) -> Any:
        """The value ``ref`` was spilled from, checked chunk by chunk. The file is removed,
        or, for an ndarray, kept while the array lives (``spill_kept``). Any mismatch,
        truncation or read error raises SpillCorruptError."""
        path = os.path.join(self.own, ref.name)
        try:
            target, into = target_of(ref)  # the value itself, filled in place
            with open(path, "rb", buffering=0) as f:
                self._format.read(f, ref, into, self._io())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise SpillCorruptError(f"cannot read the spilled buffer: {exc.strerror}") from None
        if ref.kind != "ndarray":
            self.discard(ref)
            return bytes(target) if ref.kind == "bytes" else target
        with self._lock:  # the file stays while the array lives (``spill_kept``)
            self._collect()
            if self._live.pop(ref.name, None) is not None:
                self.spilled_bytes -= ref.nbytes
                self._kept.keep(target, ref)
                self._start_reaper()
        return target

    def discard(self, ref: SpillRef) -> None:
        """Remove ``ref``'s file (expiry, deletion, or after a restore) in the background:
        unlinking a large file takes tens of milliseconds that no request should wait for.
        Its bytes leave ``spilled_bytes`` now and ``disk_bytes`` (the budget's count) once
        the file is gone; ``drain`` waits for that. A second discard does nothing."""
        with self._lock:
            if self._live.pop(ref.name, None) is not None:
                self.spilled_bytes -= ref.nbytes
            elif self._kept.forget(ref.name) is None:
                return  # discarded already
            self._doom(ref)

    def _doom(self, ref: SpillRef) -> None:
        """Hand ``ref``'s file to the reaper (the lock held)."""
        self._seals.pop(ref.name, None)
        self._doomed.append(ref)
        self._start_reaper()
        self._changed.notify_all()

    def _collect(self) -> None:
        """Doom the kept files whose arrays are gone (the lock held)."""
        for ref in self._kept.gone():
            self._doom(ref)

    def _went(self, *, exiting: bool = False) -> None:
        """A kept file's array went (or the interpreter exits): its file to the reaper now
        where the lock is free (never waited for: this runs inside a deallocation)."""
        if self._lock.acquire(blocking=exiting):
            try:
                if not exiting:
                    self._collect()
                    return
                for ref in self._kept.forget_all():
                    self._doom(ref)
            finally:
                self._lock.release()

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():  # first, or after fork
            self._reaper = threading.Thread(target=self._reap, name="pathoai-spill-reaper",
                                            daemon=True)  # fmt: skip
            self._reaper.start()

    def _io(self) -> ThreadPoolExecutor:
        """The thread that writes a spill's chunks and reads a restore's next chunk while
        this one is sealed or checked (made on first use, and again in a forked child)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool, self._pool_pid = ThreadPoolExecutor(DEPTH, "pathoai-spill-io"), os.getpid()
        return self._pool

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every discarded file is removed; False on timeout."""
        with self._lock:
            return self._changed.wait_for(lambda: not self._doomed and not self._unlinking,
                                          timeout_s)  # fmt: skip

    def _reap(self) -> None:
        while True:
            with self._lock:  # a kept file's array may go at any time: looked at each second
                while not self._doomed:
                    self._changed.wait_for(lambda: bool(self._doomed) or self._kept.pending(),
                                           1.0)  # fmt: skip
                    self._collect()
                ref = self._doomed.popleft()
                self._unlinking += 1
            with contextlib.suppress(OSError):  # or left for the next start's sweep
                os.unlink(os.path.join(self.own, ref.name))
            with self._lock:
                self.disk_bytes -= ref.nbytes
                self._unlinking -= 1
                self._changed.notify_all()

    def close(self) -> None:
        """Remove every file of this process and its directory."""
        self.drain()
        for name in os.listdir(self.own):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.own, name))
        os.close(self._owner)
        with contextlib.suppress(OSError):
            os.rmdir(self.own)
        with self._lock:
            self._live.clear()
            self._seals.clear()
            self._kept = KeptFiles(self._went)
            self.spilled_bytes = self.disk_bytes = 0


def _at_exit(ref: weakref.ReferenceType[SpillStore]) -> None:
    """At interpreter exit: every kept file removed, and the reaper given a moment to
    finish (what a crash leaves, the next store's sweep removes)."""
    store = ref()
    if store is not None:
        store._went(exiting=True)
        store.drain(5.0)

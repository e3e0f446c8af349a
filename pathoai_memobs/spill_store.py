"""SpillStore: large session buffers on local disk, encrypted, checksummed, never half-read.

A spill writes a temporary file (0600, in a per-process directory 0700 under the spill
directory, names that reveal nothing) and renames it into place; only then may the caller
let go of the buffer. Nothing of it may stay in the page cache (cached pages are charged to
the container, so a spill that left them would free nothing): it is written with O_DIRECT
(``spill_io.StagedWriter``), or, on a filesystem that refuses that, synced and its pages
dropped. The data goes in
chunks (bounded memory however large the buffer), each sealed with AES-GCM under a key that
exists only in this process's memory, so files a crashed process left are unreadable; with
encryption off each chunk carries a CRC-32. A restore checks every chunk and raises
SpillCorruptError rather than return wrong data.

Each process holds a lock on its own directory for its life; opening a store removes the
directories of processes that died (``sweep``), whose files no key can read any more.
The decision whether to spill at all is ``refusal``, a pure function.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from .exceptions import ConfigError, SpillCorruptError, SpillRefusedError
from .readers.mounts import MEMORY_FILESYSTEMS, filesystem_of, read_mounts
from .spill_io import DEPTH, StagedWriter, open_for_spill, pread_full

MAGIC: Final = b"PATHOSPL"
VERSION: Final = 1
_HEAD: Final = struct.Struct("<8sIIQI8sI")  # magic, version, flags, nbytes, chunk, nonce, meta
_ENCRYPTED: Final = 1
TAG_BYTES: Final = 16  # GCM's tag
CRC: Final = struct.Struct("<I")  # without encryption: CRC-32 of the chunk
CHUNK_BYTES: Final = 4 << 20
LOCK_NAME: Final = ".owner.lock"


@dataclass(frozen=True)
class SpillRef:
    """Where one spilled buffer is, and what it was (never an id or its contents)."""

    name: str
    nbytes: int
    kind: str  # "ndarray", "bytes" or "bytearray"
    dtype: str = "|u1"
    shape: tuple[int, ...] = ()


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


def _aead() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415 -- optional
    except ImportError:
        return None
    return AESGCM


class SpillCancelledError(Exception):
    """A write given up midway because the caller no longer wants it (``spill(stale=)``):
    nothing is left behind; not a refusal."""


class SpillStore:
    """Spilled buffers of this process in ``directory`` (see the module docstring)."""

    def __init__(
        self, directory: str, *, max_bytes: int, min_free_ratio: float = 0.1,
        encrypt: bool = True, root: str = "/", variable: str = "spill_dir",
    ) -> None:  # fmt: skip
        aead = _aead() if encrypt else None
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
        self._cipher = aead(aead.generate_key(bit_length=256)) if aead is not None else None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._doomed: collections.deque[SpillRef] = collections.deque()  # files to unlink
        self._unlinking = 0
        self._reaper: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._live: dict[str, int] = {}  # file name -> bytes, for buffers spilled and not back
        self.direct = True  # O_DIRECT writes, until the filesystem refuses them (EINVAL)
        self.spilled_bytes = 0  # the buffers' bytes on disk now (what the session lacks)
        self.disk_bytes = 0  # those and the files still being removed: what the budget counts
        self.swept = self.sweep()
        self.own = os.path.join(directory, f"p{secrets.token_hex(8)}")
        os.mkdir(self.own, 0o700)
        self._owner = os.open(os.path.join(self.own, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

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
        """Raise SpillRefusedError where ``nbytes`` may not be spilled now."""
        free, total = self.disk()
        cause = refusal(nbytes, self.disk_bytes, self.max_bytes, free, total,
                        self.min_free_ratio, self.fstype)  # fmt: skip
        if cause is not None:
            raise SpillRefusedError(cause)

    def spill(self, value: Any, stale: Callable[[], bool] | None = None) -> SpillRef:
        """Write ``value`` (a C-contiguous ndarray, bytes or bytearray) to disk; its ref.
        On any refusal or I/O error nothing is left behind and the caller keeps the value;
        likewise, SpillCancelledError as soon as ``stale()`` says it is no longer wanted
        (checked at each 4 MiB chunk)."""
        view, ref = _describe(value)
        self.check(ref.nbytes)
        name = secrets.token_hex(16)
        tmp, final = os.path.join(self.own, f".{name}.tmp"), os.path.join(self.own, name)
        try:
            try:
                self._write_file(tmp, view, ref, stale)
            except OSError as exc:
                if not self.direct or exc.errno != errno.EINVAL:
                    raise
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # this filesystem refuses O_DIRECT: buffered from now on
                self.direct = False
                self._write_file(tmp, view, ref, stale)
            os.rename(tmp, final)
        except (OSError, SpillCancelledError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, SpillCancelledError):
                raise
            raise SpillRefusedError("io_error", exc.strerror or str(exc)) from None
        with self._lock:
            self._live[name] = ref.nbytes
            self.spilled_bytes += ref.nbytes
            self.disk_bytes += ref.nbytes
        return SpillRef(name, ref.nbytes, ref.kind, ref.dtype, ref.shape)

    def restore(self, ref: SpillRef) -> Any:
        """The value ``ref`` was spilled from, checked chunk by chunk; the file is removed.
        Any mismatch, truncation or read error raises SpillCorruptError."""
        path = os.path.join(self.own, ref.name)
        try:
            target, into = _target(ref)  # the value itself, filled in place
            with open(path, "rb", buffering=0) as f:
                self._read(f, ref, into)
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise SpillCorruptError(f"cannot read the spilled buffer: {exc.strerror}") from None
        self.discard(ref)
        return bytes(target) if ref.kind == "bytes" else target

    def discard(self, ref: SpillRef) -> None:
        """Remove ``ref``'s file (expiry, deletion, or after a restore) in the background:
        unlinking a large file takes tens of milliseconds that no request should wait for.
        Its bytes leave ``spilled_bytes`` now and ``disk_bytes`` (the budget's count) once
        the file is gone; ``drain`` waits for that. A second discard does nothing."""
        with self._lock:
            if self._live.pop(ref.name, None) is None:
                return  # discarded already
            self.spilled_bytes -= ref.nbytes
            self._doomed.append(ref)
            if self._reaper is None or not self._reaper.is_alive():  # first, or after fork
                self._reaper = threading.Thread(target=self._reap, name="pathoai-spill-reaper",
                                                daemon=True)  # fmt: skip
                self._reaper.start()
            self._changed.notify_all()

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
            with self._lock:
                self._changed.wait_for(lambda: bool(self._doomed))
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
            self.spilled_bytes = self.disk_bytes = 0

    # -- the format --------------------------------------------------------------------------

    def _header(self, ref: SpillRef, nonce: bytes) -> bytes:
        meta = json.dumps({"kind": ref.kind, "dtype": ref.dtype, "shape": ref.shape}).encode()
        flags = _ENCRYPTED if self.encrypted else 0
        return _HEAD.pack(MAGIC, VERSION, flags, ref.nbytes, CHUNK_BYTES, nonce, len(meta)) + meta

    def _check(self, nonce: bytes, index: int, sealed: memoryview, out: memoryview,
               header: bytes) -> None:  # fmt: skip
        """Open one ``sealed`` chunk into ``out`` (decrypted, or checked against its CRC-32,
        in place); SpillCorruptError where it is not what was written."""
        if self._cipher is None:  # ``sealed`` is the CRC alone
            (crc,) = CRC.unpack(sealed)
            if zlib.crc32(out) != crc:
                raise SpillCorruptError(f"chunk {index} does not match its checksum")
            return
        try:
            self._cipher.decrypt_into(nonce + struct.pack("<I", index), sealed, header, out)
        except Exception:  # cryptography's InvalidTag: altered, truncated or another key
            raise SpillCorruptError(f"chunk {index} failed authentication") from None

    def _write_file(
        self, path: str, view: memoryview, ref: SpillRef, stale: Callable[[], bool] | None
    ) -> None:
        """Write the file: the header, then each chunk sealed (or followed by its CRC-32)
        straight into the writer's buffer, which the I/O threads write (without the GIL)
        while the next chunk is sealed. Direct writes leave nothing in the page cache; a
        buffered file is synced and its pages dropped (cached pages are charged)."""
        nonce = secrets.token_bytes(8)
        header = self._header(ref, nonce)
        tag = TAG_BYTES if self.encrypted else CRC.size
        fd = open_for_spill(path, direct=self.direct)
        try:
            out = StagedWriter(fd, self._io(), CHUNK_BYTES + tag, direct=self.direct)
            try:
                out.space(len(header))[:] = header
                out.commit(len(header))
                for index, start in enumerate(range(0, ref.nbytes, CHUNK_BYTES)):
                    if stale is not None and stale():
                        raise SpillCancelledError()
                    chunk = view[start : start + CHUNK_BYTES]
                    size = len(chunk)
                    into = out.space(size + tag)
                    if self._cipher is None:
                        into[:size] = chunk
                        CRC.pack_into(into, size, zlib.crc32(chunk))
                    else:
                        self._cipher.encrypt_into(nonce + struct.pack("<I", index), chunk,
                                                  header, into)  # fmt: skip
                    into.release()
                    out.commit(size + tag)
                out.finish()
            finally:
                out.close()
            if not self.direct:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def _read(self, f: Any, ref: SpillRef, out: memoryview) -> None:
        """Read the file into ``out``: plain chunks straight into place, sealed ones into one
        reused buffer and decrypted into place; every chunk checked before the next."""
        head = f.read(_HEAD.size)
        if len(head) != _HEAD.size:
            raise SpillCorruptError("truncated header")
        magic, version, flags, nbytes, chunk, nonce, meta_len = _HEAD.unpack(head)
        if magic != MAGIC or version != VERSION or nbytes != ref.nbytes:
            raise SpillCorruptError("not this store's file, or another version")
        if bool(flags & _ENCRYPTED) != self.encrypted or chunk != CHUNK_BYTES:
            raise SpillCorruptError("written with other settings")
        header = head + f.read(meta_len)
        if header != self._header(ref, nonce):
            raise SpillCorruptError("the header does not describe this buffer")
        tag = TAG_BYTES if self.encrypted else CRC.size
        spans = [(i, start, min(chunk, nbytes - start)) for i, start in
                 enumerate(range(0, nbytes, chunk))]  # fmt: skip
        scratch = [memoryview(bytearray(chunk + tag)) for _ in range(2)]  # one read, one checked
        fd, offset = f.fileno(), len(header)

        def fetch(index: int, start: int, size: int, at: int) -> tuple[memoryview, int]:
            """Chunk ``index`` from file offset ``at``: its data into place (plain) or into a
            scratch buffer (sealed); what to check it with, and the bytes read."""
            place, spare = out[start : start + size], scratch[index % 2]
            if self.encrypted:
                return spare[: size + tag], pread_full(fd, [spare[: size + tag]], at)
            return spare[:tag], pread_full(fd, [place, spare[:tag]], at)

        # the next chunk is read (I/O without the GIL) while this one is checked
        ahead: Future[tuple[memoryview, int]] | None = None
        for index, start, size in spans:
            if ahead is None:
                ahead = self._io().submit(fetch, index, start, size, offset)
            sealed, got = ahead.result()
            offset += size + tag
            ahead = None
            if index + 1 < len(spans):
                ahead = self._io().submit(fetch, *spans[index + 1], offset)
            if got != size + tag:
                raise SpillCorruptError(f"truncated at chunk {index}")
            self._check(nonce, index, sealed, out[start : start + size], header)
            os.posix_fadvise(fd, 0, offset, os.POSIX_FADV_DONTNEED)  # cached pages are charged
        f.seek(offset)
        if f.read(1):
            raise SpillCorruptError("trailing data")


def _describe(value: Any) -> tuple[memoryview, SpillRef]:
    """The bytes of ``value`` and what it is; TypeError for what cannot be spilled."""
    if isinstance(value, (bytes, bytearray)):
        return memoryview(value), SpillRef("", len(value), type(value).__name__)
    shape, dtype, flags = (getattr(value, a, None) for a in ("shape", "dtype", "flags"))
    if shape is not None and dtype is not None and flags is not None:
        if not flags["C_CONTIGUOUS"] or dtype.hasobject:
            raise TypeError("only C-contiguous arrays without objects are spilled")
        view = memoryview(value).cast("B") if value.nbytes else memoryview(b"")
        return view, SpillRef("", int(value.nbytes), "ndarray", dtype.str, tuple(shape))
    raise TypeError(f"cannot spill a {type(value).__name__}")


def _target(ref: SpillRef) -> tuple[Any, memoryview]:
    """A new value of ``ref``'s kind and size, and its bytes to read into: an ndarray owns
    its memory (as the spilled one did), so it may be spilled again."""
    if ref.kind != "ndarray":
        buffer = bytearray(ref.nbytes)
        return buffer, memoryview(buffer)
    import numpy as np  # noqa: PLC0415 -- only an ndarray was spilled, so numpy is there

    array = np.empty(ref.shape, dtype=np.dtype(ref.dtype))
    flat: memoryview = array.data.cast("B") if array.nbytes else memoryview(bytearray())
    return array, flat

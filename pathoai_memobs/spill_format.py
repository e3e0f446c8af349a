"""The spill file's format, and writing and reading one: a header (magic, version, flags,
sizes, nonce, the buffer's kind, dtype and shape), then the buffer in 4 MiB chunks, each
sealed with AES-GCM (the header as associated data) or followed by its CRC-32. Reading
checks every chunk before the next and raises SpillCorruptError rather than return wrong
data. ``SpillStore`` decides where files go and when; this module only knows their bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from .exceptions import SpillCorruptError
from .spill_io import StagedWriter, open_for_spill, pread_full

MAGIC: Final = b"PATHOSPL"
VERSION: Final = 1
_HEAD: Final = struct.Struct("<8sIIQI8sI")  # magic, version, flags, nbytes, chunk, nonce, meta
_ENCRYPTED: Final = 1
TAG_BYTES: Final = 16  # GCM's tag
CRC: Final = struct.Struct("<I")  # without encryption: CRC-32 of the chunk
CHUNK_BYTES: Final = 4 << 20


@dataclass(frozen=True)
class SpillRef:
    """Where one spilled buffer is, and what it was (never an id or its contents)."""

    name: str
    nbytes: int
    kind: str  # "ndarray", "bytes" or "bytearray"
    dtype: str = "|u1"
    shape: tuple[int, ...] = ()


def load_aead() -> Any:
    """cryptography's AESGCM class, or None where the package is not installed."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415 -- optional
    except ImportError:
        return None
    return AESGCM


class SpillCancelledError(Exception):
    """A write given up midway because the caller no longer wants it (``spill(stale=)``):
    nothing is left behind; not a refusal."""


class SpillFormat:
    """Writes and reads spill files with one key (``cipher``: an AESGCM, or None for CRC-32
    checksums only)."""

    def __init__(self, cipher: Any) -> None:
        self._cipher = cipher

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    def header(self, ref: SpillRef, nonce: bytes) -> bytes:
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

    def write_file(  # noqa: PLR0917 -- one file's write, every part of it named
        self, path: str, view: memoryview, ref: SpillRef, stale: Callable[[], bool] | None,
        pool: ThreadPoolExecutor, direct: bool,
    ) -> tuple[bytes, list[bytes]]:  # fmt: skip
        """Write the file: the header, then each chunk sealed (or followed by its CRC-32)
        straight into the writer's buffer, which the I/O threads write (without the GIL)
        while the next chunk is sealed. Direct writes leave nothing in the page cache; a
        buffered file is synced and its pages dropped (cached pages are charged). Returns
        the nonce and each chunk's seal (GCM tag or CRC-32): how the file is known again."""
        nonce = secrets.token_bytes(8)
        header = self.header(ref, nonce)
        tag = TAG_BYTES if self.encrypted else CRC.size
        fd = open_for_spill(path, direct=direct)
        seals: list[bytes] = []
        try:
            out = StagedWriter(fd, pool, CHUNK_BYTES + tag, direct=direct)
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
                    seals.append(bytes(into[size:]))
                    into.release()
                    out.commit(size + tag)
                out.finish()
            finally:
                out.close()
            if not direct:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return nonce, seals

    def seals_match(self, view: memoryview, ref: SpillRef, nonce: bytes, seals: list[bytes],
                     stale: Callable[[], bool] | None) -> bool:  # fmt: skip
        """Whether ``view`` seals, chunk by chunk, to ``seals`` (what the file was written
        with): the file holds these bytes still. Sealing costs a pass over the buffer, a
        fraction of writing it. The trial ciphertext is thrown away, never written."""
        header = self.header(ref, nonce)
        starts = range(0, ref.nbytes, CHUNK_BYTES)
        if len(starts) != len(seals):
            return False
        scratch = memoryview(bytearray(CHUNK_BYTES + TAG_BYTES))
        for index, start in enumerate(starts):
            if stale is not None and stale():
                raise SpillCancelledError()
            chunk = view[start : start + CHUNK_BYTES]
            if self._cipher is None:
                seal = CRC.pack(zlib.crc32(chunk))
            else:
                out = scratch[: len(chunk) + TAG_BYTES]
                self._cipher.encrypt_into(nonce + struct.pack("<I", index), chunk, header, out)
                seal = bytes(out[len(chunk) :])
            if seal != seals[index]:
                return False
        return True

    def read(self, f: Any, ref: SpillRef, out: memoryview, pool: ThreadPoolExecutor) -> None:
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
        if header != self.header(ref, nonce):
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
                ahead = pool.submit(fetch, index, start, size, offset)
            sealed, got = ahead.result()
            offset += size + tag
            ahead = None
            if index + 1 < len(spans):
                ahead = pool.submit(fetch, *spans[index + 1], offset)
            if got != size + tag:
                raise SpillCorruptError(f"truncated at chunk {index}")
            self._check(nonce, index, sealed, out[start : start + size], header)
            os.posix_fadvise(fd, 0, offset, os.POSIX_FADV_DONTNEED)  # cached pages are charged
        f.seek(offset)
        if f.read(1):
            raise SpillCorruptError("trailing data")


def describe(value: Any) -> tuple[memoryview, SpillRef]:
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


def target(ref: SpillRef) -> tuple[Any, memoryview]:
    """A new value of ``ref``'s kind and size, and its bytes to read into: an ndarray owns
    its memory (as the spilled one did), so it may be spilled again."""
    if ref.kind != "ndarray":
        buffer = bytearray(ref.nbytes)
        return buffer, memoryview(buffer)
    import numpy as np  # noqa: PLC0415 -- only an ndarray was spilled, so numpy is there

    array = np.empty(ref.shape, dtype=np.dtype(ref.dtype))
    flat: memoryview = array.data.cast("B") if array.nbytes else memoryview(bytearray())
    return array, flat

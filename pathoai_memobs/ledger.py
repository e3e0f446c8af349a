"""Reservation ledgers: the bytes admitted operations hold, in one process or in all of them.

Admission asks ``available - reserved - required >= floor``. With several workers in one
container (gunicorn, ``uvicorn --workers``) each sees the same available memory, so each
must also see the others' reservations, or two admit the same bytes at once.

- ``LocalLedger``: this process only (the default).
- ``SharedLedger``: one small file that every worker maps (``ledger_dir``, e.g. the
  multiprocess directory). A header and one slot per process (pid, bytes held, session
  bytes, so the session budget sees every worker's sessions, and GPU bytes held per
  device). Every
  decision runs under a POSIX record lock on the header, so none is made on a stale total
  (no double booking). Each process also holds a record lock on its own slot for its life;
  the kernel drops it when the process dies however it dies, so a slot whose lock can be
  taken belongs to a dead worker, and its bytes are released (``reap``). Record locks are
  per process, so threads and several monitors in one process share one open file (and its
  thread lock) and one slot, and a forked child claims a slot of its own.

Sessions live in the worker that made them, so a request in one worker (new work over the
session budget, or the first in its line) may wait for sessions another worker holds. It
posts the bytes it lacks in the
header (``want``: how many, until when on the system-wide monotonic clock, renewed at each
look while it waits, and since when the oldest request behind it waits); each worker
serves such a want from its own idle sessions, and from those its own requests wait for
where the want is older than all of them (``Freeing.for_peers``: one order across
the workers, so two never spill each other's in turn), and takes what it freed off it
(``served``).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, Protocol

from .exceptions import ConfigError
from .forksafe import after_fork_in_child

if TYPE_CHECKING:
    from .config import MemoryConfig

MAGIC: Final = b"PATHOAIL"
VERSION: Final = 5
SLOTS: Final = 128
#: GPU devices a ledger books for (indexes 0..GPU_DEVICES-1).
GPU_DEVICES: Final = 16
HEADER: Final = struct.Struct("<8sII")  # magic, version, slots
HEADER_SIZE: Final = 64
WANT: Final = struct.Struct("<qdd")  # at HEADER.size: bytes wanted, until, since (monotonic)
SLOT: Final = struct.Struct(f"<qqq{GPU_DEVICES}q")  # pid, held, sessions, GPU held per device
_STRIDE: Final = 3 + GPU_DEVICES
FILE_NAME: Final = "pathoai_ledger.bin"
_ALL: Final = struct.Struct(f"<{_STRIDE * SLOTS}q")
_EMPTY: Final = (0,) * GPU_DEVICES


class Ledger(Protocol):
    """What admission books against; every call happens under ``transaction()``."""

    shared: bool  # other processes book against it too

    def transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def total(self) -> int: ...
    def add(self, nbytes: int) -> None: ...
    def reap(self) -> int: ...
    def forked(self) -> None: ...
    def sessions(self, own: int) -> int: ...
    def want(self, nbytes: int, now: float, ttl_s: float, since: float = math.inf) -> None: ...
    def wanted(self, now: float) -> int: ...
    def wanted_since(self, now: float) -> float: ...
    def served(self, nbytes: int) -> None: ...
    def gpu_total(self, device: int) -> int: ...
    def gpu_add(self, device: int, nbytes: int) -> None: ...


class LocalLedger:
    """Reservations of this process only: a number, under the caller's lock."""

    shared = False

    def __init__(self) -> None:
        self._bytes = 0
        self._gpu = [0] * GPU_DEVICES

    def gpu_total(self, device: int) -> int:
        return self._gpu[device]

    def gpu_add(self, device: int, nbytes: int) -> None:
        self._gpu[device] += nbytes

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def total(self) -> int:
        return self._bytes

    def add(self, nbytes: int) -> None:
        self._bytes += nbytes

    def reap(self) -> int:
        return 0

    def sessions(self, own: int) -> int:
        """Session bytes of every process: here, this one's ``own``."""
        return own

    def want(self, nbytes: int, now: float, ttl_s: float, since: float = math.inf) -> None:
        """No other process holds sessions: nothing to ask for."""

    def wanted(self, now: float) -> int:
        return 0

    def wanted_since(self, now: float) -> float:
        return math.inf

    def served(self, nbytes: int) -> None:
        """Nothing was asked."""

    def forked(self) -> None:
        self._bytes = 0  # the parent's requests did not come along
        self._gpu = [0] * GPU_DEVICES


class _File:
    """One process's open ledger file: the descriptor, the mapping, its slot."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = HEADER_SIZE + SLOTS * SLOT.size
        header = HEADER.pack(MAGIC, VERSION, SLOTS)
        with self._header_locked():
            if os.fstat(self.fd).st_size == 0:
                os.ftruncate(self.fd, size)
                os.pwrite(self.fd, header, 0)
            found = os.pread(self.fd, HEADER.size, 0)
            ours = os.fstat(self.fd).st_size >= size and found == header
            if ours:
                self.map = mmap.mmap(self.fd, size)
                self.slot = self._claim()
        if not ours:
            os.close(self.fd)
            raise ConfigError("ledger_dir", path, "not a pathoai-memobs ledger file")

    @contextlib.contextmanager
    def _header_locked(self) -> Iterator[None]:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, 0)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 0)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Both locks: this process's threads, then the other processes."""
        with self.lock, self._header_locked():
            yield

    def _offset(self, slot: int) -> int:
        return HEADER_SIZE + slot * SLOT.size

    def _alive(self, slot: int, pid: int) -> bool:
        """Whether the process in ``slot`` still holds its slot lock (pid first: a slot of
        this process is never probed, since a process never conflicts with its own lock)."""
        if pid == os.getpid():
            return True
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._offset(slot))
        except OSError:
            return True
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self._offset(slot))
        return False

    def _claim(self) -> int:
        """A free slot, or one a dead process left; locked by this process for its life."""
        values = _ALL.unpack_from(self.map, HEADER_SIZE)
        for slot in range(SLOTS):
            pid = values[_STRIDE * slot]
            if pid == 0 or not self._alive(slot, pid):
                SLOT.pack_into(self.map, self._offset(slot), os.getpid(), 0, 0, *_EMPTY)
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._offset(slot))
                return slot
        raise ConfigError("ledger_dir", self.path, f"all {SLOTS} ledger slots are in use")

    def total(self) -> int:
        return sum(_ALL.unpack_from(self.map, HEADER_SIZE)[1::_STRIDE])

    def sessions(self, own: int) -> int:
        """Publish this process's session bytes; every live process's sum."""
        struct.pack_into("<q", self.map, self._offset(self.slot) + 16, own)
        return sum(_ALL.unpack_from(self.map, HEADER_SIZE)[2::_STRIDE])

    def gpu_total(self, device: int) -> int:
        """GPU bytes every live process holds on ``device``."""
        return sum(_ALL.unpack_from(self.map, HEADER_SIZE)[3 + device :: _STRIDE])

    def gpu_add(self, device: int, nbytes: int) -> None:
        self._add(self._offset(self.slot) + 8 * (3 + device), nbytes)

    def want(self, nbytes: int, now: float, ttl_s: float, since: float = math.inf) -> None:
        """Ask the other workers for ``nbytes`` of their sessions for ``ttl_s`` from
        ``now``, for a request waiting since ``since`` (inf: new work, which waits behind
        every request for a session): the larger of this and a want still current, and
        the older of their requests."""
        wanted, until, first = WANT.unpack_from(self.map, HEADER.size)
        current, first = (wanted, first) if now < until else (0, math.inf)
        WANT.pack_into(self.map, HEADER.size, max(current, nbytes), max(until, now + ttl_s),
                       min(first, since))  # fmt: skip

    def wanted(self, now: float) -> int:
        """Session bytes some worker's request still waits for (0 once it expired)."""
        wanted, until, _ = WANT.unpack_from(self.map, HEADER.size)
        return wanted if now < until else 0

    def wanted_since(self, now: float) -> float:
        """Since when the oldest request behind the current want waits (inf: none)."""
        _, until, first = WANT.unpack_from(self.map, HEADER.size)
        return first if now < until else math.inf

    def served(self, nbytes: int) -> None:
        wanted, until, first = WANT.unpack_from(self.map, HEADER.size)
        WANT.pack_into(self.map, HEADER.size, max(0, wanted - nbytes), until, first)

    def add(self, nbytes: int) -> None:
        self._add(self._offset(self.slot) + 8, nbytes)

    def _add(self, offset: int, nbytes: int) -> None:
        (held,) = struct.unpack_from("<q", self.map, offset)
        struct.pack_into("<q", self.map, offset, held + nbytes)

    def reap(self) -> int:
        """Release the slots of processes that died; the bytes they held (host and GPU)."""
        values = _ALL.unpack_from(self.map, HEADER_SIZE)
        freed = 0
        for slot in range(SLOTS):
            pid, held = values[_STRIDE * slot], values[_STRIDE * slot + 1]
            if pid != 0 and slot != self.slot and not self._alive(slot, pid):
                SLOT.pack_into(self.map, self._offset(slot), 0, 0, 0, *_EMPTY)
                freed += held + sum(values[_STRIDE * slot + 3 : _STRIDE * (slot + 1)])
        return freed


class _Files:
    """The ledger files this process has open, one per path; forgotten in a forked child
    (the record locks stayed with the parent), which opens and claims its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[str, _File] = {}
        after_fork_in_child(self.forked)

    def get(self, path: str) -> _File:
        with self.lock:
            if path not in self.open:
                self.open[path] = _File(path)
            return self.open[path]

    def forked(self) -> None:
        self.lock = threading.Lock()
        self.open = {}  # the parent's descriptors stay open (closing one drops no lock here)


_FILES: Final = _Files()


class SharedLedger:
    """Reservations of every process that opens the same ``directory`` (see the module
    docstring). The file holds each process's sum, so monitors in one process share a slot."""

    shared = True

    def __init__(self, directory: str, variable: str = "ledger_dir") -> None:
        if not os.path.isdir(directory):
            raise ConfigError(variable, directory, "not an existing directory")
        self.path = os.path.join(os.path.realpath(directory), FILE_NAME)
        try:
            _FILES.get(self.path)
        except OSError as exc:
            raise ConfigError(variable, directory, f"cannot open the ledger: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(variable, directory, exc.reason) from None

    def _file(self) -> _File:
        return _FILES.get(self.path)  # after a fork: this process's own file and slot

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        return self._file().locked()

    def total(self) -> int:
        return self._file().total()

    def add(self, nbytes: int) -> None:
        self._file().add(nbytes)

    def reap(self) -> int:
        return self._file().reap()

    def sessions(self, own: int) -> int:
        """Publish this process's session bytes (``own``); every process's sum."""
        return self._file().sessions(own)

    def want(self, nbytes: int, now: float, ttl_s: float, since: float = math.inf) -> None:
        self._file().want(nbytes, now, ttl_s, since)

    def wanted(self, now: float) -> int:
        return self._file().wanted(now)

    def wanted_since(self, now: float) -> float:
        return self._file().wanted_since(now)

    def served(self, nbytes: int) -> None:
        self._file().served(nbytes)

    def gpu_total(self, device: int) -> int:
        return self._file().gpu_total(device)

    def gpu_add(self, device: int, nbytes: int) -> None:
        self._file().gpu_add(device, nbytes)

    def forked(self) -> None:
        """Nothing to renew here: the next call opens this process's own file and slot."""


def open_ledger(config: MemoryConfig) -> Ledger:
    """The ledger ``config`` asks for: shared in ``ledger_dir`` when set, else local. A bad
    directory is a ConfigError naming the variable the user set."""
    if not config.ledger_dir:
        return LocalLedger()
    return SharedLedger(config.ledger_dir, config.variable_of("ledger_dir"))

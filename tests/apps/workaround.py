"""The hand-written workaround of the serving issue, the parts a user writes without the
library: a heavy-route gate over every gunicorn worker (lock files) and a live-session cap
(oldest dropped), per process or over every worker (slot files).

Under gunicorn a cap per worker adds up: four workers with one session each were
OOM-killed in 2 GiB. ``SlotPool`` caps the container instead: each live session holds
one of ``n`` slot files (flock), the file names when the session began, and a worker that
needs a slot when none is free asks the oldest session's owner to drop it (a ``.drop``
file), which it does within ~10 ms; a dead worker's slots free themselves (the kernel
drops its locks). The new slide is allocated only once its slot is held.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class FileSemaphore:
    """The heavy gate across gunicorn workers: ``n`` lock files in a shared directory, one
    held per heavy request (one semaphore per worker lets the workers together exceed the
    container)."""

    def __init__(self, directory: str, n: int) -> None:
        self.paths = [os.path.join(directory, f"heavy-{i}.lock") for i in range(n)]

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o600) for p in self.paths]
        try:
            while True:  # the first free lock; each open file is its own lock holder
                for fd in fds:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    yield
                    return
                time.sleep(0.01)
        finally:
            for fd in fds:
                os.close(fd)  # closing drops the lock


class SlotPool:
    """``n`` session slots shared by every worker (see the module docstring)."""

    def __init__(self, directory: str, n: int, drop: Callable[[str], None]) -> None:
        self.paths = [os.path.join(directory, f"session-{i}.slot") for i in range(n)]
        self.drop = drop  # removes a session from this worker's store
        self.lock = threading.Lock()
        self.held: dict[int, tuple[int, str]] = {}  # slot -> (locked fd, session id)
        threading.Thread(target=self._watch, daemon=True).start()

    def take(self, sid: str, timeout_s: float = 10.0) -> None:
        """Hold a slot for ``sid``, the oldest session's (anywhere) if none is free."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self._take_free(sid):
                    return
                births = {i: self._birth(i) for i in range(len(self.paths))}
                oldest = min(births, key=lambda i: births[i])
                if oldest in self.held:  # our own: drop it here
                    self._release(oldest, drop=True)
                    continue
            with open(self.paths[oldest] + ".drop", "w"):
                pass  # its owner's watcher drops it
            time.sleep(0.005)
        raise TimeoutError("no session slot came free")

    def release(self, sid: str) -> None:
        """The session ended (deleted, or dropped by the store): its slot is free."""
        with self.lock:
            for i, (_, owner) in list(self.held.items()):
                if owner == sid:
                    self._release(i, drop=False)

    def _take_free(self, sid: str) -> bool:
        for i, path in enumerate(self.paths):
            if i in self.held:
                continue
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".drop")  # a request for the slot's last owner
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(time.time_ns()).encode(), 0)
            self.held[i] = (fd, sid)
            return True
        return False

    def _birth(self, i: int) -> int:
        try:
            with open(self.paths[i], "rb") as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0

    def _release(self, i: int, *, drop: bool) -> None:
        fd, sid = self.held.pop(i)
        if drop:
            self.drop(sid)
        os.close(fd)  # the lock goes with it

    def _watch(self) -> None:
        """Drop each of this worker's sessions whose slot another worker asked for."""
        while True:
            time.sleep(0.005)
            with self.lock:
                for i in list(self.held):
                    if os.path.exists(self.paths[i] + ".drop"):
                        self._release(i, drop=True)


class HandStore:
    """The session store: a dict capped at ``limit`` live sessions (oldest dropped), in
    this process, or with ``slots_dir`` over every worker sharing that directory."""

    def __init__(self, limit: int | None, slots_dir: str | None = None) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.data: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.pool = (
            SlotPool(slots_dir, limit, self._forget) if slots_dir and limit is not None else None
        )

    def create(self, make: Callable[[], np.ndarray[Any, Any]]) -> str:
        """A new session holding ``make()``: with slots, made once its slot is held."""
        sid = secrets.token_urlsafe(16)
        if self.pool is not None:
            self.pool.take(sid)
        slide = make()
        with self.lock:
            self.data[sid] = {"slide": slide}
            while self.pool is None and self.limit is not None and len(self.data) > self.limit:
                self.data.popitem(last=False)
        return sid

    def get(self, sid: str) -> dict[str, Any] | None:
        with self.lock:
            return self.data.get(sid)

    def delete(self, sid: str) -> None:
        self._forget(sid)
        if self.pool is not None:
            self.pool.release(sid)

    def _forget(self, sid: str) -> None:
        with self.lock:
            self.data.pop(sid, None)

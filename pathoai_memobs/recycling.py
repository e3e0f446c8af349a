"""Memory-based worker recycling for gunicorn: a worker whose own unmanaged memory has grown
past a threshold finishes its in-flight requests and exits, and the master starts a fresh
one. gunicorn has no ``--max-worker-memory``; ``--max-requests`` recycles by count and
still lets a leak reach the OOM killer.

Unmanaged memory is the worker's resident set less what the library accounts for (the
``managed`` callable: sessions, reservations, caches), so a worker holding large sessions
is not recycled for them (that would lose them); its growth is measured from a baseline
taken after ``warmup_s`` (models loaded). One worker recycles at a time: the one that
decides takes an exclusive lock in ``lock_dir`` that the kernel releases only when it has
exited, and the others wait their turn. Each recycle is logged (``worker_recycling``) and
counted in ``lock_dir`` (``recycles()``).

In ``gunicorn.conf.py``::

    from pathoai_memobs.recycling import WorkerRecycler
    WorkerRecycler(max_growth_mb=512, lock_dir="/dev/shm/pathoai").install(globals())
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from .logging import INFO, WARNING, WORKER_RECYCLE_DEFERRED, WORKER_RECYCLING, emit

MIB = 1 << 20
LOCK, COUNT = "recycle.lock", "recycles"


def should_recycle(unmanaged_bytes: int, baseline_bytes: int, max_growth_bytes: int) -> bool:
    """Whether a worker's unmanaged memory has grown past the threshold since its baseline."""
    return unmanaged_bytes - baseline_bytes > max_growth_bytes


def resident_bytes(pid: int | None = None, proc: str = "/proc") -> int:
    """A process's resident set from ``/proc/PID/statm`` (pages * page size)."""
    fields = Path(proc, str(pid or os.getpid()), "statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def recycles(lock_dir: str | os.PathLike[str]) -> int:
    """How many workers have been recycled with this ``lock_dir``."""
    try:
        return int(Path(lock_dir, COUNT).read_text() or 0)
    except FileNotFoundError:
        return 0


class WorkerRecycler:
    """The policy and the gunicorn hooks that apply it (see the module docstring)."""

    def __init__(
        self, max_growth_mb: float, lock_dir: str | os.PathLike[str], *,
        check_interval_s: float = 5.0, warmup_s: float = 30.0,
        managed: Callable[[], int] = lambda: 0,
        resident: Callable[[], int] = resident_bytes,
    ) -> None:  # fmt: skip
        for name, value in (
            ("max_growth_mb", max_growth_mb),
            ("check_interval_s", check_interval_s),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if isinstance(warmup_s, bool) or not isinstance(warmup_s, (int, float)) or warmup_s < 0:
            raise ValueError(f"warmup_s must be a number of seconds >= 0, got {warmup_s!r}")
        self.max_growth_bytes = int(max_growth_mb * MIB)
        self.lock_dir = Path(lock_dir)
        self.check_interval_s = float(check_interval_s)
        self.warmup_s = float(warmup_s)
        self.managed, self.resident = managed, resident
        self._held: int | None = None  # the lock's descriptor, kept open until exit

    def unmanaged(self) -> int:
        return max(0, self.resident() - self.managed())

    def install(self, config: MutableMapping[str, Any]) -> None:
        """Set gunicorn's ``post_worker_init`` hook in a config module's globals (chaining
        one already there)."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        previous = config.get("post_worker_init")

        def post_worker_init(worker: Any) -> None:
            if previous is not None:
                previous(worker)
            self.start()

        config["post_worker_init"] = post_worker_init

    def start(self) -> threading.Thread:
        """Watch this process from a daemon thread."""
        thread = threading.Thread(target=self._watch, name="pathoai-recycler", daemon=True)
        thread.start()
        return thread

    def _watch(self) -> None:
        time.sleep(self.warmup_s)
        baseline = self.unmanaged()
        deferred = False
        while True:
            time.sleep(self.check_interval_s)
            now = self.unmanaged()
            if not should_recycle(now, baseline, self.max_growth_bytes):
                continue
            if self._take_turn():
                emit(INFO, WORKER_RECYCLING, pid=os.getpid(), unmanaged_bytes=now,
                     baseline_bytes=baseline, max_growth_bytes=self.max_growth_bytes)  # fmt: skip
                os.kill(os.getpid(), signal.SIGTERM)  # gunicorn: finish in-flight, then exit
                return
            if not deferred:
                emit(WARNING, WORKER_RECYCLE_DEFERRED, pid=os.getpid(), unmanaged_bytes=now)
                deferred = True

    def _take_turn(self) -> bool:
        """The exclusive lock (held until this process exits) and one more in the count;
        False while another worker holds its turn."""
        fd = os.open(self.lock_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._held = fd
        count = self.lock_dir / COUNT
        partial = count.with_name(f".{COUNT}.{os.getpid()}")
        partial.write_text(str(recycles(self.lock_dir) + 1))
        os.replace(partial, count)
        return True

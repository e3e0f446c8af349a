"""The post-mortem file: how the previous run ended, told at the next start.

A process that is OOM-killed leaves no log line of its own. So while the monitor runs it
keeps a small file in ``state_dir`` (``MEMORY_STATE_DIR``): the last readings, level
changes and emergency runs, and the cgroup's OOM-kill count, rewritten atomically (a
temporary file, synced, renamed) at most every ``WRITE_EVERY_S`` and at each level change,
bounded in size, with no session ids (nothing in it names a session). A clean stop marks
it so. Each process holds a lock on its own file for its life; the next start reads the
files whose process is gone (``previous_runs``), judges each (``ending``: pure), logs one
``previous_run`` event for each, exports the latest, and removes them.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .exceptions import ConfigError
from .logging import INFO, PREVIOUS_RUN, WARNING, emit

if TYPE_CHECKING:
    from .config import MemoryConfig
    from .emergency import EmergencyRun
    from .pressure import Level
    from .reading import Reading

#: Rewrite at most this often (and at each level change): I/O stays off the hot path.
WRITE_EVERY_S: Final = 10.0
#: How much history one file keeps.
KEEP_READINGS: Final = 30
KEEP_EVENTS: Final = 20
PREFIX: Final = "postmortem-"


def ending(previous: dict[str, Any], oom_kills_now: int | None) -> dict[str, Any]:
    """How a previous run ended: ``clean`` (it stopped), ``oom_killed`` (gone without a
    stop while the OOM count rose since its last write), or ``gone`` (without a stop: a
    crash, a SIGKILL, a node lost); with the level and memory it was last seen at."""
    readings = previous.get("readings") or [{}]
    last = readings[-1]
    before = previous.get("oom_kills")
    rose = oom_kills_now is not None and before is not None and oom_kills_now > before
    how = "clean" if previous.get("clean_stop") else ("oom_killed" if rose else "gone")
    return {
        "ending": how,
        "last_level": previous.get("level", "NORMAL"),
        "last_used_ratio": last.get("used_ratio"),
        "last_available_bytes": last.get("available_bytes"),
        "last_seen_at": previous.get("updated_at"),
        "emergency_runs": len(previous.get("emergencies", [])),
        "oom_kills_since": (oom_kills_now - before) if rose and before is not None else 0,
    }


class Postmortem:
    """This process's post-mortem file in ``directory`` (created 0700; files 0600)."""

    def __init__(self, directory: str, *, clock: Any = time.monotonic) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}.json"  # one per monitor
        self.path = os.path.join(directory, name)
        self._clock = clock
        self._state: dict[str, Any] = {"pid": os.getpid(), "started_at": time.time(),
                                       "clean_stop": False, "level": "NORMAL"}  # fmt: skip
        self._readings: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP_READINGS)
        self._changes: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP_EVENTS)
        self._runs: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP_EVENTS)
        self._next_write = 0.0
        self._lock_fd: int | None = None

    def previous_runs(self) -> list[dict[str, Any]]:
        """The files of processes that are gone (their lock is free), oldest first; each is
        removed once read. A file that cannot be parsed counts as a run that left nothing."""
        found = []
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if not name.startswith(PREFIX) or not name.endswith(".json") or path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live process
            except OSError:
                os.close(fd)
                continue
            try:
                with os.fdopen(fd, encoding="utf-8") as f:
                    found.append(json.load(f))
            except (OSError, ValueError):
                found.append({})
            with contextlib.suppress(OSError):
                os.unlink(path)
        return sorted(found, key=lambda p: p.get("updated_at") or 0)

    def note_reading(self, used_ratio: float, available_bytes: int, level: str) -> None:
        self._readings.append({"at": round(time.time(), 3), "used_ratio": round(used_ratio, 4),
                               "available_bytes": available_bytes, "level": level})  # fmt: skip
        if level != self._state["level"]:
            self._changes.append({"at": round(time.time(), 3), "from": self._state["level"],
                                  "to": level})  # fmt: skip
            self._state["level"] = level
            self._next_write = 0.0  # a level change is written at the next step

    def note_emergency(self, reason: str, freed_bytes: int, restored: bool) -> None:
        self._runs.append({"at": round(time.time(), 3), "reason": reason,
                           "freed_bytes": freed_bytes, "restored": restored})  # fmt: skip

    def due(self) -> bool:
        return bool(self._clock() >= self._next_write)

    def write(self, oom_kills: int | None, *, clean_stop: bool = False) -> None:
        """Rewrite the file atomically (temporary file, fsync, rename)."""
        self._next_write = self._clock() + WRITE_EVERY_S
        doc = dict(self._state, updated_at=round(time.time(), 3), clean_stop=clean_stop,
                   oom_kills=oom_kills, readings=list(self._readings),
                   level_changes=list(self._changes), emergencies=list(self._runs))  # fmt: skip
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked before it has the name
            os.write(fd, json.dumps(doc, separators=(",", ":")).encode())
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        old, self._lock_fd = self._lock_fd, fd  # held for this process's life
        if old is not None:
            os.close(old)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class Keeper:
    """The monitor's side: opens the file (a ConfigError naming the variable where the
    directory cannot be used), tells how earlier runs ended, and keeps the file from the
    loop's thread."""

    def __init__(
        self,
        config: MemoryConfig,
        oom_kills: Callable[[], int | None],
        runs_since: Callable[[int], tuple[list[EmergencyRun], int]],
        count_error: Callable[[str, BaseException], None],
    ) -> None:
        try:
            self.file = Postmortem(config.state_dir)
            previous = self.file.previous_runs()
        except OSError as exc:
            raise ConfigError(config.variable_of("state_dir"), config.state_dir,
                              f"cannot use it: {exc.strerror}") from None  # fmt: skip
        self._oom_kills, self._runs_since, self._count_error = oom_kills, runs_since, count_error
        self._seen = runs_since(0)[1]
        self._lock = threading.Lock()  # the loop's thread, and stop() after it
        self.previous_run: dict[str, Any] | None = None
        kills = oom_kills()
        for run in previous:
            self.previous_run = ending(run, kills)
            clean = self.previous_run["ending"] == "clean"
            emit(INFO if clean else WARNING, PREVIOUS_RUN, **self.previous_run)

    def keep(self, reading: Reading, level: Level, *, clean_stop: bool = False) -> None:
        """Note the reading and new emergency runs; rewrite the file when due or at a clean
        stop. A write that fails is counted (``action``), never raised into the loop."""
        with self._lock:
            self._keep(reading, level, clean_stop)

    def _keep(self, reading: Reading, level: Level, clean_stop: bool) -> None:
        self.file.note_reading(reading.used_ratio, reading.available_bytes, level.name)
        runs, self._seen = self._runs_since(self._seen)
        for run in runs:
            self.file.note_emergency(run.reason, run.freed_bytes, run.restored)
        if self.file.due() or clean_stop:
            try:
                self.file.write(self._oom_kills(), clean_stop=clean_stop)
            except OSError as exc:
                self._count_error("action", exc)

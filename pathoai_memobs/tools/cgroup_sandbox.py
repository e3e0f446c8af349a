"""Create a memory-limited child cgroup, run processes inside it, and remove it afterwards.

Used by the demo (so pressure waves cannot threaten the machine) and by the tests that
need real memory pressure. Works with cgroup v1 (a writable memory hierarchy) and v2
(a parent whose ``cgroup.subtree_control`` enables ``memory``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..readers.cgroup import CgroupLocation, find_memory_cgroup


class CgroupUnavailableError(OSError):
    """No writable memory controller here; the message says why."""


class MemoryCgroup:
    """A child cgroup with a memory limit. Remove it with ``remove()`` (or use ``with``)."""

    def __init__(self, path: Path, version: str, limit_bytes: int) -> None:
        self.path = path
        self.version = version
        self.limit_bytes = limit_bytes

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so the command joins this cgroup before it starts (no race)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs_file), *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this cgroup."""
        return subprocess.Popen(self.wrap(argv), **kwargs)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in self.procs_file.read_text().split()]
        except OSError:
            return []

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has taken in this cgroup."""
        name = "memory.oom_control" if self.version == "cgroup_v1" else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, timeout_s: float = 10.0) -> None:
        """Kill what still runs inside, then remove the directory."""
        deadline = time.monotonic() + timeout_s
        while self.path.exists():
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            try:
                self.path.rmdir()
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _candidate_parents(location: CgroupLocation) -> list[Path]:
    own = Path(location.directory)
    mount = Path(location.mount_point)
    if location.source == "cgroup_v1":
        return [own, mount] if own != mount else [mount]
    # v2: a cgroup with processes cannot enable controllers for children ("no internal
    # processes"), so try the parent of our own cgroup and the root.
    return [p for p in dict.fromkeys([own.parent, mount]) if str(p).startswith(str(mount))]


def _try_create(parent: Path, name: str, version: str, limit_bytes: int) -> MemoryCgroup:
    if version == "cgroup_v2":
        controllers = (parent / "cgroup.subtree_control").read_text().split()
        if "memory" not in controllers:
            (parent / "cgroup.subtree_control").write_text("+memory")
    path = parent / name
    path.mkdir()
    group = MemoryCgroup(path, version, limit_bytes)
    try:
        if version == "cgroup_v1":
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):  # keep swap out of the picture where possible
                (path / "memory.swappiness").write_text("0")
        else:
            (path / "memory.max").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
    except OSError:
        group.remove()
        raise
    return group


def create_memory_cgroup(limit_bytes: int, *, prefix: str = "pathoai-memobs") -> MemoryCgroup:
    """Create a uniquely named child cgroup limited to ``limit_bytes``.

    Raises CgroupUnavailableError, saying why, where no memory controller is writable.
    """
    location = find_memory_cgroup("/")
    if location is None:
        raise CgroupUnavailableError("no cgroup memory controller is mounted")
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    reasons = []
    for parent in _candidate_parents(location):
        try:
            return _try_create(parent, name, location.source, limit_bytes)
        except OSError as exc:
            reasons.append(f"{parent}: {exc.strerror or exc}")
    raise CgroupUnavailableError(
        f"no writable {location.source} memory controller ({'; '.join(reasons)})"
    )


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int, *, prefix: str = "pathoai-memobs") -> Iterator[MemoryCgroup]:
    """``create_memory_cgroup`` as a context manager that always removes the cgroup."""
    group = create_memory_cgroup(limit_bytes, prefix=prefix)
    try:
        yield group
    finally:
        group.remove()

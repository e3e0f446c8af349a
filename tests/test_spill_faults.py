"""The spill store's bad paths on real filesystems and real processes: a nearly full disk
(a 64 MiB ext4 loop mount), a disk that fills during a write (ENOSPC), permission errors
(a child process running as nobody), and a process killed between write and rename. In
each the session keeps its data in memory, and nothing half-written is ever read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pathoai_memobs import SessionManager
from pathoai_memobs.exceptions import ConfigError
from pathoai_memobs.spill_store import SpillStore

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB ext4 filesystem on a loop device, unmounted and removed afterwards."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("a loop mount needs root and mkfs.ext4 (e2fsprogs)")
    image, mount = tmp_path / "disk.img", tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    with open(image, "wb") as f:
        f.truncate(64 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"this machine cannot loop-mount: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:  # lazily where a store's lock file is still open: detached now, freed at close
        if subprocess.run(["umount", str(mount)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free (for an unprivileged writer)."""
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))
        f.flush()
        os.fsync(f.fileno())


def session_of(sessions: SessionManager, mb: float) -> str:
    sid = sessions.create_session()
    sessions.update_session(sid, slide=np.full(int(mb * MIB), 3, np.uint8))
    return sid


def manager(directory: Path, min_free: float) -> tuple[SessionManager, list[float]]:
    now = [0.0]
    store = SpillStore(str(directory), max_bytes=1 << 30, min_free_ratio=min_free)
    return SessionManager(clock=lambda: now[0], spill=store, spill_idle_s=1), now


def spill_files(store: SpillStore) -> list[str]:
    return [n for n in os.listdir(store.own) if not n.startswith(".owner")]


def test_a_nearly_full_disk_refuses_and_the_session_stays(small_disk: Path) -> None:
    sessions, now = manager(small_disk / "spill", min_free=0.1)
    first = session_of(sessions, 16)
    now[0] += 5
    assert sessions.spill_idle(1) > 15 * MIB  # room for it: spilled
    fill(small_disk, leave=20 * MIB)
    second = session_of(sessions, 16)  # 16 of 20 MiB free would leave under a tenth
    now[0] += 5
    assert sessions.spill_idle(1) == 0 and sessions.spill_refusals["disk_full"] == 1
    data = sessions.get_session(second)
    assert data is not None and int(data.data["slide"].sum()) == 3 * 16 * MIB  # in memory
    back = sessions.get_session(first)
    assert back is not None and int(back.data["slide"][-1]) == 3
    assert sessions.spill_store is not None
    sessions.spill_store.close()


def test_a_disk_that_fills_during_the_write_leaves_nothing(small_disk: Path) -> None:
    sessions, now = manager(small_disk / "spill", min_free=0.0)
    fill(small_disk, leave=12 * MIB)
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    sid = session_of(sessions, (free - 512) / MIB)  # passes the check; the file is larger
    now[0] += 5
    assert sessions.spill_idle(1) == 0 and sessions.spill_refusals["io_error"] == 1
    assert sessions.spill_store is not None and spill_files(sessions.spill_store) == []
    assert sessions.spill_store.spilled_bytes == 0 and sessions.spilled_sessions == 0
    data = sessions.get_session(sid)
    assert data is not None and int(data.data["slide"][0]) == 3
    sessions.spill_store.close()


def as_nobody(fn: Callable[[], str]) -> str:
    """Run ``fn`` in a forked child that dropped to the nobody user (no exec: the
    interpreter's own files may be unreadable to nobody); what it returns, or its error."""
    if os.geteuid() != 0:
        pytest.skip("dropping to another user needs root")
    SpillStore(tempfile.mkdtemp(), max_bytes=1).close()  # imports done before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as exc:
            out = f"child failed: {exc!r}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory every user can reach (pytest's own are its owner's only)."""
    where = Path(tempfile.mkdtemp(prefix="pathoai-perm-"))
    os.chmod(where, 0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_permission_errors_are_typed_and_keep_the_data(reachable: Path) -> None:
    tmp_path = reachable
    closed = tmp_path / "root-only"
    closed.mkdir(mode=0o700)  # root's; the child runs as nobody
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)

    def child() -> str:
        lines = []
        try:
            SpillStore(str(closed / "spill"), max_bytes=1 << 30)
        except ConfigError as exc:
            lines.append(f"config error: {'cannot use it' in str(exc)}")
        now = [0.0]
        store = SpillStore(str(shared / "spill"), max_bytes=1 << 30)
        sessions = SessionManager(clock=lambda: now[0], spill=store, spill_idle_s=1)
        sid = sessions.create_session()
        sessions.update_session(sid, slide=np.full(8 * MIB, 5, np.uint8))
        os.chmod(store.own, 0o500)  # its own directory turned read-only under it
        now[0] += 5
        lines.append(f"freed {sessions.spill_idle(1)} refusals {dict(sessions.spill_refusals)}")
        data = sessions.get_session(sid)
        lines.append(f"intact {data is not None and int(data.data['slide'].sum()) == 40 * MIB}")
        return "\n".join(lines)

    out = as_nobody(child)
    assert "config error: True" in out, out
    assert "freed 0 refusals {'io_error': 1}" in out and "intact True" in out, out


def test_a_process_killed_between_write_and_rename_leaves_nothing_readable(
    tmp_path: Path,
) -> None:
    where = tmp_path / "spill"
    code = f"""
        import os, signal, numpy as np
        from pathoai_memobs.spill_store import SpillStore
        store = SpillStore({str(where)!r}, max_bytes=1 << 30)
        os.rename = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # dies right there
        store.spill(np.ones(6 << 20, np.uint8))
        """
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)  # fmt: skip
    assert child.returncode == -9
    (dead,) = list(where.iterdir())
    left = sorted(p.name for p in dead.iterdir())
    assert any(n.endswith(".tmp") for n in left)  # the written data, never renamed
    assert not [n for n in left if not n.startswith(".")]  # no file under a final name
    store = SpillStore(str(where), max_bytes=1 << 30)  # the next start
    assert store.swept >= 1 and not dead.exists()
    assert [p.name for p in where.iterdir()] == [os.path.basename(store.own)]
    store.close()


def test_nothing_is_half_applied_when_a_later_buffer_is_refused(tmp_path: Path) -> None:
    """Two buffers, room for one: the first file goes too, and the session keeps both."""
    now = [0.0]
    store = SpillStore(str(tmp_path / "s"), max_bytes=12 * MIB, encrypt=False)
    sessions = SessionManager(clock=lambda: now[0], spill=store, spill_idle_s=1)
    sid = sessions.create_session()
    arrays: dict[str, Any] = {
        "a": np.full(8 * MIB, 1, np.uint8),
        "b": np.full(8 * MIB, 2, np.uint8),
    }
    sessions.update_session(sid, **arrays)
    now[0] += 5
    assert sessions.spill_idle(1) == 0 and store.drain() and spill_files(store) == []
    data = sessions.get_session(sid)
    assert data is not None and data.data["a"] is arrays["a"] and data.data["b"] is arrays["b"]

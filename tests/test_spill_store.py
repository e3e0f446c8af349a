"""The spill store: buffers on disk and back byte-identical, encrypted or checksummed;
altered, truncated or foreign files refused with a typed error; files and directories for
the owner only; what a dead process left swept; refusals decided before anything is
written. Real files in a temporary directory, real processes for the sweep."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pathoai_memobs.exceptions import ConfigError, SpillCorruptError, SpillRefusedError
from pathoai_memobs.readers.mounts import filesystem_of, parse_mountinfo, read_mounts
from pathoai_memobs.spill_store import CHUNK_BYTES, SpillStore, refusal

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=[(True, True), (False, True), (True, False)],
                ids=["encrypted", "checksummed", "encrypted-buffered"])  # fmt: skip
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SpillStore:
    """A store on this disk; ``-buffered``: as on a filesystem that refuses O_DIRECT."""
    encrypt, direct = request.param
    s = SpillStore(str(tmp_path / "spill"), max_bytes=256 * MIB, encrypt=encrypt)
    s.direct = direct
    yield s  # type: ignore[misc]
    if direct:
        assert s.direct, "this disk took O_DIRECT: the direct path was the one tested"
    s.close()


def files(s: SpillStore) -> list[Path]:
    return [p for p in Path(s.own).iterdir() if not p.name.startswith(".")]


def test_buffers_come_back_byte_identical_and_their_files_go(store: SpillStore) -> None:
    array = np.random.default_rng(1).random((3, 1000, 700), dtype=np.float32)  # ~8 MiB
    digest = hashlib.sha256(array.tobytes()).hexdigest()
    refs = [store.spill(array), store.spill(b"x" * 1000), store.spill(bytearray(b"y" * 10))]
    assert refs[0].nbytes > CHUNK_BYTES  # more than one chunk, and no length a page divides
    sizes = [p.stat().st_size for p in sorted(files(store), key=lambda p: p.name)]
    assert all(size % 4096 for size in sizes)  # O_DIRECT's padding was cut off again
    assert store.spilled_bytes == sum(r.nbytes for r in refs) and len(files(store)) == 3
    back = store.restore(refs[0])
    assert back.dtype == array.dtype and back.shape == array.shape and back.flags.writeable
    assert hashlib.sha256(back.tobytes()).hexdigest() == digest
    assert store.restore(refs[1]) == b"x" * 1000
    assert store.restore(refs[2]) == bytearray(b"y" * 10)
    assert store.drain()  # files are unlinked in the background, off the request's path
    assert store.spilled_bytes == 0 and [p.name for p in files(store)] == [refs[0].name]
    del back  # the restored array's file was kept for it; it goes with the array
    assert wait_until(lambda: store.drain() and files(store) == [])
    assert store.disk_bytes == 0


def wait_until(done: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_restored_array_spilled_again_unchanged_is_not_written_again(
    store: SpillStore,
) -> None:
    array = np.random.default_rng(2).integers(0, 255, 9 * MIB + 5, dtype=np.uint8)
    ref = store.spill(array)
    back = store.restore(ref)
    (path,) = files(store)
    written = path.stat().st_mtime_ns, path.stat().st_ino
    again = store.spill(back)  # every chunk still seals as the file holds it
    assert again == ref and store.reused == 1 and store.spilled_bytes == back.nbytes
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == written
    back = store.restore(again)
    assert np.array_equal(back, array)
    back[9 * MIB] ^= 1  # one byte changed in place, in the last chunk
    third = store.spill(back)
    assert third.name != ref.name and store.reused == 1  # written anew
    assert store.drain() and [p.name for p in files(store)] == [third.name]
    out = store.restore(third)
    assert int(out[9 * MIB]) == int(array[9 * MIB]) ^ 1
    assert np.array_equal(out[: 9 * MIB], array[: 9 * MIB])


def test_a_kept_file_makes_room_when_the_budget_needs_it(tmp_path: Path) -> None:
    s = SpillStore(str(tmp_path / "spill"), max_bytes=12 * MIB)
    first = s.restore(s.spill(np.ones(8 * MIB, np.uint8)))  # its file kept: 8 of 12 MiB
    other = np.full(8 * MIB, 2, np.uint8)
    ref = s.spill(other)  # fits only once the kept file is gone
    assert s.disk_bytes == ref.nbytes and [p.name for p in files(s)] == [ref.name]
    s.discard(ref)
    assert s.drain()
    again = s.spill(first)  # its kept file went for the room: written anew
    assert s.reused == 0 and [p.name for p in files(s)] == [again.name]
    s.close()


def test_files_are_the_owners_only_and_their_names_say_nothing(store: SpillStore) -> None:
    ref = store.spill(np.zeros(MIB, np.uint8))
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.own).st_mode) == 0o700
    (path,) = files(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.name == ref.name and len(ref.name) == 32  # random, not a session id


def test_encrypted_files_do_not_hold_the_plain_data(tmp_path: Path) -> None:
    s = SpillStore(str(tmp_path), max_bytes=64 * MIB, encrypt=True)
    marker = b"PATIENT-0042-SLIDE" * 1000
    s.spill(marker)
    (path,) = files(s)
    assert b"PATIENT-0042" not in path.read_bytes()
    s.close()


def test_an_altered_byte_is_refused_never_returned(store: SpillStore) -> None:
    ref = store.spill(np.arange(2 * MIB, dtype=np.uint8))
    (path,) = files(store)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SpillCorruptError):
        store.restore(ref)


def test_a_truncated_or_missing_file_is_refused(store: SpillStore) -> None:
    ref = store.spill(np.ones(MIB, np.uint8))
    (path,) = files(store)
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(SpillCorruptError, match="truncated"):
        store.restore(ref)
    path.unlink()
    with pytest.raises(SpillCorruptError, match="cannot read"):
        store.restore(ref)


def test_another_process_key_cannot_read_a_file(tmp_path: Path) -> None:
    a = SpillStore(str(tmp_path), max_bytes=64 * MIB)
    b = SpillStore(str(tmp_path), max_bytes=64 * MIB)
    ref = a.spill(b"z" * 5000)
    os.rename(os.path.join(a.own, ref.name), os.path.join(b.own, ref.name))
    with pytest.raises(SpillCorruptError, match="authentication"):
        b.restore(ref)
    a.close()
    b.close()


def _spill_and_die(directory: str) -> None:
    s = SpillStore(directory, max_bytes=64 * MIB)
    s.spill(b"left behind" * 100)
    Path(s.own, ".half.tmp").write_bytes(b"half")  # a crash before the rename
    os._exit(0)  # no close(): what a SIGKILL or an OOM kill leaves


def test_what_a_dead_process_left_is_swept_and_a_live_ones_is_not(tmp_path: Path) -> None:
    live = SpillStore(str(tmp_path), max_bytes=64 * MIB)
    live.spill(b"still needed")
    child = multiprocessing.get_context("fork").Process(
        target=_spill_and_die, args=(str(tmp_path),)
    )
    child.start()
    child.join(30)
    assert len(list(tmp_path.iterdir())) == 2
    fresh = SpillStore(str(tmp_path), max_bytes=64 * MIB)
    assert fresh.swept == 2  # the spilled file and the half-written one
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(live.own).name, Path(fresh.own).name]
    )
    assert len(files(live)) == 1
    live.close()
    fresh.close()


def test_refusals_are_decided_before_anything_is_written(tmp_path: Path) -> None:
    assert refusal(10, 0, 100, 1000, 1000, 0.1, "ext4") is None
    assert refusal(10, 95, 100, 1000, 1000, 0.1, "ext4") == "budget"
    assert refusal(10, 0, 100, 105, 1000, 0.1, "ext4") == "disk_full"
    assert refusal(10, 0, 100, 1000, 1000, 0.1, "tmpfs") == "memory_fs"
    s = SpillStore(str(tmp_path), max_bytes=MIB)
    with pytest.raises(SpillRefusedError) as refused:
        s.spill(b"x" * (2 * MIB))
    assert refused.value.cause == "budget" and files(s) == []
    with pytest.raises(TypeError):
        s.spill(np.ones((10, 10))[:, ::2])  # a strided view: not spilled (yet) as is
    s.close()


def test_an_io_error_leaves_nothing_and_the_value_with_the_caller(tmp_path: Path) -> None:
    s = SpillStore(str(tmp_path), max_bytes=64 * MIB)
    os.rename(s.own, s.own + "-gone")  # the directory vanished under the store
    with pytest.raises(SpillRefusedError) as refused:
        s.spill(b"kept in memory")
    assert refused.value.cause == "io_error" and s.spilled_bytes == 0
    os.rename(s.own + "-gone", s.own)
    s.close()


def test_a_spill_directory_on_tmpfs_frees_nothing_and_is_refused() -> None:
    if filesystem_of("/dev/shm", read_mounts()) != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs on this machine")
    s = SpillStore("/dev/shm/pathoai-spill-test", max_bytes=64 * MIB)
    try:
        with pytest.raises(SpillRefusedError) as refused:
            s.spill(b"x" * 100)
        assert refused.value.cause == "memory_fs"
    finally:
        s.close()
        os.rmdir("/dev/shm/pathoai-spill-test")


def test_mountinfo_is_parsed_with_escapes_and_the_longest_mount_wins() -> None:
    text = (
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "30 22 0:5 / /dev/shm rw - tmpfs tmpfs rw\n"
        "31 22 0:6 / /mnt/my\\040disk rw - xfs /dev/sdb rw\n"
        "garbage\n"
    )
    mounts = parse_mountinfo(text)
    assert ("/mnt/my disk", "xfs") in mounts and len(mounts) == 3
    assert filesystem_of("/dev/shm/x", mounts) == "tmpfs"
    assert filesystem_of("/mnt/my disk/spill", mounts) == "xfs"
    assert filesystem_of("/var/tmp", mounts) == "ext4"


def test_a_directory_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="spill_dir"):
        SpillStore(str(blocker / "spill"), max_bytes=MIB)


CACHED = """
import json, sys
import numpy as np
from pathoai_memobs.spill_store import SpillStore

def cached() -> int:  # this cgroup's page cache, in bytes (v2: "file", v1: "cache")
    fields = dict(line.split() for line in open(sys.argv[3]))
    return int(fields["file"] if "file" in fields else fields["cache"])

store = SpillStore(sys.argv[1], max_bytes=1 << 30)
store.direct = sys.argv[2] == "direct"
array = np.full(96 << 20, 7, np.uint8)
before = cached()
ref = store.spill(array)
after = cached()
print(json.dumps({"grew": after - before, "direct": store.direct}))
store.close()
"""


@pytest.mark.parametrize("how", ["direct", "buffered"])
def test_a_spill_leaves_nothing_charged_in_the_page_cache(
    how: str, tmp_path: Path, make_cgroup: Any
) -> None:
    """96 MiB spilled from a process in a real cgroup: its page cache grows by less than a
    chunk or two (a spill that left its pages cached would free nothing in a container)."""
    group = make_cgroup(1 << 30)
    stat = str(group.path / "memory.stat")
    proc = group.popen([sys.executable, "-c", CACHED, str(tmp_path / "spill"), how, stat],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["direct"] == (how == "direct")
    assert seen["grew"] < 8 * MIB, seen

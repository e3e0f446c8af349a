"""The compiled rest loop (rest.py, _rest.c) held to the Python sampler and band it mirrors."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathoai_memobs import MemoryConfig, MemoryMonitor, rest
from pathoai_memobs.pressure import Level, RestBand
from pathoai_memobs.readers.system import MemorySampler
from pathoai_memobs.rest import DUE, ERROR, EVENT, LEFT, NativeRest

from .fstree import GIB, MIB, host_tree, v1_tree, v2_tree

built = pytest.mark.skipif(
    not rest.available(), reason="the _rest extension is not built in this installation"
)
V1_UNLIMITED = "9223372036854771712"
WIDE = RestBand(0, 0, 1 << 62)  # total never matches: every sample leaves


def test_the_extension_is_built_where_there_is_a_compiler() -> None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) on this machine: the monitor runs its Python loop")
    assert rest.available(), "pip install built no _rest: the monitor fell back to Python"


def small_v2(root: Path) -> Path:
    """A v2 tree: 512 MiB used of a 2 GiB limit on cgroup /a (current is at ``CURRENT``)."""
    return v2_tree(root, limits={"/a": str(2 * GIB)}, current=512 * MIB, inactive_file=0, path="/a")


CURRENT = "sys/fs/cgroup/a/memory.current"


def band_around(sampler: MemorySampler) -> RestBand:
    """A band the sampler's current reading sits inside."""
    r = sampler.sample()
    return RestBand(r.total_bytes, r.available_bytes, r.used_bytes)


def same_numbers(a: object, b: object) -> None:
    """Readings equal but for when they were taken."""
    assert a is not None and b is not None
    assert a._replace(timestamp=0, monotonic=0) == b._replace(timestamp=0, monotonic=0)  # type: ignore[attr-defined]


limit_text = st.one_of(
    st.integers(64 * MIB, 64 * GIB).map(str), st.sampled_from(["max", "", V1_UNLIMITED])
)


@built
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["host", "v1", "v2"]),
    total=st.integers(1 * GIB, 64 * GIB),
    available_share=st.floats(0, 1),
    limits=st.lists(limit_text, min_size=1, max_size=3),
    usage=st.integers(0, 80 * GIB),
    inactive=st.integers(0, 8 * GIB),
    rss=st.integers(0, 8 * GIB),
    band_shift=st.integers(-(1 << 30), 1 << 30),
    same_total=st.booleans(),
)
def test_a_c_sample_and_its_band_check_equal_the_python_ones(
    *,
    kind: str,
    total: int,
    available_share: float,
    limits: list[str],
    usage: int,
    inactive: int,
    rss: int,
    band_shift: int,
    same_total: bool,
) -> None:
    available = int(total * available_share) // 1024 * 1024
    total = total // 1024 * 1024
    chain = ["/a", "/a/b", "/a/b/c"][: len(limits)]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        common = {"total": total, "available": available, "rss": rss}
        if kind == "host":
            host_tree(root, **common)
        elif kind == "v1":
            v1_limits = {cg: text or V1_UNLIMITED for cg, text in zip(chain, limits, strict=True)}
            v1_limits = {cg: V1_UNLIMITED if t == "max" else t for cg, t in v1_limits.items()}
            v1_tree(
                root,
                limits=v1_limits,
                usage=usage,
                inactive_file=inactive,
                path=chain[-1],
                **common,
            )
        else:
            v2_limits = dict(zip(chain, limits, strict=True))
            v2_tree(
                root,
                limits=v2_limits,
                current=usage,
                inactive_file=inactive,
                path=chain[-1],
                **common,
            )
        sampler = MemorySampler(str(root))
        try:
            expected = sampler.sample()
            band = RestBand(
                expected.total_bytes if same_total else expected.total_bytes + 1,
                expected.available_bytes + band_shift,
                expected.used_bytes - band_shift,
            )
            native = NativeRest(sampler)
            reason, taken, _ = native.watch((), 0, 1, band)
            same_numbers(native.latest(), expected)
            holds = band.holds(expected.total_bytes, expected.used_bytes, expected.available_bytes)
            assert (reason, taken) == ((DUE, 1) if holds else (LEFT, 1))
        finally:
            sampler.close()


@built
def test_it_samples_until_due_and_counts_every_sample(tmp_path: Path) -> None:
    sampler = MemorySampler(str(host_tree(tmp_path)))
    native = NativeRest(sampler)
    assert native.latest() is None
    assert native.watch((), 0.001, 5, band_around(sampler))[:2] == (DUE, 5)
    assert native.watch((), 0.001, 3, band_around(sampler))[:2] == (DUE, 3)
    assert native.samples_total == 8
    reading = native.latest()
    assert reading is not None and reading.source == "host"
    assert (
        abs(reading.timestamp - time.time()) < 5 and abs(reading.monotonic - time.monotonic()) < 5
    )


@built
def test_a_reading_outside_the_band_returns_at_once(tmp_path: Path) -> None:
    sampler = MemorySampler(str(small_v2(tmp_path)))
    native = NativeRest(sampler)
    band = band_around(sampler)
    (tmp_path / CURRENT).write_text(str(1900 * MIB))
    reason, taken, _ = native.watch((), 0.001, 100, band)
    assert (reason, taken) == (LEFT, 1)
    latest = native.latest()
    assert latest is not None and latest.used_bytes == 1900 * MIB and latest.source == "cgroup_v2"


@built
def test_an_unparseable_file_is_an_error_for_python_to_report(tmp_path: Path) -> None:
    sampler = MemorySampler(str(small_v2(tmp_path)))
    native = NativeRest(sampler)
    (tmp_path / CURRENT).write_text("garbage\n")
    reason, taken, detail = native.watch((), 0.001, 100, WIDE)
    assert (reason, taken, detail) == (ERROR, 0, 22)  # EINVAL
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1024 kB\n")  # no MemAvailable
    assert native.watch((), 0.001, 100, WIDE)[0] == ERROR
    with pytest.raises(KeyError):
        sampler.sample()  # Python refuses the same text


@built
def test_an_event_returns_the_fired_descriptors_and_the_gil_is_free_meanwhile(
    tmp_path: Path,
) -> None:
    sampler = MemorySampler(str(host_tree(tmp_path)))
    native = NativeRest(sampler)
    r, w = os.pipe()
    try:
        # The writer thread can run only if watch() let go of the GIL while it sleeps.
        writer = threading.Timer(0.05, os.write, (w, b"k"))
        started = time.monotonic()
        writer.start()
        reason, taken, detail = native.watch(
            ((r, select.POLLIN),), 10.0, 1000, band_around(sampler)
        )
        writer.join()
        assert time.monotonic() - started < 5
        assert (reason, taken, detail) == (EVENT, 0, [(r, select.POLLIN)])
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_at_rest_either_loop_looks_cheaply_and_leaves_on_the_first_bad_reading(
    tmp_path: Path, native: bool
) -> None:
    small_v2(tmp_path)
    m = MemoryMonitor(MemoryConfig(monitoring_interval_sec=0.02), root=str(tmp_path), native=native)
    m.start()
    try:
        assert (m._loop.native is not None) == (native and rest.available())
        deadline = time.monotonic() + 5
        while m._loop.rest_samples_total < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert m._loop.rest_samples_total >= 20  # the at-rest loop ran
        assert m.level is Level.NORMAL
        reading = m.last_reading
        assert reading is not None and reading.used_bytes == 512 * MIB
        assert abs(m.last_sample_timestamp - time.time()) < 1  # rest samples keep it fresh
        (tmp_path / CURRENT).write_text(str(1900 * MIB))  # 148 MiB left
        started = time.monotonic()
        while m.level is not Level.EMERGENCY and time.monotonic() - started < 2:
            time.sleep(0.005)
        assert m.level is Level.EMERGENCY
        assert time.monotonic() - started < 1.0
        stopping = time.monotonic()
    finally:
        m.stop()
    assert time.monotonic() - stopping < 1.0  # the kick ends a compiled wait at once
    assert not m.running


@built
def test_signals_do_not_stretch_the_interval(tmp_path: Path) -> None:
    """poll() cut short by a signal waits out the rest of the interval, not a fresh one."""
    sampler = MemorySampler(str(host_tree(tmp_path)))
    native = NativeRest(sampler)
    main = threading.get_ident()
    done = threading.Event()

    def pester() -> None:  # for 2.5 s at most: a loop that restarts its wait still ends
        until = time.monotonic() + 2.5
        while not done.wait(0.03) and time.monotonic() < until:
            signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    sender = threading.Thread(target=pester)
    try:
        sender.start()
        started = time.monotonic()
        reason, taken, _ = native.watch((), 0.3, 2, band_around(sampler))
        elapsed = time.monotonic() - started
    finally:
        done.set()
        sender.join()
        signal.signal(signal.SIGUSR1, previous)
    assert (reason, taken) == (DUE, 2)
    assert 0.85 < elapsed < 2.0  # three 300 ms waits, each interrupted about ten times


@built
def test_the_reason_codes_are_the_extensions() -> None:
    from pathoai_memobs import _rest

    assert (rest.DUE, rest.EVENT, rest.LEFT, rest.ERROR, rest.POLL) == (
        _rest.DUE,
        _rest.EVENT,
        _rest.LEFT,
        _rest.ERROR,
        _rest.POLL,
    )


# -- one read path: the compiled loop reads what rest_sample() reads, the same way ----------

value_text = st.text(alphabet="0123456789 _+-\t\nkBmaxg", max_size=12)
LIMIT = "sys/fs/cgroup/a/memory.max"
STAT = "sys/fs/cgroup/a/memory.stat"


@built
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(["current", "limit", "stat", "memtotal"]), text=value_text)
def test_a_text_is_read_alike_or_refused_alike(where: str, text: str) -> None:
    """Every file the rest loops read, holding any text: the compiled loop publishes the
    numbers rest_sample() returns, or refuses it (ERROR) where Python raises."""
    with tempfile.TemporaryDirectory() as d:
        root = small_v2(Path(d))
        if where == "current":
            (root / CURRENT).write_text(text)
        elif where == "limit":
            (root / LIMIT).write_text(text)
        elif where == "stat":
            (root / STAT).write_text(f"anon 1\ninactive_file {text}\nslab 2\n")
        else:  # a line keeps its newline where the kernel puts it
            line = text.replace("\n", " ")
            meminfo = (root / "proc/meminfo").read_text().splitlines(keepends=True)
            (root / "proc/meminfo").write_text(f"MemTotal: {line} kB\n" + "".join(meminfo[1:]))
        sampler = MemorySampler(str(root))
        try:
            try:
                expected = sampler.rest_sample()
            except (ValueError, KeyError):
                expected = None
            native = NativeRest(sampler)
            reason, taken, _ = native.watch((), 0, 1, RestBand(-1, 0, 1 << 62))  # always left
            if expected is None:
                assert (reason, taken) == (ERROR, 0), f"C read {text!r} in {where}; Python refused"
            else:
                assert (reason, taken) == (LEFT, 1), f"C refused {text!r} in {where}"
                same_numbers(native.latest(), expected)
        finally:
            sampler.close()


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "python"])
def test_both_rest_loops_read_limits_every_sample_and_never_the_rss(
    tmp_path: Path, native: bool
) -> None:
    """At rest neither loop reads statm (garbage there goes unnoticed) and both see a new
    limit on their next sample (no TTL at rest)."""
    if native and not rest.available():
        pytest.skip("the _rest extension is not built in this installation")
    small_v2(tmp_path)
    m = MemoryMonitor(MemoryConfig(monitoring_interval_sec=0.02), root=str(tmp_path), native=native)
    m.start()
    try:
        deadline = time.monotonic() + 5
        while m._loop.rest_samples_total < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "proc/self/statm").write_text("garbage\n")
        before = m._loop.rest_samples_total
        while m._loop.rest_samples_total < before + 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert m._loop.rest_samples_total >= before + 10  # resting on, statm unread
        assert m.errors_total.get("sample", 0) == 0
        (tmp_path / "proc/self/statm").write_text("1 2 3 4 5 6 7\n")  # the full step reads it
        (tmp_path / LIMIT).write_text(str(550 * MIB))  # 512 MiB used: 38 left, floor 55
        started = time.monotonic()
        while m.level is not Level.EMERGENCY and time.monotonic() - started < 2:
            time.sleep(0.005)
        assert m.level is Level.EMERGENCY
        assert time.monotonic() - started < 1.0
    finally:
        m.stop()

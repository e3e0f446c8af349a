"""GarbageCollectionManager: thresholds, timed collections, pause histogram, freezing."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from pathoai_memobs import ConfigError, GarbageCollectionManager, MemoryConfig
from pathoai_memobs.gc_manager import LEVELS
from pathoai_memobs.gc_pauses import GC_PAUSES, PAUSE_BUCKETS, PauseTimer


@pytest.fixture(autouse=True)
def _gc_state() -> Iterator[None]:
    """Every test leaves the interpreter's collector as it found it."""
    thresholds, enabled, callbacks = gc.get_threshold(), gc.isenabled(), list(gc.callbacks)
    yield
    gc.set_threshold(*thresholds)
    (gc.enable if enabled else gc.disable)()
    gc.callbacks[:] = callbacks
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def make_cycles(n: int) -> None:
    for _ in range(n):
        a, b = Node(), Node()
        a.other, b.other = b, a


def test_levels_and_unknown_level() -> None:
    assert LEVELS["moderate"].thresholds == (700, 10, 10)
    assert LEVELS["low"].thresholds[0] > 700 > LEVELS["high"].thresholds[0]
    with pytest.raises(ValueError, match="low, moderate, high"):
        GarbageCollectionManager("extreme")


def test_from_config() -> None:
    assert GarbageCollectionManager.from_config(MemoryConfig()).aggressiveness == "moderate"
    high = GarbageCollectionManager.from_config(MemoryConfig.from_env({"AGGRESSIVE_GC": "true"}))
    assert high.aggressiveness == "high" and high.thresholds == (200, 5, 5)
    custom = GarbageCollectionManager.from_config(MemoryConfig(gc_threshold_gen0=1000))
    assert custom.thresholds == (1000, 10, 10)
    with pytest.raises(ConfigError):
        MemoryConfig(gc_aggressiveness="turbo")  # type: ignore[arg-type]


def test_configure_applies_and_restore_puts_back() -> None:
    GC_PAUSES.uninstall()  # an exporter built by an earlier test may have installed it
    gc.set_threshold(1234, 11, 12)
    gc.enable()
    manager = GarbageCollectionManager("high", enable_auto_gc=False)
    manager.configure_gc()
    manager.configure_gc()  # harmless twice
    assert gc.get_threshold() == (200, 5, 5)
    assert not gc.isenabled()
    assert sum(cb is GC_PAUSES for cb in gc.callbacks) == 1
    manager.restore()
    manager.restore()
    assert gc.get_threshold() == (1234, 11, 12)
    assert gc.isenabled()
    assert not any(cb is GC_PAUSES for cb in gc.callbacks)


def test_restore_keeps_a_timer_it_did_not_install() -> None:
    GC_PAUSES.install()
    manager = GarbageCollectionManager()
    manager.configure_gc()
    manager.restore()
    assert sum(cb is GC_PAUSES for cb in gc.callbacks) == 1


def test_collect_with_stats_counts_a_built_cycle() -> None:
    manager = GarbageCollectionManager()
    gc.collect()
    gc.disable()  # so that no automatic collection takes the cycles first
    make_cycles(500)
    stats = manager.collect_with_stats(generation=2)
    assert 1000 <= stats["collected"] <= 1010  # 500 cycles of two objects
    assert stats["uncollectable"] == 0
    assert stats["duration_ms"] > 0
    assert stats["generation"] == 2
    assert stats["rss_before_bytes"] > 0 and "rss_freed_bytes" in stats
    assert stats["skipped"] is False
    assert manager.triggered["manual"] == 1


@pytest.mark.parametrize("bad", [-1, 3, 1.5, "2", None, True])
def test_bad_generation(bad: object) -> None:
    with pytest.raises(ValueError, match="generation"):
        GarbageCollectionManager().collect_with_stats(bad)  # type: ignore[arg-type]


def test_automatic_collections_appear_in_the_histogram() -> None:
    manager = GarbageCollectionManager("high")
    manager.configure_gc()
    before = GC_PAUSES.snapshot()
    make_cycles(20_000)  # enough allocations to trigger young collections on their own
    after = GC_PAUSES.snapshot()
    assert after.count[0] > before.count[0]
    assert after.collected[0] > before.collected[0]
    assert sum(after.buckets[0]) == after.count[0]
    assert after.cumulative(0)[-1] == after.count[0]


def test_every_collection_is_timed_exactly_once() -> None:
    timer = PauseTimer()
    timer.install()
    try:
        gc.disable()  # only the explicit ones below
        for g in (0, 1, 2, 2):
            gc.collect(g)
        snap = timer.snapshot()
    finally:
        timer.uninstall()
    assert snap.count == (1, 1, 2)
    assert snap.total_seconds > 0
    assert snap.last_generation == 2


def test_pause_buckets_span_a_tenth_of_a_millisecond_to_ten_seconds() -> None:
    assert PAUSE_BUCKETS[0] == 0.0001 and PAUSE_BUCKETS[-1] == 10.0
    assert list(PAUSE_BUCKETS) == sorted(PAUSE_BUCKETS)


def test_no_deadlock_and_no_lost_collection_under_threads() -> None:
    """8 threads allocate cycles while another snapshots the histogram in a loop."""
    timer = PauseTimer()
    gc.set_threshold(100, 5, 5)
    gc.enable()
    stop = threading.Event()
    snapshots = 0
    torn = []

    def reader() -> None:
        nonlocal snapshots
        while not stop.is_set():
            snap = timer.snapshot()
            for g in range(3):
                if sum(snap.buckets[g]) != snap.count[g]:
                    torn.append(snap)
            snapshots += 1

    def allocator() -> None:
        for _ in range(30):
            make_cycles(500)

    threads = [threading.Thread(target=allocator) for _ in range(8)]
    r = threading.Thread(target=reader)
    gc.disable()  # no collection between the two bookkeeping steps
    stats_before = [s["collections"] for s in gc.get_stats()]
    timer.install()
    gc.enable()
    try:
        r.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stop.set()
        r.join(timeout=10)
    finally:
        gc.disable()
        stats_after = [s["collections"] for s in gc.get_stats()]
        timer.uninstall()
        gc.enable()
    assert not any(t.is_alive() for t in [*threads, r]), "deadlock"
    assert not torn
    assert snapshots > 10
    snap = timer.snapshot()
    # Every collection the interpreter counted while the timer was installed, exactly once.
    assert list(snap.count) == [a - b for a, b in zip(stats_after, stats_before, strict=True)]
    assert snap.total_count > 50


def test_proactive_collection_is_throttled_when_gc_takes_too_much_time() -> None:
    now = [0.0]
    timer = PauseTimer()
    manager = GarbageCollectionManager(max_gc_share=0.05, timer=timer, clock=lambda: now[0])
    first = manager.proactive_collect()
    assert first["skipped"] is False
    timer.record(2, 1.0)  # a 1 s pause (the compiled callback reads the real clock)
    now[0] = 4.0  # 1 s of GC in 4 s: 25 %
    second = manager.proactive_collect()
    assert second["skipped"] is True and second["gc_share"] == pytest.approx(0.25, rel=0.1)
    assert manager.skipped["proactive"] == 1
    now[0] = 40.0  # the window has moved on: no GC time in the last 10 s
    manager.gc_time_share()
    now[0] = 52.0
    assert manager.proactive_collect()["skipped"] is False


def test_malloc_trim_after_full_collection_per_level() -> None:
    assert GarbageCollectionManager("moderate").collect_with_stats(2)["trimmed"] is True
    assert GarbageCollectionManager("low").collect_with_stats(2)["trimmed"] is False
    assert GarbageCollectionManager("high").collect_with_stats(1)["trimmed"] is False


def test_freeze_makes_full_collections_much_cheaper() -> None:
    manager = GarbageCollectionManager()
    heap = [Node() for _ in range(1_000_000)]

    def full_ms() -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            gc.collect()
            times.append(time.perf_counter() - start)
        return sorted(times)[1] * 1e3

    unfrozen = full_ms()
    frozen = manager.freeze()
    assert frozen >= 1_000_000
    assert manager.frozen_count() == frozen
    after = full_ms()
    assert unfrozen / after >= 20, (unfrozen, after)
    # Frozen objects freed meanwhile (by any thread) leave the permanent generation.
    assert frozen - 1000 <= manager.unfreeze() <= frozen
    assert manager.frozen_count() == 0
    del heap


# -- the pause timer must not harm the collector it measures -----------------------------


def test_the_installed_callback_runs_no_bytecode() -> None:
    """A Python callable in gc.callbacks lets threads switch inside a collection."""
    import types

    from pathoai_memobs import gc_pauses

    if not gc_pauses.COMPILED:
        pytest.skip("the _rest extension is not built (test_rest fails where a compiler exists)")
    call = type(GC_PAUSES).__call__
    assert not isinstance(call, types.FunctionType), "the timer's __call__ is Python code"
    assert type(GC_PAUSES).__mro__[1].__module__ == "pathoai_memobs._rest"


def test_threads_making_garbage_collect_as_often_with_the_timer_as_without() -> None:
    """4 threads make cycles for 1.5 s in fresh interpreters: a Python callback cut
    collections a thousandfold; ours must stay in the same order (bench: within 10 %)."""
    import json
    import subprocess
    import sys

    from bench.bench_gc_threads import CHILD

    def per_s(mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, "1.5"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return float(json.loads(out.stdout)["per_s"])

    off, compiled = per_s("off"), per_s("compiled")
    assert compiled > off / 3, (compiled, off)


def test_a_bad_call_or_an_exception_mid_write_never_leaves_readers_spinning() -> None:
    from pathoai_memobs.gc_pauses import _PythonWriter

    timer = PauseTimer()
    timer("stop", {"generation": 3})  # out of range: ignored, not a stuck lock
    timer("stop", "not a dict")  # type: ignore[arg-type]
    assert timer.snapshot().count == (0, 0, 0)
    python = _PythonWriter(timer._slots_buffer, (), 0)
    python("start", {})
    with pytest.raises(ValueError):
        python("stop", {"generation": 1, "collected": "garbage"})  # raises mid-write
    started = time.monotonic()
    snap = timer.snapshot()
    assert time.monotonic() - started < 1 and snap.count[1] == 1


def test_without_the_compiled_timer_nothing_is_installed_and_counts_still_export(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pathoai_memobs import gc_pauses
    from pathoai_memobs.exporters.prometheus import GCCollector

    monkeypatch.setattr(gc_pauses, "COMPILED", False)
    gc_pauses._warn_uncompiled.cache_clear()
    timer = PauseTimer()
    before = list(gc.callbacks)
    assert timer.install() is False and timer.install() is False
    assert gc.callbacks == before
    warned = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    assert [m["event"] for m in warned].count("gc_timer_unavailable") == 1
    registry = CollectorRegistry()
    registry.register(GCCollector(timer))
    gc.collect()
    text = generate_latest(registry).decode()
    line = next(
        x for x in text.splitlines() if x.startswith('pathoai_gc_collections_total{generation="2"}')
    )
    assert float(line.split()[-1]) >= 1
    assert timer.install(python=True) is True  # asked for outright: installed
    timer.uninstall()

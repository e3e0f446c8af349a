"""MemoryMonitor: metrics in MiB, admission against the emergency floor, reservations."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

from pathoai_memobs import InsufficientMemoryError, MemoryConfig, MemoryMonitor
from pathoai_memobs.reading import Reading, combine

from .fstree import GIB, MIB, host_tree, v2_tree


class FixedSampler:
    """A sampler whose available memory the test sets (memory itself is not the subject)."""

    def __init__(self, available: int, total: int = 8 * GIB) -> None:
        self.available = available
        self.total = total

    def sample(self) -> Reading:
        return combine(self.total, self.available, None, None, None, 0, time.time(), 0.0)


def test_get_current_metrics_reports_mib_and_source(tmp_path: Path) -> None:
    v2_tree(
        tmp_path,
        current=768 * MIB,
        inactive_file=256 * MIB,
        rss=64 * MIB,
        limits={"/system.slice/app.service": str(2 * GIB)},
    )
    m = MemoryMonitor(MemoryConfig(), root=str(tmp_path)).get_current_metrics()
    assert (m.total_mb, m.used_mb, m.available_mb) == (2048.0, 512.0, 1536.0)
    assert m.percent_used == 25.0
    assert m.process_rss_mb == 64.0
    assert m.source == "cgroup_v2"
    assert abs(m.timestamp - time.time()) < 5


def test_live_metrics_are_sane() -> None:
    m = MemoryMonitor(MemoryConfig()).get_current_metrics()
    assert 0 < m.used_mb < m.total_mb
    assert 0 < m.available_mb <= m.total_mb
    assert 0 < m.percent_used < 100
    assert m.process_rss_mb > 1
    assert m.source in ("host", "cgroup_v1", "cgroup_v2")


def test_check_memory_available_against_the_floor(tmp_path: Path) -> None:
    host_tree(tmp_path, total=8 * GIB, available=2000 * MIB)
    monitor = MemoryMonitor(MemoryConfig(), root=str(tmp_path))
    assert monitor.check_memory_available(1500) is True  # 2000 - 1500 = 500 = floor
    with pytest.raises(InsufficientMemoryError) as info:
        monitor.check_memory_available(1500.5)
    err = info.value
    assert err.required_mb == pytest.approx(1500.5)
    assert err.available_mb == pytest.approx(2000)
    assert "1500.5" in str(err) and "2000.0" in str(err)


def test_without_request_rejection_it_returns_false() -> None:
    monitor = MemoryMonitor(
        MemoryConfig(enable_request_rejection=False), sampler=FixedSampler(600 * MIB)
    )
    assert monitor.check_memory_available(100) is True
    assert monitor.check_memory_available(101) is False


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, "100", None, True, [1]])
def test_bad_required_mb_raises_value_error(bad: object) -> None:
    monitor = MemoryMonitor(MemoryConfig(), sampler=FixedSampler(10 * GIB))
    with pytest.raises(ValueError):
        monitor.check_memory_available(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError), monitor.reserve(bad):  # type: ignore[arg-type]
        pass
    assert monitor.reserved_bytes == 0


def test_reservations_are_held_until_the_block_ends() -> None:
    monitor = MemoryMonitor(MemoryConfig(), sampler=FixedSampler(1500 * MIB))
    with monitor.reserve(600):
        assert monitor.reserved_bytes == 600 * MIB
        with pytest.raises(InsufficientMemoryError) as info:
            monitor.check_memory_available(600)
        assert info.value.reserved_mb == pytest.approx(600)
        assert monitor.check_memory_available(400)
    assert monitor.reserved_bytes == 0
    assert monitor.check_memory_available(1000)


def test_a_reservation_is_released_when_the_block_raises() -> None:
    monitor = MemoryMonitor(MemoryConfig(), sampler=FixedSampler(1500 * MIB))
    with pytest.raises(RuntimeError), monitor.reserve(800):
        raise RuntimeError("inference failed")
    assert monitor.reserved_bytes == 0


def test_sixteen_threads_never_over_admit() -> None:
    capacity = 1000 * MIB  # available 1500 MiB minus the 500 MiB floor
    monitor = MemoryMonitor(MemoryConfig(), sampler=FixedSampler(1500 * MIB))
    held = 0
    peak = 0
    admitted = refused = 0
    guard = threading.Lock()
    start = threading.Barrier(16)

    def worker(seed: int) -> None:
        nonlocal held, peak, admitted, refused
        start.wait()
        for i in range(300):
            amount = 50 + ((seed * 31 + i * 17) % 7) * 25  # 50..200 MiB
            try:
                with monitor.reserve(amount):
                    with guard:
                        held += amount * MIB
                        peak = max(peak, held)
                        admitted += 1
                    time.sleep(0)
                    with guard:
                        held -= amount * MIB
            except InsufficientMemoryError:
                with guard:
                    refused += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert peak <= capacity
    assert admitted > 0 and refused > 0  # the contention was real
    assert monitor.reserved_bytes == 0


def test_psi_is_read_when_asked_at_most_once_a_second(tmp_path: Path) -> None:
    host_tree(tmp_path)
    psi = tmp_path / "proc/pressure/memory"
    psi.parent.mkdir(parents=True)
    line = (
        "some avg10={} avg60=0.00 avg300=0.00 total=1\n"
        "full avg10={} avg60=0.00 avg300=0.00 total=1\n"
    )
    psi.write_text(line.format("12.50", "2.00"))
    now = [100.0]
    m = MemoryMonitor(MemoryConfig(), root=str(tmp_path), clock=lambda: now[0])
    assert m.pressure == (0.125, 0.02)
    psi.write_text(line.format("40.00", "9.00"))
    assert m.pressure == (0.125, 0.02)  # within a second: the value read last
    now[0] += 1.0
    assert m.pressure == (0.4, 0.09)
    psi.write_text("garbage avg10=x\nsome avg10=oops\n")
    now[0] += 1.0
    assert m.pressure is None  # unreadable PSI is absent, not an error, and not retried
    assert m.errors_total == {}


@pytest.mark.parametrize(
    "options",
    [
        {"callback_budget_s": None},
        {"callback_budget_s": -1},
        {"callback_budget_s": 0},
        {"emergency_cooldown_s": math.nan},
        {"emergency_cooldown_s": -1},
        {"proactive_gc_interval_s": math.inf},
        {"source": "proc"},
    ],
)
def test_bad_timing_arguments_are_value_errors(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MemoryMonitor(MemoryConfig(), **options)  # type: ignore[arg-type]


def test_a_config_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="MemoryConfig"):
        MemoryMonitor(config={})  # type: ignore[arg-type]


def test_a_reading_that_fails_admits_on_a_recent_one_else_refuses_typed(tmp_path: Path) -> None:
    from pathoai_memobs.exceptions import InsufficientMemoryError, ReadingUnavailableError

    v2_tree(tmp_path, current=512 * MIB, inactive_file=0, limits={"/a": str(2 * GIB)}, path="/a")
    m = MemoryMonitor(MemoryConfig(), root=str(tmp_path))
    current = tmp_path / "sys/fs/cgroup/a/memory.current"
    assert m.check_memory_available(100)
    current.write_text("garbage\n")
    assert m.check_memory_available(100)  # on the last good reading, just taken
    assert m.errors_total["sample"] == 1
    last = m.last_reading
    assert last is not None
    m._last = last._replace(monotonic=last.monotonic - 10)  # as if taken 10 s ago: too old
    with pytest.raises(ReadingUnavailableError) as refused:
        m.check_memory_available(100)
    assert isinstance(refused.value, InsufficientMemoryError)  # a 503 with Retry-After
    assert refused.value.retry_after_s == 2 and refused.value.cause == "ValueError"
    with pytest.raises(ReadingUnavailableError), m.reserve(1):
        pass
    assert m.errors_total["sample"] == 3 and m.requests_rejected_total == 2
    (tmp_path / "proc/meminfo").unlink()  # a file that vanishes: the same typed refusal
    with pytest.raises(ReadingUnavailableError):
        m.check_memory_available(1)


def test_an_emergency_run_that_cannot_read_is_counted_and_the_worker_lives() -> None:
    class Failing:
        def sample(self) -> Reading:
            raise OSError("gone")

    m = MemoryMonitor(MemoryConfig(), sampler=Failing(), emergency_cooldown_s=0)
    assert m.run_emergency_cleanup() is None
    assert m.errors_total["emergency_run"] == 1
    assert m.run_emergency_cleanup() is None  # the lock was released
    assert m.errors_total["emergency_run"] == 2

"""The C allocator: its heap and arenas read through glibc, a trim that really returns
memory to the kernel (resident bytes fall), and the ladder trimming at WARNING, after many
small Python objects were freed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.allocator import TRIM_MIN_FREE_BYTES, Allocator, arenas_too_many, should_trim
from pathoai_memobs.exporters.prometheus import instrument

from .scripted import Scripted, events

MIB = 1 << 20
GIB = 1 << 30


def test_trim_only_with_enough_free_heap_and_a_reason() -> None:
    big = TRIM_MIN_FREE_BYTES
    assert should_trim(big, pressed=True, removed_bytes=0)
    assert should_trim(big, pressed=False, removed_bytes=big)  # large sessions just went
    assert not should_trim(big, pressed=False, removed_bytes=0)  # nothing asks for it
    assert not should_trim(big - 1, pressed=True, removed_bytes=big)  # too little to return
    assert arenas_too_many(40, threads=4) and not arenas_too_many(8, threads=2)
    assert not arenas_too_many(20, threads=12)  # a thread each, and some


@pytest.fixture
def freed_heap() -> Iterator[int]:
    """Fragmentation as a service makes it: 80,000 small Python objects (2 KiB bytes, which
    CPython takes from malloc) made and freed while one made after them lives on, so the
    freed ones are not the heap's top that malloc would return by itself."""
    if not Allocator().available:
        pytest.skip("the C library is not glibc (no mallinfo2 / malloc_trim)")
    blocks = [bytes(2048) for _ in range(80_000)]
    keep = bytes(2048)
    del blocks
    yield 80_000 * 2048
    del keep


def test_a_trim_returns_the_free_heap_to_the_kernel(freed_heap: int) -> None:
    allocator = Allocator()
    heap = allocator.heap()
    assert heap is not None and heap.free >= freed_heap * 0.9
    assert (allocator.arenas() or 0) >= 1
    returned = allocator.trim()
    assert returned >= freed_heap * 0.5  # measured as resident bytes that fell
    assert allocator.trims == 1 and allocator.trimmed_bytes == returned


def test_the_ladder_trims_at_warning_and_exports_it(
    freed_heap: int, caplog: pytest.LogCaptureFixture
) -> None:
    s = Scripted(8 * GIB, total=8 * GIB)
    m = MemoryMonitor(MemoryConfig(enable_background_monitoring=False), sampler=s)
    caplog.set_level("INFO", logger="pathoai_memobs")
    m.tick()  # NORMAL: never
    assert m.allocator.trims == 0
    s.available = int(8 * GIB * 0.14)  # 86 % used: WARNING
    m.tick()
    assert m.allocator.trims == 1
    (trimmed,) = events(caplog, "allocator_trimmed")
    assert trimmed["returned_bytes"] >= freed_heap * 0.5
    m.tick()  # throttled: at most every TRIM_EVERY_S
    assert m.allocator.trims == 1
    registry = CollectorRegistry()
    instrument(m, registry=registry)
    value = registry.get_sample_value
    assert value("pathoai_allocator_trims_total") == 1
    assert value("pathoai_allocator_trimmed_bytes_total") == m.allocator.trimmed_bytes
    assert (value("pathoai_allocator_heap_bytes", {"state": "in_use"}) or 0) > 0
    assert (value("pathoai_allocator_arenas") or 0) >= 1


def test_many_arenas_are_warned_of_once_at_the_first_step(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Allocator().available:
        pytest.skip("the C library is not glibc")
    s = Scripted(8 * GIB, total=8 * GIB)
    m = MemoryMonitor(MemoryConfig(enable_background_monitoring=False), sampler=s)
    monkeypatch.setattr(m.allocator, "arenas", lambda max_age_s=0: 64)  # 8 cores x 8, idle
    caplog.set_level("WARNING", logger="pathoai_memobs")
    m.tick()  # NORMAL: the first step looks anyway
    m.tick()
    (told,) = events(caplog, "allocator_arenas_high")
    assert told["arenas"] == 64 and "MALLOC_ARENA_MAX" in str(told["advice"])

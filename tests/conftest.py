"""Shared fixtures: a real memory-limited cgroup where this machine can host one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.tools.cgroup_sandbox import (
    CgroupUnavailableError,
    MemoryCgroup,
    create_memory_cgroup,
)


@pytest.fixture
def make_cgroup() -> Iterator[Callable[[int], MemoryCgroup]]:
    """Create real child cgroups (unique names); every one is removed after the test.

    Skips, saying why, only where no memory controller is writable on this machine.
    """
    made: list[MemoryCgroup] = []

    def make(limit_bytes: int) -> MemoryCgroup:
        try:
            group = create_memory_cgroup(limit_bytes, prefix="pathoai-test")
        except CgroupUnavailableError as exc:
            pytest.skip(f"cannot create a memory cgroup here: {exc}")
        made.append(group)
        return group

    yield make
    for group in made:
        group.remove()


@pytest.fixture
def fast() -> MemoryConfig:
    return MemoryConfig(monitoring_interval_sec=0.02)


@pytest.fixture
def monitors() -> Iterator[list[MemoryMonitor]]:
    made: list[MemoryMonitor] = []
    yield made
    for m in made:
        m.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the reliability counts where ``python -m tests.reliability`` asked for them."""
    import os

    target = os.environ.get("PATHOAI_RELIABILITY_OUT")
    if target:
        from .reliability import write

        write(target)

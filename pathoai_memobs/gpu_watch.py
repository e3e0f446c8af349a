"""GpuWatch: the monitor's GPU part: the reader, the ladder per device, the cleanups, and
what admission needs of a device (``need``: its free bytes, floor and level, read now).

The monitor's loop calls ``step`` at each full step; a device in EMERGENCY starts its
cleanup in a worker thread (``gpu_cleanup``), as does a CUDA OOM the error mapping caught.
With no GPU the reader is off after its first read and ``step`` costs one call.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .admission import GpuNeed
from .exceptions import GpuUnavailableError
from .gpu_cleanup import GpuCleanup
from .gpu_errors import CAUGHT
from .gpu_ladder import GpuLadder, gpu_thresholds
from .pressure import Level
from .readers.gpu import GpuDevice, GpuReader, loaded_torch

if TYPE_CHECKING:
    from .config import MemoryConfig
    from .session_manager import SessionManager


class GpuWatch:
    """GPU readings, levels and cleanups for one monitor (see the module docstring)."""

    def __init__(
        self,
        config: MemoryConfig,
        reader: GpuReader | None,
        *,
        sessions: Callable[[], SessionManager | None],
        count_error: Callable[[str, BaseException], None],
        cooldown_s: float,
        callback_budget_s: float,
        torch: Callable[[], Any | None] = loaded_torch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader if reader is not None else GpuReader(torch=torch)
        self.ladder = GpuLadder(gpu_thresholds(config))
        self.devices: tuple[GpuDevice, ...] = ()
        self.cleanups: dict[int, GpuCleanup] = {}
        self._torch, self._clock = torch, clock
        self._sessions, self._count_error = sessions, count_error
        self._cooldown_s, self._budget_s = cooldown_s, callback_budget_s
        self._callbacks: list[tuple[Callable[[], object], str, int]] = []
        self._lock = threading.Lock()
        listener = weakref.WeakMethod(self._oom)  # a dropped monitor is not kept alive

        def on_oom(gpu: str) -> None:
            method = listener()
            if method is not None:
                method(gpu)

        CAUGHT.listeners.append(on_oom)

    @property
    def active(self) -> bool:
        """Whether a device was read (then the loop steps at least every interval)."""
        return bool(self.devices)

    def read(self) -> tuple[GpuDevice, ...]:
        """Read every device now and move the ladder; the devices."""
        with self._lock:  # the loop, admissions and cleanups read from several threads
            devices = self.devices = self.reader.read()
            self.ladder.observe(devices)
        return devices

    def device(self, index: int) -> GpuDevice | None:
        """Device ``index`` read now (None where it cannot be)."""
        return next((d for d in self.read() if d.index == index), None)

    def step(self) -> None:
        """One look from the monitor's loop: read, classify, start the cleanup of each
        device in EMERGENCY. With no GPU, one call."""
        if self.reader.idle():
            return
        for d in self.read():
            if self.ladder.level(d.index) is Level.EMERGENCY:
                self.cleanup(d.index).start("gpu_emergency")

    def need(self, device: int, required: int) -> GpuNeed:
        """What admission weighs for ``required`` bytes on ``device``, read now;
        GpuUnavailableError where the device cannot be read."""
        found = self.device(device)
        if found is None:
            raise GpuUnavailableError(device, tuple(d.index for d in self.devices))
        floor = self.ladder.floor_bytes(found.total)
        return GpuNeed(device, required, found.free, floor, self.ladder.level(device))

    def cleanup(self, index: int) -> GpuCleanup:
        """Device ``index``'s cleanup (made on first use, with every GPU callback)."""
        with self._lock:
            found = self.cleanups.get(index)
            if found is None:
                found = self.cleanups[index] = GpuCleanup(
                    index, read=self.device, target=self._target, torch=self._torch,
                    sessions=self._sessions, count_error=self._count_error,
                    cooldown_s=self._cooldown_s, callback_budget_s=self._budget_s,
                    clock=self._clock,
                )  # fmt: skip
                for fn, name, priority in self._callbacks:
                    found.register(fn, name=name, priority=priority)
            return found

    def _target(self, total: int) -> int:
        return self.ladder.thresholds.for_total(total).restored_bytes

    def register(self, fn: Callable[[], object], *, name: str, priority: int) -> None:
        """A user step for every device's cleanup (``register_cleanup_callback(gpu=True)``)."""
        with self._lock:
            if any(n == name for _, n, _ in self._callbacks):
                raise ValueError(f"a GPU cleanup callback named {name!r} is already registered")
            self._callbacks.append((fn, name, priority))
            cleanups = list(self.cleanups.values())
        for c in cleanups:
            c.register(fn, name=name, priority=priority)

    def unregister(self, name: str) -> bool:
        with self._lock:
            before = len(self._callbacks)
            self._callbacks = [c for c in self._callbacks if c[1] != name]
            cleanups = list(self.cleanups.values())
        for c in cleanups:
            c.unregister(name)
        return len(self._callbacks) != before

    def _oom(self, gpu: str) -> None:
        """A CUDA OOM was answered 503: empty the device's cache (and more, if short)."""
        if gpu.isdigit():
            self.cleanup(int(gpu)).start("cuda_oom")
        else:
            for d in self.devices:
                self.cleanup(d.index).start("cuda_oom")

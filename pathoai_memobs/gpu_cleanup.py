"""GpuCleanup: one GPU's emergency cleanup, run like the host's (``EmergencyCleanup``: a
step at a time, re-measured after each, until the device's free bytes are back above its
floor and margin), with its own plan:

1. the user's callbacks registered with ``gpu=True`` (move idle models to the CPU, drop a
   GPU cache), in priority order, each within its budget;
2. ``gpu_empty_cache``: a full collection (tensors in cycles), then
   ``torch.cuda.synchronize()`` and ``empty_cache()`` on the device, the bytes torch's
   caching allocator returned measured (reserved before less after);
3. ``gpu_sessions``: unpinned sessions holding the most device bytes, their CUDA tensors
   spilled to disk where a spill store is set (back on the device at the next access),
   else evicted; then the cache emptied again so the driver sees the bytes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .emergency import Step
from .emergency_cleanup import EmergencyCleanup
from .logging import GPU_EMERGENCY_CLEANUP

if TYPE_CHECKING:
    from .readers.gpu import GpuDevice
    from .reading import Reading
    from .session_manager import SessionManager

GPU_STEPS = ("gpu_empty_cache", "gpu_sessions")


class GpuCleanup(EmergencyCleanup):
    """The emergency cleanup of GPU ``device`` (NVML's index): ``read`` returns the device
    read now (None when it cannot be), ``target`` the free bytes a run aims for at a
    device's size, ``torch`` the application's torch module (or None)."""

    event = GPU_EMERGENCY_CLEANUP

    def __init__(
        self,
        device: int,
        *,
        read: Callable[[int], GpuDevice | None],
        target: Callable[[int], int],
        torch: Callable[[], Any | None],
        sessions: Callable[[], SessionManager | None],
        count_error: Callable[[str, BaseException], None],
        cooldown_s: float,
        callback_budget_s: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(
            sample=self._no_reading, target_bytes=0, sessions=sessions, gc_manager=lambda: None,
            count_error=count_error, cooldown_s=cooldown_s,
            callback_budget_s=callback_budget_s, clock=clock,
        )  # fmt: skip
        self.device = device
        self._read, self._target, self._torch = read, target, torch
        self.cache_returned_bytes = 0  # what empty_cache gave back to the driver, in all
        self._returned_this_run = 0

    @staticmethod
    def _no_reading() -> Reading:
        raise NotImplementedError("a GPU cleanup measures its device, not host memory")

    def run(self, reason: str = "manual") -> Any:
        """One run now (see ``EmergencyCleanup.run``), aimed at the device's floor."""
        device = self._read(self.device)
        if device is not None:
            self.target_bytes = self._target(device.total)
        self._returned_this_run = 0
        return super().run(reason)

    def plan(self) -> list[Step]:
        with self._lock:
            callbacks = list(self._callbacks)
        steps = [Step(cb.name, self._user_step(cb)) for cb in callbacks]
        steps.append(Step("gpu_empty_cache", self._builtin(self._empty_cache)))
        if self._sessions() is not None:
            steps.append(Step("gpu_sessions", self._builtin(self._free_sessions)))
        return steps

    def _available(self) -> int:
        device = self._read(self.device)
        if device is None:
            raise LookupError(f"GPU {self.device} cannot be read")
        return device.free

    def _event_fields(self) -> dict[str, object]:
        device = self._read(self.device)
        return {"gpu": self.device, "uuid": device.uuid if device is not None else "",
                "cache_returned_bytes": self._returned_this_run}  # fmt: skip

    def _empty_cache(self) -> None:
        """A full collection, then torch's cached blocks back to the driver (measured)."""
        gc.collect()
        torch, device = self._torch(), self._read(self.device)
        index = device.torch_index if device is not None else None
        if torch is None or index is None:
            return
        before = int(torch.cuda.memory_reserved(index))
        torch.cuda.synchronize(index)  # kernels still running hold their blocks
        with torch.cuda.device(index):
            torch.cuda.empty_cache()
        returned = max(0, before - int(torch.cuda.memory_reserved(index)))
        with self._lock:
            self.cache_returned_bytes += returned
        self._returned_this_run += returned

    def _free_sessions(self) -> None:
        sessions = self._sessions()
        if sessions is None:
            return
        need = self.target_bytes - self._available()
        if need > 0 and sessions.free_device(need) > 0:
            self._empty_cache()

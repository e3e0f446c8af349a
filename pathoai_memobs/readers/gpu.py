"""GPU memory per visible device: NVML for the device, torch for this process's allocator.

- NVML (``nvidia-ml-py``, the ``gpu`` extra, imported on the first read): total, used and
  free bytes of each device, by index and UUID, and this process's own bytes on it (what
  dcgm-exporter does not attribute).
- torch, only where the application imported it (never imported here) and initialised
  CUDA (never initialised here): allocated, reserved and peak bytes, allocation retries
  and OOMs (``torch.cuda.memory_stats``), matched to NVML's devices by UUID.

Where neither is there, the reader says so once (``gpu_reader_off``) and stays off: each
later read is one attribute test. A device that stops answering is left out, said once
(``gpu_device_lost``), and looked for again every ``RESCAN_S``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple

from ..logging import GPU_DEVICE_LOST, GPU_READER_OFF, INFO, WARNING, emit

#: How often a reader looks again for devices it lost (or NVML devices it never had).
RESCAN_S: Final = 30.0


class TorchMemory(NamedTuple):
    """This process's figures from torch's caching allocator for one device (bytes)."""

    allocated: int
    reserved: int
    peak: int
    alloc_retries: int
    ooms: int

    @property
    def fragmentation(self) -> float:
        """Share of the reserved bytes not allocated to tensors (1 - allocated/reserved):
        cached blocks that ``empty_cache`` can return, or fragments too small to use."""
        return 1.0 - self.allocated / self.reserved if self.reserved > 0 else 0.0


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One device at one instant: NVML's index (torch's where NVML is absent), UUID, name,
    bytes total / used / free, this process's bytes (None where NVML cannot tell) and torch's
    figures (None where torch has not used the device)."""

    index: int
    uuid: str
    name: str
    total: int
    used: int
    free: int
    process: int | None = None
    torch: TorchMemory | None = None
    torch_index: int | None = None  # the device's index in torch (CUDA_VISIBLE_DEVICES)

    @property
    def used_ratio(self) -> float:
        return self.used / self.total if self.total > 0 else 0.0


def torch_memory(stats: Mapping[str, Any]) -> TorchMemory:
    """The figures of one ``torch.cuda.memory_stats(device)`` dictionary (missing keys: 0,
    as torch leaves them out before the first allocation)."""

    def get(key: str) -> int:
        return int(stats.get(key, 0) or 0)

    return TorchMemory(
        get("allocated_bytes.all.current"),
        get("reserved_bytes.all.current"),
        get("allocated_bytes.all.peak"),
        get("num_alloc_retries"),
        get("num_ooms"),
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def loaded_torch() -> Any | None:
    """torch where the application imported it and CUDA is initialised, else None (torch
    is never imported, nor CUDA initialised, here: either would cost seconds and memory)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return torch if cuda is not None and cuda.is_initialized() else None
    except Exception:  # a half-imported or stand-in module: no torch figures
        return None


class GpuReader:
    """Reads every visible device (see the module docstring). ``nvml`` replaces the NVML
    module (a stand-in in tests; None: ``pynvml`` imported on the first read; False: NVML
    off); ``torch`` returns the torch module to read, or None (default: ``loaded_torch``)."""

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        torch: Callable[[], Any | None] = loaded_torch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml_given = nvml
        self._nvml: Any | None = None  # initialised NVML, once opened
        self._torch = torch
        self._clock = clock
        self._opened = False
        self._off_said = False
        self._handles: dict[int, Any] = {}
        self._uuids: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._lost: set[int] = set()
        self._rescan_at = 0.0
        self.errors = 0  # NVML or torch calls that failed (each device lost counts once)
        self._torch_seen = False
        self._why_off = "NVML off"

    # -- opening ----------------------------------------------------------------------------

    def _open(self) -> None:
        """Initialise NVML once; where it cannot be, the reader goes on with torch alone."""
        self._opened = True
        nvml = self._nvml_given
        if nvml is False:
            return
        try:
            if nvml is None:  # the optional extra, imported where a GPU is read
                nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
        except Exception as exc:  # not installed, no driver, no device: NVML is off
            self._why_off = f"NVML unavailable ({type(exc).__name__})"
            return
        self._nvml = nvml
        self._scan()

    def _scan(self) -> None:
        """Enumerate NVML's devices again: handles, UUIDs and names, once each."""
        nvml = self._nvml
        self._rescan_at = self._clock() + RESCAN_S
        if nvml is None:
            return
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception:
            self.errors += 1
            return
        for index in range(count):
            if index in self._handles and index not in self._lost:
                continue
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                self._uuids[index] = _text(nvml.nvmlDeviceGetUUID(handle))
                self._names[index] = _text(nvml.nvmlDeviceGetName(handle))
            except Exception:
                continue  # still lost, or never there: looked for at the next scan
            self._handles[index] = handle
            self._lost.discard(index)

    @property
    def active(self) -> bool:
        """Whether the last read found a device (False before the first read)."""
        return bool(self._handles) or self._torch_seen

    # -- reading ----------------------------------------------------------------------------

    def idle(self) -> bool:
        """True while nothing can be read: NVML off and torch's CUDA not initialised (the
        no-GPU fast path: one test and one call)."""
        return self._opened and self._nvml is None and self._torch() is None

    def read(self) -> tuple[GpuDevice, ...]:
        """Every device readable now, in index order (empty: no GPU, or none readable)."""
        if not self._opened:
            self._open()
        elif (
            self._nvml is not None
            and self._clock() >= self._rescan_at
            and (self._lost or not self._handles)
        ):
            self._scan()
        torch = self._torch()
        found = self._read_nvml()
        stats = self._read_torch(torch) if torch is not None else {}
        if stats and not found:  # torch alone: the devices as torch sees them
            found = self._torch_devices(torch, stats)
        elif stats:
            by_uuid = {_bare(uuid): index for index, uuid in stats_uuids(torch, stats).items()}
            found = [_with_torch(d, _match(d, by_uuid), stats) for d in found]
        self._torch_seen = bool(stats)
        if not found and not self._off_said:
            self._off_said = True
            emit(INFO, GPU_READER_OFF, reason=f"{self._why_off}; torch CUDA not initialised")
        return tuple(found)

    def _read_nvml(self) -> list[GpuDevice]:
        nvml, out = self._nvml, list[GpuDevice]()
        if nvml is None:
            return out
        pid = os.getpid()
        for index, handle in sorted(self._handles.items()):
            if index in self._lost:
                continue
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
                mine = _process_bytes(nvml, handle, pid)
            except Exception as exc:  # the device fell off the bus, or NVML failed
                self.errors += 1
                self._lost.add(index)
                emit(WARNING, GPU_DEVICE_LOST, gpu=index, uuid=self._uuids.get(index, ""),
                     error=type(exc).__name__)  # fmt: skip
                continue
            total, free = int(info.total), int(info.free)
            out.append(GpuDevice(index, self._uuids[index], self._names[index], total,
                                 int(info.used), free, mine))  # fmt: skip
        return out

    def _read_torch(self, torch: Any) -> dict[int, TorchMemory]:
        try:
            count = int(torch.cuda.device_count())
            return {i: torch_memory(torch.cuda.memory_stats(i)) for i in range(count)}
        except Exception:
            self.errors += 1
            return {}

    def _torch_devices(self, torch: Any, stats: dict[int, TorchMemory]) -> list[GpuDevice]:
        out = []
        uuids = stats_uuids(torch, stats)
        for index, mem in stats.items():
            try:
                free, total = (int(n) for n in torch.cuda.mem_get_info(index))
                name = str(torch.cuda.get_device_name(index))
            except Exception:
                self.errors += 1
                continue
            out.append(GpuDevice(index, uuids.get(index, ""), name, total, total - free, free,
                                 None, mem, index))  # fmt: skip
        return out

    def close(self) -> None:
        """Shut NVML down (where this reader opened it)."""
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except Exception:
                self.errors += 1


def _process_bytes(nvml: Any, handle: Any, pid: int) -> int | None:
    """This process's bytes on the device per NVML (None where the driver hides them, as
    in many containers, whose pids NVML cannot see)."""
    getter = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses", None)
    if getter is None:
        return None
    try:
        processes = getter(handle)
    except Exception:  # not supported on this device or driver: unknown, not an error
        return None
    used = [p.usedGpuMemory for p in processes if p.pid == pid]
    return int(used[0]) if used and used[0] is not None else None


def stats_uuids(torch: Any, stats: Mapping[int, TorchMemory]) -> dict[int, str]:
    """torch's device index -> its UUID where torch tells it (torch 2.0 and later)."""
    out = {}
    for index in stats:
        try:
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        except Exception:
            uuid = None
        if uuid is not None:
            out[index] = str(uuid)
    return out


def _with_torch(d: GpuDevice, index: int | None, stats: Mapping[int, TorchMemory]) -> GpuDevice:
    found = stats.get(index) if index is not None else None
    return replace(d, torch=found, torch_index=index if found is not None else None)


def _match(device: GpuDevice, by_uuid: Mapping[str, int]) -> int | None:
    """torch's index for an NVML device: by UUID where torch tells UUIDs (with
    CUDA_VISIBLE_DEVICES torch counts only the visible ones), else the same index."""
    return by_uuid.get(_bare(device.uuid)) if by_uuid else device.index


def _bare(uuid: str) -> str:
    """A UUID without NVML's ``GPU-`` prefix (torch prints it bare)."""
    return uuid.removeprefix("GPU-").lower()

"""A simulated GPU for tests on machines without one: NVML's calls (``FakeNvml``, the
module surface of nvidia-ml-py the reader uses) and torch's (``FakeTorch``: the
``torch.cuda`` functions the library calls, and CUDA tensors the spill path moves), over
one shared device state, so that a torch allocation shows in NVML's used bytes as it does
on a real device, ``empty_cache`` returns cached blocks, and an allocation past the total
raises torch's ``OutOfMemoryError``.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIB = 1 << 20
GIB = 1 << 30
#: What a CUDA context costs on a device before any tensor (a real one is 300-500 MiB).
CONTEXT = 300 * MIB


class NVMLError(Exception):
    """As pynvml's: raised by any call that fails."""


class OutOfMemoryError(RuntimeError):
    """As torch's (``torch.OutOfMemoryError``, defined in ``torch.cuda``)."""

    __module__ = "torch.cuda"


@dataclass
class Device:
    """One simulated device: its size, what other processes use, and this process's torch
    caching allocator (allocated bytes in tensors, reserved bytes held from the driver)."""

    total: int
    uuid: str
    name: str = "NVIDIA Stand-In 80GB"
    others: int = 0
    allocated: int = 0
    reserved: int = 0
    peak: int = 0
    retries: int = 0
    ooms: int = 0
    lost: bool = False
    context: bool = False  # a CUDA context, made at the first allocation, kept for life
    blocks: dict[int, int] = field(default_factory=dict)  # tensor id -> bytes

    @property
    def used(self) -> int:
        return self.others + (CONTEXT if self.context else 0) + self.reserved

    def alloc(self, key: int, nbytes: int) -> None:
        """Allocate through the caching allocator: from the cache where it holds enough,
        else from the driver; past the total, free the cache and retry, then OOM."""
        if self.reserved - self.allocated < nbytes:
            grow = nbytes - (self.reserved - self.allocated)
            if self.used + grow + (0 if self.context else CONTEXT) > self.total:
                self.retries += 1
                self.reserved = self.allocated  # empty the cache, as torch does, and retry
                if self.used + grow > self.total:
                    self.ooms += 1
                    raise OutOfMemoryError(
                        f"CUDA out of memory. Tried to allocate {nbytes / MIB:.2f} MiB. GPU "
                        f"{self.uuid[-1]} has a total capacity of {self.total / GIB:.2f} GiB"
                    )
            self.reserved += max(0, nbytes - (self.reserved - self.allocated))
        self.context = True
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)
        self.blocks[key] = nbytes

    def free(self, key: int) -> None:
        self.allocated -= self.blocks.pop(key, 0)  # the block stays reserved (cached)


class FakeNvml:
    """NVML over simulated devices; ``fail_init`` makes nvmlInit raise, ``calls`` counts."""

    NVMLError = NVMLError

    def __init__(self, devices: list[Device], *, fail_init: bool = False) -> None:
        self.devices = devices
        self.fail_init = fail_init
        self.calls = 0
        self.inited = False
        self.hide_processes = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")
        self.inited = True

    def nvmlShutdown(self) -> None:
        self.inited = False

    def nvmlDeviceGetCount(self) -> int:
        self.calls += 1
        return len(self.devices)

    def _device(self, handle: int) -> Device:
        self.calls += 1
        d = self.devices[handle]
        if d.lost:
            raise NVMLError("GPU is lost")
        return d

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._device(index)
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._device(handle).uuid

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self._device(handle).name.encode()  # older bindings answer bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        d = self._device(handle)
        return types.SimpleNamespace(total=d.total, used=d.used, free=d.total - d.used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        d = self._device(handle)
        if self.hide_processes or not d.context:
            return []
        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=CONTEXT + d.reserved)]


class _Cuda:
    """The ``torch.cuda`` functions the library calls, over the same devices."""

    OutOfMemoryError = OutOfMemoryError

    def __init__(self, devices: list[Device], visible: list[int]) -> None:
        self._devices, self._visible = devices, visible
        self.initialized = True
        self.empty_cache_calls = 0
        self.synchronized: list[int] = []
        self.current = 0

    def _d(self, index: int) -> Device:
        return self._devices[self._visible[index]]

    def is_initialized(self) -> bool:
        return self.initialized

    def is_available(self) -> bool:
        return True

    def init(self) -> None:
        self.initialized = True

    def device_count(self) -> int:
        return len(self._visible)

    def memory_stats(self, index: int) -> dict[str, int]:
        d = self._d(index)
        if not d.reserved and not d.allocated:
            return {}  # torch's answer before the first allocation
        return recorded_stats(d.allocated, d.reserved, d.peak, d.retries, d.ooms)

    def memory_reserved(self, index: int) -> int:
        return self._d(index).reserved

    def mem_get_info(self, index: int) -> tuple[int, int]:
        d = self._d(index)
        return d.total - d.used, d.total

    def get_device_name(self, index: int) -> str:
        return self._d(index).name

    def get_device_properties(self, index: int) -> Any:
        return types.SimpleNamespace(uuid=self._d(index).uuid.removeprefix("GPU-"))

    def synchronize(self, index: int) -> None:
        self.synchronized.append(index)

    @contextlib.contextmanager
    def device(self, index: int) -> Iterator[None]:
        before, self.current = self.current, index
        try:
            yield
        finally:
            self.current = before

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1
        d = self._d(self.current)
        d.reserved = d.allocated


class FakeTorch(types.ModuleType):
    """``torch`` as the application imported it: ``cuda``, CUDA tensors and from_numpy.
    ``visible`` maps torch's indexes to the devices (CUDA_VISIBLE_DEVICES)."""

    def __init__(self, devices: list[Device], visible: list[int] | None = None) -> None:
        super().__init__("torch")
        self.cuda = _Cuda(devices, visible if visible is not None else list(range(len(devices))))
        self.OutOfMemoryError = OutOfMemoryError

    uint8 = np.uint8

    def empty(self, nbytes: int, index: int = 0, *, dtype: Any = None, device: str = "") -> Tensor:
        """A CUDA tensor of ``nbytes`` on torch's device ``index`` (or ``device="cuda:N"``);
        its host stand-in is allocated lazily (np.zeros maps untouched pages)."""
        if device:
            index = int(device.split(":")[1])
        d = self.cuda._d(index)
        d.alloc(-1, nbytes)  # the device first: an OOM before any host stand-in is made
        d.free(-1)  # the block stays cached, and the tensor below takes it
        return Tensor(np.zeros(nbytes, np.uint8), self, index)

    def from_numpy(self, array: np.ndarray[Any, Any]) -> Tensor:
        return Tensor(array, self, None)


class _Device:
    def __init__(self, index: int | None) -> None:
        self.type = "cpu" if index is None else "cuda"
        self.index = index


class _Storage:
    def __init__(self, tensor: Tensor) -> None:
        self._tensor = tensor

    def nbytes(self) -> int:
        return self._tensor.nbytes

    def data_ptr(self) -> int:
        return int(self._tensor._array.__array_interface__["data"][0])


class Tensor:
    """A stand-in torch tensor: on the CPU (``index`` None) or on a CUDA device, where its
    bytes are allocated through that device's caching allocator while it lives."""

    __module__ = "torch"

    def __init__(self, array: np.ndarray[Any, Any], torch: FakeTorch, index: int | None) -> None:
        self._array, self._torch = array, torch
        self.device = _Device(index)
        self.requires_grad = False
        self.nbytes = int(array.nbytes)
        if index is not None:
            torch.cuda._d(index).alloc(id(self), self.nbytes)

    def __del__(self) -> None:
        if self.device.index is not None:
            self._torch.cuda._d(self.device.index).free(id(self))

    def numpy(self) -> np.ndarray[Any, Any]:
        if self.device.type != "cpu":
            raise TypeError("can't convert cuda tensor to numpy")
        return self._array.view()

    def storage_offset(self) -> int:
        return 0

    def is_contiguous(self) -> bool:
        return True

    def untyped_storage(self) -> _Storage:
        return _Storage(self)

    def detach(self) -> Tensor:
        return self

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def to(self, where: str) -> Tensor:
        index = None if where == "cpu" else int(where.split(":")[1])
        return Tensor(self._array.copy(), self._torch, index)


def recorded_stats(
    allocated: int, reserved: int, peak: int, retries: int, ooms: int
) -> dict[str, int]:
    """A ``torch.cuda.memory_stats()`` dictionary of the shape torch 2.x returns (a subset of
    its ~80 keys, with the ones the reader takes), for these figures."""
    stats = {}
    for pool in ("all", "large_pool", "small_pool"):
        share = 1.0 if pool == "all" else (0.9 if pool == "large_pool" else 0.1)
        for key, current in (("allocated_bytes", allocated), ("reserved_bytes", reserved),
                             ("active_bytes", allocated), ("inactive_split_bytes", 0)):  # fmt: skip
            stats[f"{key}.{pool}.current"] = int(current * share)
            stats[f"{key}.{pool}.peak"] = int(
                (peak if key == "allocated_bytes" else current) * share
            )
            stats[f"{key}.{pool}.allocated"] = int(current * share)
            stats[f"{key}.{pool}.freed"] = 0
    stats |= {"num_alloc_retries": retries, "num_ooms": ooms, "num_sync_all_streams": 0,
              "num_device_alloc": 3, "num_device_free": 1, "max_split_size": -1}  # fmt: skip
    return stats


def devices(n: int = 1, total: int = 8 * GIB) -> list[Device]:
    return [Device(total, f"GPU-5e1c0a7e-0000-4000-8000-00000000000{i}") for i in range(n)]

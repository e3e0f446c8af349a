"""The GPU reading's cost: with no GPU present (it must cost the monitor's loop nothing
measurable), over an NVML stand-in (our Python around NVML, against pynvml called
naively), and on a real GPU where NVML answers (against ``nvidia-smi --query-gpu`` and
naive pynvml). ``bench/gpu_check.py`` is the functional check for a GPU machine."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from typing import Any

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.readers.gpu import GpuReader

from .harness import Row, interleaved, progress

TITLE = "GPU readings: no GPU, an NVML stand-in, a real GPU (nvidia-smi, naive pynvml)"
#: "Nothing measurable" on the loop: a full step may cost at most this much more (us).
NO_GPU_BUDGET_US = 1.0


def naive_pynvml(nvml: Any) -> int:
    """What a service writes by hand: init, every handle and figure, shut down, per read."""
    nvml.nvmlInit()
    try:
        used = 0
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            nvml.nvmlDeviceGetUUID(handle)
            used += int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        return used
    finally:
        nvml.nvmlShutdown()


def nvidia_smi() -> str:
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=index,uuid,memory.total,memory.used", "--format=csv"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip


def _no_gpu() -> list[Row]:
    """What no GPU costs a monitor's full step: the GPU part's own call, timed alone (the
    full step's own noise, about a microsecond here, would hide it), against the full step
    without it."""
    progress("the GPU part of a full step with no GPU present, and the step without it")
    off = MemoryMonitor(MemoryConfig(), gpu=GpuReader(False, torch=lambda: None))
    bare = MemoryMonitor(MemoryConfig(), gpu=GpuReader(False, torch=lambda: None))
    bare._gpu.step = lambda: None  # type: ignore[method-assign]
    off.tick()
    bare.tick()
    part, step = interleaved(off._gpu.step, bare.tick, number=5000, rounds=21)
    assert step is not None
    met = part * 1e6 < NO_GPU_BUDGET_US and part < 0.02 * step
    return [
        Row(
            "GPU part of a monitor full step, no GPU present (reader off)",
            part * 1e6,
            step * 1e6,
            "us",
            f"< {NO_GPU_BUDGET_US:g} us and < 2 % of the step",
            met,
            "the full step without the GPU part",
        ),
        Row(
            "monitor rest loop, no GPU present",
            0.0,
            None,
            "us",
            "(not entered: the loop rests as before, max_rest_s None)",
            off._loop.max_rest_s is None,
        ),
    ]


def _standin() -> list[Row]:
    from tests.gpu_standin import FakeNvml, devices

    progress("reading 8 stand-in devices: ours against naive pynvml calls")
    nvml = FakeNvml(devices(8))
    reader = GpuReader(nvml, torch=lambda: None)
    ours, theirs = interleaved(reader.read, lambda: naive_pynvml(nvml), number=2000, rounds=15)
    assert theirs is not None
    return [Row("read 8 devices over an NVML stand-in (Python overhead only)", ours * 1e6,
                theirs * 1e6, "us", "(reported: a stand-in costs nothing per call)", None,
                "naive pynvml calls, same stand-in")]  # fmt: skip


def _real() -> tuple[list[Row], str]:
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
        nvml.nvmlShutdown()
    except Exception as exc:
        return [], (f"No real GPU was read: NVML is unavailable here ({type(exc).__name__}); the "
                    "real-GPU rows (ours against nvidia-smi and naive pynvml) run on a machine "
                    "with an NVIDIA driver.")  # fmt: skip
    progress("reading the real GPUs: ours, naive pynvml, nvidia-smi")
    reader = GpuReader(torch=lambda: None)
    reader.read()
    ours, naive = interleaved(reader.read, lambda: naive_pynvml(nvml), number=200, rounds=11)
    rows = [
        Row(
            "read every GPU (NVML)",
            ours * 1e6,
            (naive or 0) * 1e6,
            "us",
            ">= 2x faster than naive pynvml",
            (naive or 0) >= 2 * ours,
            "naive pynvml",
        )
    ]
    if shutil.which("nvidia-smi"):
        _, smi = interleaved(reader.read, nvidia_smi, number=3, rounds=5)
        rows.append(Row("read every GPU (NVML)", ours * 1e6, (smi or 0) * 1e6, "us",
                        ">= 100x faster than nvidia-smi", (smi or 0) >= 100 * ours,
                        "nvidia-smi --query-gpu"))  # fmt: skip
    reader.close()
    return rows, ""


def run() -> tuple[list[Row], str]:
    rows = _no_gpu() + _standin()
    real, notes = _real()
    rows += real
    notes = (notes + "\n\n" if notes else "") + (
        "No GPU: the GPU part reads once, finds nothing, says so (gpu_reader_off) and then costs "
        "one attribute test per full step; the rest loop is untouched (it is bounded by the "
        "interval only while a GPU is read). The stand-in row isolates what our Python adds "
        "around NVML calls: handles, UUIDs and names are read once, not per reading."
    )
    return rows, notes

"""The GPU check, for a machine with an NVIDIA GPU, torch and nvidia-ml-py (under 5 minutes):

    python bench/gpu_check.py [--out DIR]

On device 0 it allocates with torch up to each rung of the GPU ladder and checks: the
readings against NVML and ``nvidia-smi``, the level changes, the emergency's
``empty_cache`` step and its measured return, a 503 for a request that does not fit, a
real CUDA OOM caught and answered 503, and the exported metrics. It prints one line per
check and writes ``gpu_check.json`` (to ``--out``, default ``$OUT`` or the current
directory); it exits 1 when a check fails, 2 when there is no GPU to check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.exceptions import InsufficientGpuMemoryError
from pathoai_memobs.gpu_errors import CAUGHT, is_cuda_oom
from pathoai_memobs.integrations.routes import error_answer
from pathoai_memobs.pressure import Level

MIB, GIB = 1 << 20, 1 << 30
checks: list[dict[str, Any]] = []


def check(name: str, ok: bool, **detail: Any) -> None:
    checks.append({"check": name, "ok": bool(ok), **detail})
    print(f"{'ok  ' if ok else 'FAIL'} {name} {json.dumps(detail, default=str)}", flush=True)


def smi() -> dict[str, int]:
    """Device 0 as nvidia-smi prints it (MiB)."""
    out = (
        subprocess.run(
            [
                "nvidia-smi",
                "-i",
                "0",
                "--query-gpu=memory.total,memory.used,uuid",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        .stdout.strip()
        .split(", ")
    )
    return {"total_mib": int(out[0]), "used_mib": int(out[1]), "uuid": out[2]}  # type: ignore[dict-item]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    try:
        import torch  # the application's torch: this script plays the application
    except ImportError:
        print("no torch here: nothing to check", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check", file=sys.stderr)
        return 2
    torch.cuda.init()
    started = time.monotonic()
    monitor = MemoryMonitor(MemoryConfig(monitoring_interval_sec=0.2))
    held: list[Any] = []
    _readings(monitor)
    _rungs_and_refusals(monitor, torch, held)
    _emergency_and_exports(monitor, torch, held)
    held.clear()
    torch.cuda.empty_cache()
    result = {"seconds": round(time.monotonic() - started, 1), "checks": checks}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    failed = [c["check"] for c in checks if not c["ok"]]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed in {result['seconds']} s")
    return 1 if failed else 0


def _readings(monitor: MemoryMonitor) -> None:
    """The devices, against nvidia-smi."""
    monitor.tick()
    devices = monitor.gpu.devices
    check(
        "devices read through NVML and torch",
        bool(devices) and devices[0].torch is not None,
        devices=[(d.index, d.uuid, d.name, d.total) for d in devices],
    )
    d0 = devices[0]
    s = smi()
    check(
        "total and used agree with nvidia-smi (1 MiB, 64 MiB)",
        abs(d0.total / MIB - s["total_mib"]) <= 1
        and abs(d0.used / MIB - s["used_mib"]) <= 64
        and d0.uuid == s["uuid"],
        ours_mib=(d0.total // MIB, d0.used // MIB),
        smi=s,
    )


def _rungs_and_refusals(monitor: MemoryMonitor, torch: Any, held: list[Any]) -> None:
    """Allocate up to the warning and critical rungs; a refusal; a real OOM."""
    d0 = monitor.gpu.device(0)
    assert d0 is not None
    levels = []
    t = monitor.gpu.ladder.thresholds.for_total(d0.total)
    chunk = d0.total // 100  # steps of 1 %: the rungs are 5 points apart
    for target in (t.warning_ratio + 0.005, t.critical_ratio + 0.005):
        while monitor.gpu.device(0).used_ratio < target:  # type: ignore[union-attr]
            held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda:0"))
        monitor.tick()
        levels.append(monitor.gpu.ladder.level(0).name)
    check(
        "the ladder reaches WARNING then CRITICAL",
        levels == ["WARNING", "CRITICAL"],
        levels=levels,
        held_gib=round(len(held) * chunk / GIB, 1),
    )
    stats = torch.cuda.memory_stats(0)
    now = monitor.gpu.device(0)
    assert now is not None and now.torch is not None
    check(
        "torch figures equal torch.cuda.memory_stats",
        now.torch.allocated == stats["allocated_bytes.all.current"]
        and now.torch.reserved == stats["reserved_bytes.all.current"],
        torch=now.torch._asdict(),
    )
    free_mb = now.free / MIB
    try:
        monitor.check_gpu_memory_available(free_mb + 1024)
        refused = None
    except InsufficientGpuMemoryError as exc:
        refused = exc
    answer = error_answer(refused) if refused is not None else None
    check(
        "a request that does not fit is refused 503 with Retry-After",
        answer is not None and answer[0] == 503 and any(k == "retry-after" for k, _ in answer[1]),
        free_mb=round(free_mb),
    )
    try:
        torch.empty(int(now.free + 4 * GIB), dtype=torch.uint8, device="cuda:0")
        oom = None
    except Exception as exc:  # torch.OutOfMemoryError
        oom = exc
    caught = error_answer(oom) if oom is not None else None
    if oom is not None:
        CAUGHT.caught(oom)
    check(
        "a real CUDA OOM is recognised and answered 503",
        oom is not None and is_cuda_oom(oom) and caught is not None and caught[0] == 503,
        error=type(oom).__name__,
    )


def _emergency_and_exports(monitor: MemoryMonitor, torch: Any, held: list[Any]) -> None:
    """Below the floor: EMERGENCY, the cleanup's measured empty_cache; the metrics."""
    d0 = monitor.gpu.device(0)
    assert d0 is not None
    t = monitor.gpu.ladder.thresholds.for_total(d0.total)
    chunk = 256 * MIB
    while monitor.gpu.device(0).free >= t.floor_bytes:  # type: ignore[union-attr]
        held.append(torch.empty(chunk, dtype=torch.uint8, device="cuda:0"))
    cached = 0
    while held and cached < min(4 * GIB, d0.total // 10):  # back to torch's cache, not the driver
        cached += int(held.pop().nbytes)
    cleanup = monitor.gpu.cleanup(0)
    runs, returned_before = cleanup.totals.runs, cleanup.cache_returned_bytes
    monitor.tick()  # the step starts the device's cleanup in its worker thread
    check("EMERGENCY below the GPU floor", monitor.gpu.ladder.level(0) is Level.EMERGENCY)
    deadline = time.monotonic() + 30
    while cleanup.totals.runs == runs and time.monotonic() < deadline:
        time.sleep(0.05)
    run = cleanup.totals.last
    returned = cleanup.cache_returned_bytes - returned_before
    check(
        "the emergency's empty_cache returns the cached bytes, measured",
        run is not None and returned >= cached - 64 * MIB,
        returned_mib=returned // MIB,
        steps=[(s.name, s.freed_bytes) for s in run.steps] if run else None,
    )
    from prometheus_client import CollectorRegistry, generate_latest

    from pathoai_memobs.exporters.prometheus import instrument

    registry = CollectorRegistry()
    instrument(monitor, registry=registry)
    text = generate_latest(registry).decode()
    check(
        "metrics exported with gpu and uuid labels",
        f'pathoai_gpu_memory_used_bytes{{gpu="0",uuid="{d0.uuid}"}}' in text
        and "pathoai_gpu_torch_reserved_bytes" in text
        and "pathoai_gpu_oom_errors_total" in text,
    )


if __name__ == "__main__":
    raise SystemExit(main())

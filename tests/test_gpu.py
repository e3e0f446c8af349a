"""GPU memory without a GPU: the reader over an NVML stand-in and recorded memory_stats,
the ladder, admission with GPU bytes (the same line and ledger as host memory), the GPU
emergency's steps, the error mapping of torch's OOM, and the exported metrics."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from pathoai_memobs import MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.exceptions import (
    ConfigError,
    GpuUnavailableError,
    InsufficientGpuMemoryError,
)
from pathoai_memobs.gpu_errors import CAUGHT, is_cuda_oom, oom_device
from pathoai_memobs.gpu_ladder import GpuLadder, gpu_thresholds
from pathoai_memobs.integrations.asgi import MemoryAdmissionMiddleware, MemoryErrorMiddleware
from pathoai_memobs.integrations.routes import Need, error_answer
from pathoai_memobs.ledger import SharedLedger
from pathoai_memobs.pressure import Level
from pathoai_memobs.readers.gpu import GpuReader, loaded_torch, torch_memory
from pathoai_memobs.spill_store import SpillStore

from .gpu_standin import CONTEXT, GIB, MIB, FakeNvml, FakeTorch, Tensor, devices, recorded_stats
from .scripted import Scripted, events, wait_for


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeNvml, FakeTorch]]:
    """One 8 GiB stand-in device seen by NVML and by torch, imported as the app would."""
    devs = devices(1)
    torch = FakeTorch(devs)
    monkeypatch.setitem(sys.modules, "torch", torch)
    yield FakeNvml(devs), torch


def monitor_on(nvml: FakeNvml, **kw: Any) -> MemoryMonitor:
    """A monitor on plenty of scripted host memory, reading GPUs through ``nvml``."""
    config = kw.pop("config", MemoryConfig())
    return MemoryMonitor(config, sampler=Scripted(16 * GIB, 32 * GIB), gpu=GpuReader(nvml), **kw)


# -- the reader -----------------------------------------------------------------------------


def test_without_nvml_or_torch_the_reader_says_so_once_and_stays_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "pathoai_memobs")
    reader = GpuReader(False, torch=lambda: None)
    assert [reader.read() for _ in range(3)] == [(), (), ()]
    assert not reader.active and reader.errors == 0
    (off,) = events(caplog, "gpu_reader_off")
    assert "NVML off" in str(off["reason"])


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is None, reason="nvidia-ml-py absent")
def test_the_real_nvml_binding_without_a_driver_is_off_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "pathoai_memobs")
    reader = GpuReader(torch=lambda: None)  # imports pynvml; no driver on this machine
    found = reader.read()
    if found:  # a machine with a GPU reads it: that is the other test's business
        pytest.skip("this machine has an NVIDIA driver")
    (off,) = events(caplog, "gpu_reader_off")
    assert "NVML unavailable (NVMLError" in str(off["reason"])


def test_nvml_devices_by_index_and_uuid_with_this_process_bytes(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, torch = gpu
    nvml.devices[0].others = GIB
    kept = torch.empty(512 * MIB)
    (d,) = GpuReader(nvml).read()
    assert (d.index, d.uuid, d.name) == (0, nvml.devices[0].uuid, "NVIDIA Stand-In 80GB")
    assert d.total == 8 * GIB and d.used == GIB + CONTEXT + 512 * MIB == d.total - d.free
    assert d.process == CONTEXT + 512 * MIB
    assert d.torch is not None and d.torch.allocated == d.torch.reserved == 512 * MIB
    assert d.torch_index == 0
    del kept
    (d,) = GpuReader(nvml).read()
    assert d.torch is not None and d.torch.allocated == 0 and d.torch.reserved == 512 * MIB
    assert d.torch.fragmentation == 1.0  # all cached: what empty_cache would return


def test_recorded_memory_stats_are_parsed_and_missing_keys_are_zero() -> None:
    t = torch_memory(recorded_stats(3 * GIB, 4 * GIB, 5 * GIB, retries=2, ooms=1))
    assert t == (3 * GIB, 4 * GIB, 5 * GIB, 2, 1)
    assert t.fragmentation == pytest.approx(0.25)
    empty = torch_memory({})  # torch before the first allocation
    assert empty == (0, 0, 0, 0, 0) and empty.fragmentation == 0.0


def test_torch_devices_are_matched_to_nvml_by_uuid_under_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    devs = devices(2)
    torch = FakeTorch(devs, visible=[1])  # CUDA_VISIBLE_DEVICES=1: torch's 0 is NVML's 1
    monkeypatch.setitem(sys.modules, "torch", torch)
    kept = torch.empty(256 * MIB, 0)
    d0, d1 = GpuReader(FakeNvml(devs)).read()
    assert d0.torch is None and d0.torch_index is None
    assert d1.torch is not None and d1.torch.allocated == 256 * MIB and d1.torch_index == 0
    del kept


def test_torch_alone_is_read_where_nvml_is_absent(gpu: tuple[FakeNvml, FakeTorch]) -> None:
    _, torch = gpu
    kept = torch.empty(GIB)
    (d,) = GpuReader(False).read()
    assert d.total == 8 * GIB and d.free == 8 * GIB - CONTEXT - GIB and d.process is None
    assert d.torch is not None and d.torch.allocated == GIB and d.uuid.startswith("5e1c")
    del kept


def test_torch_is_never_imported_nor_cuda_initialised_by_the_reader(
    gpu: tuple[FakeNvml, FakeTorch], monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml, torch = gpu
    torch.cuda.initialized = False  # imported, but the app has not touched CUDA yet
    (d,) = GpuReader(nvml).read()
    assert d.torch is None and loaded_torch() is None
    monkeypatch.delitem(sys.modules, "torch")
    assert GpuReader(nvml).read()[0].torch is None
    assert "torch" not in sys.modules


def test_a_lost_device_is_left_out_said_once_and_found_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    devs = devices(2)
    nvml, now = FakeNvml(devs), [0.0]
    reader = GpuReader(nvml, torch=lambda: None, clock=lambda: now[0])
    assert len(reader.read()) == 2
    devs[1].lost = True  # fell off the bus
    assert [d.index for d in reader.read()] == [0]
    assert [d.index for d in reader.read()] == [0]
    (lost,) = events(caplog, "gpu_device_lost")
    assert lost["gpu"] == 1 and lost["error"] == "NVMLError" and reader.errors == 1
    devs[1].lost = False
    assert len(reader.read()) == 1  # not looked for before RESCAN_S
    now[0] += 31
    assert len(reader.read()) == 2


def test_nvml_errors_at_start_leave_the_reader_on_torch_or_off(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, torch = gpu
    nvml.fail_init = True
    kept = torch.empty(MIB)
    (d,) = GpuReader(nvml).read()  # NVML failed: torch's view of the device
    assert d.process is None and d.torch is not None
    del kept

    class CountFails(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            raise self.NVMLError("Unknown Error")

    reader = GpuReader(CountFails(devices(1)), torch=lambda: None)
    assert reader.read() == () and reader.errors == 1


# -- the ladder and its configuration --------------------------------------------------------


def test_the_gpu_ladder_climbs_with_used_memory_and_logs_each_change(
    caplog: pytest.LogCaptureFixture, gpu: tuple[FakeNvml, FakeTorch]
) -> None:
    caplog.set_level(logging.INFO, "pathoai_memobs")
    nvml, _ = gpu
    reader = GpuReader(nvml)
    ladder = GpuLadder(gpu_thresholds(MemoryConfig()))
    seen = []
    for others_gib in (1, 6.9, 7.3, 7.7, 1):
        nvml.devices[0].others = int(others_gib * GIB)
        ladder.observe(reader.read())
        seen.append(ladder.level(0))
    assert seen == [Level.NORMAL, Level.WARNING, Level.CRITICAL, Level.EMERGENCY, Level.NORMAL]
    changes = events(caplog, "gpu_level_changed")
    assert [c["pressure_level"] for c in changes] == ["WARNING", "CRITICAL", "EMERGENCY", "NORMAL"]
    assert changes[0]["gpu"] == 0 and changes[0]["uuid"] == nvml.devices[0].uuid


def test_gpu_rungs_are_fitted_on_small_devices_and_explicit_disorder_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    small = devices(1, total=2 * GIB)
    reader = GpuReader(FakeNvml(small), torch=lambda: None)
    fitted = GpuLadder(gpu_thresholds(MemoryConfig()))
    fitted.observe(reader.read())
    assert fitted.in_order[0] and not events(caplog, "rungs_out_of_order")
    t = fitted.thresholds.for_total(2 * GIB)
    assert t.critical_ratio * 2 * GIB < 2 * GIB - t.floor_bytes
    explicit = MemoryConfig(gpu_warning_percent=85, gpu_critical_percent=95)
    ladder = GpuLadder(gpu_thresholds(explicit))
    ladder.observe(reader.read())
    (warned,) = events(caplog, "rungs_out_of_order")
    assert warned["gpu"] == 0 and not ladder.in_order[0]


def test_gpu_settings_come_from_the_environment_and_are_validated() -> None:
    env = {"GPU_MEMORY_WARNING_PERCENT": "70", "GPU_MEMORY_CRITICAL_PERCENT": "80",
           "GPU_MEMORY_FLOOR_MB": "1024"}  # fmt: skip
    c = MemoryConfig.from_env(env)
    assert (c.gpu_warning_percent, c.gpu_critical_percent, c.gpu_floor_mb) == (70, 80, 1024)
    assert gpu_thresholds(c).floor_bytes == GIB and not gpu_thresholds(c).fit_to_floor
    with pytest.raises(ConfigError, match="GPU_MEMORY_WARNING_PERCENT"):
        MemoryConfig.from_env({**env, "GPU_MEMORY_WARNING_PERCENT": "90"})
    with pytest.raises(ConfigError, match="GPU_MEMORY_FLOOR_MB"):
        MemoryConfig.from_env({**env, "GPU_MEMORY_FLOOR_MB": "-5"})
    with pytest.raises(ConfigError, match="gpu_critical_percent"):
        MemoryConfig(gpu_critical_percent=120)


# -- admission ---------------------------------------------------------------------------


def test_gpu_bytes_are_held_with_the_host_bytes_and_a_second_hold_is_refused(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, _ = gpu
    m = monitor_on(nvml)
    assert m.check_gpu_memory_available(4096)
    with m.reserve(10, gpu_mb=5000):
        assert m.admission.gpu_reserved[0] == 5000 * MIB and m.reserved_bytes == 10 * MIB
        with pytest.raises(InsufficientGpuMemoryError) as refused:
            m.reserve(10, gpu_mb=3000).__enter__()
        assert m.reserved_bytes == 10 * MIB  # nothing half-held
        assert not m.check_gpu_memory_available(10) or True  # fits: 10 MiB is small
        with pytest.raises(InsufficientGpuMemoryError):
            m.check_gpu_memory_available(3000)
    err = refused.value
    assert err.device == 0 and err.retry_after_s and "GPU 0" in str(err)
    assert err.reserved_mb == 5000 and err.floor_mb == 512
    status, headers, body = error_answer(err)  # type: ignore[misc]
    assert status == 503 and dict(headers)["retry-after"] and b"insufficient_gpu_memory" in body
    assert m.admission.gpu_reserved[0] == 0 and m.requests_rejected_total == 2


def test_a_gpu_refusal_waits_in_line_and_is_admitted_when_memory_is_released(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, _ = gpu
    m = monitor_on(nvml)
    first = m.reserve(0, gpu_mb=6000)
    first.__enter__()
    got: list[float] = []

    def second() -> None:
        started = time.monotonic()
        with m.reserve(0, gpu_mb=3000, wait_s=5):
            got.append(time.monotonic() - started)

    t = threading.Thread(target=second)
    t.start()
    wait_for(lambda: m.admission.queue_length == 1)
    time.sleep(0.2)
    first.__exit__(None, None, None)
    t.join(5)
    assert got and 0.15 < got[0] < 3


def test_gpu_admission_refuses_in_the_devices_emergency_and_starts_its_cleanup(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, _ = gpu
    m = monitor_on(nvml)
    nvml.devices[0].others = 8 * GIB - 400 * MIB  # 400 MiB free: under the 512 MiB floor
    with pytest.raises(InsufficientGpuMemoryError):
        m.check_gpu_memory_available(1)
    wait_for(lambda: 0 in m.gpu.cleanups and m.gpu.cleanups[0].totals.runs >= 1)


def test_an_unreadable_device_or_a_bad_index_is_a_typed_error(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, _ = gpu
    m = monitor_on(nvml)
    with pytest.raises(GpuUnavailableError, match=r"GPU 3 cannot be read \(readable devices: 0\)"):
        m.check_gpu_memory_available(1, device=3)
    for bad in (-1, 99, True, "0"):
        with pytest.raises(ValueError, match="device"):
            m.reserve(1, gpu_mb=1, device=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gpu_mb"):
        m.reserve(1, gpu_mb=float("nan"))
    assert m.reserved_bytes == 0


def test_gpu_holds_are_booked_in_the_shared_ledger_and_a_dead_workers_are_released(
    tmp_path: Path,
) -> None:
    ledger = SharedLedger(str(tmp_path))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker holding 3 GiB on GPU 1, then killed
        try:
            child = SharedLedger(str(tmp_path))
            with child.transaction():
                child.gpu_add(1, 3 * GIB)
            os.write(write, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.read(read, 1)
    with ledger.transaction():
        assert ledger.gpu_total(1) == 3 * GIB and ledger.gpu_total(0) == 0
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    with ledger.transaction():
        assert ledger.reap() == 3 * GIB
        assert ledger.gpu_total(1) == 0


# -- the GPU emergency ---------------------------------------------------------------------


def test_the_emergency_runs_gpu_callbacks_empties_the_cache_and_measures_it(
    gpu: tuple[FakeNvml, FakeTorch], caplog: pytest.LogCaptureFixture
) -> None:
    nvml, torch = gpu
    m = monitor_on(nvml)
    model: list[Tensor] = [torch.empty(3 * GIB)]
    host_ran: list[str] = []
    m.register_cleanup_callback(model.clear, name="model_to_cpu", gpu=True)
    m.register_cleanup_callback(lambda: host_ran.append("x"), name="host_cache")
    nvml.devices[0].others = 8 * GIB - CONTEXT - 3 * GIB - 300 * MIB  # 300 MiB free
    m.tick()
    assert m.gpu.ladder.level(0) is Level.EMERGENCY
    wait_for(lambda: m.gpu.cleanups[0].totals.runs == 1)
    run = m.gpu.cleanups[0].totals.last
    assert run is not None and run.restored
    assert [s.name for s in run.steps] == ["model_to_cpu", "gpu_empty_cache"]
    assert run.steps[0].freed_bytes == 0  # freed into torch's cache: the driver sees nothing
    assert run.steps[1].freed_bytes == 3 * GIB  # until empty_cache returns it
    assert m.gpu.cleanups[0].cache_returned_bytes == 3 * GIB and torch.cuda.synchronized == [0]
    assert host_ran == []  # a GPU callback never runs for host memory, nor a host one here
    (event,) = events(caplog, "gpu_emergency_cleanup")
    assert event["gpu"] == 0 and event["cache_returned_bytes"] == 3 * GIB
    assert m.cleanup_callback_names == ("host_cache",)  # the host's plan: no GPU callback
    assert m.unregister_cleanup_callback("model_to_cpu")


def test_sessions_cuda_tensors_are_spilled_for_the_gpu_and_come_back_on_the_device(
    gpu: tuple[FakeNvml, FakeTorch], tmp_path: Path
) -> None:
    nvml, torch = gpu
    store = SpillStore(str(tmp_path), max_bytes=8 * GIB, encrypt=False)
    sessions = SessionManager(spill=store, spill_min_bytes=MIB)
    m = monitor_on(nvml, sessions=sessions)
    sid = sessions.create_session()
    features = torch.empty(2 * GIB)
    features._array[:5] = 7
    sessions.update_session(sid, features=features, name="slide-1")
    assert sessions.aggregates().device_bytes == 2 * GIB
    del features
    nvml.devices[0].others = 8 * GIB - CONTEXT - 2 * GIB - 300 * MIB
    run = m.gpu.cleanup(0).run("test")
    assert run is not None and run.restored
    assert [s.name for s in run.steps] == ["gpu_empty_cache", "gpu_sessions"]
    assert sessions.aggregates().device_bytes == 0 and nvml.devices[0].reserved == 0
    assert store.spilled_bytes == 2 * GIB
    back = sessions.get_session(sid)
    assert back is not None
    tensor = back.data["features"]
    assert isinstance(tensor, Tensor) and tensor.device.type == "cuda" and tensor.device.index == 0
    assert tensor._array[:6].tolist() == [7, 7, 7, 7, 7, 0] and back.data["name"] == "slide-1"
    assert sessions.aggregates().device_bytes == 2 * GIB


def test_without_a_store_the_gpu_emergency_evicts_the_largest_device_session(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, torch = gpu
    sessions = SessionManager()
    m = monitor_on(nvml, sessions=sessions)
    small, large, pinned = (sessions.create_session() for _ in range(3))
    sessions.update_session(small, t=torch.empty(100 * MIB))
    sessions.update_session(large, t=torch.empty(GIB))
    sessions.update_session(pinned, t=torch.empty(2 * GIB))
    nvml.devices[0].others = 8 * GIB - CONTEXT - nvml.devices[0].reserved - 300 * MIB
    with sessions.use(pinned):
        m.gpu.cleanup(0).run("test")
    assert sessions.get_session(large) is None  # the largest unpinned went first, and sufficed
    assert sessions.get_session(small) is not None and sessions.get_session(pinned) is not None
    assert sessions.removed_total("emergency") == 1


# -- HTTP: route sizes with GPU bytes, torch's OOM ----------------------------------------


def test_routes_name_gpu_bytes_and_a_cuda_oom_in_a_handler_is_answered_503(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, torch = gpu
    m = monitor_on(nvml)

    async def infer(request: Request) -> JSONResponse:
        torch.empty(int(request.query_params.get("mb", "1")) * MIB)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/infer", infer, methods=["POST"])])
    app.add_middleware(MemoryAdmissionMiddleware, monitor=m, wait_s=0,  # type: ignore[arg-type]
                       routes={"POST /infer": lambda scope: Need(10, gpu_mb=6000)})  # fmt: skip
    app.add_middleware(MemoryErrorMiddleware)  # type: ignore[arg-type]
    before = CAUGHT.totals().get("0", 0)
    client = TestClient(app)
    assert client.post("/infer?mb=100").status_code == 200
    nvml.devices[0].others = 4 * GIB  # another process took half the device
    refused = client.post("/infer?mb=100")
    assert refused.status_code == 503 and refused.json()["error"] == "insufficient_gpu_memory"
    assert int(refused.headers["retry-after"]) >= 1
    m2 = monitor_on(nvml)  # a route sized too small: the handler itself meets CUDA's OOM
    app2 = Starlette(routes=[Route("/infer", infer, methods=["POST"])])
    app2.add_middleware(MemoryAdmissionMiddleware, monitor=m2,  # type: ignore[arg-type]
                        routes={"POST /infer": Need(10, gpu_mb=10)})  # fmt: skip
    app2.add_middleware(MemoryErrorMiddleware)  # type: ignore[arg-type]
    client2 = TestClient(app2)
    oom = client2.post("/infer?mb=5000")
    assert oom.status_code == 503 and oom.headers["retry-after"] == "2"
    assert oom.json()["error"] == "insufficient_gpu_memory"
    assert CAUGHT.totals()["0"] == before + 1
    wait_for(lambda: 0 in m2.gpu.cleanups and m2.gpu.cleanups[0].totals.runs >= 1)


def test_cuda_ooms_are_told_apart_without_torch() -> None:
    from .gpu_standin import OutOfMemoryError

    assert is_cuda_oom(OutOfMemoryError("CUDA out of memory. ... GPU 3 has a total capacity"))
    assert oom_device(OutOfMemoryError("Tried to allocate 2 GiB. GPU 3 has a total")) == "3"
    assert is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert oom_device(RuntimeError("CUDA out of memory.")) == "unknown"
    assert not is_cuda_oom(MemoryError()) and not is_cuda_oom(RuntimeError("other"))
    assert error_answer(ValueError("x")) is None


def test_need_is_validated() -> None:
    for bad in ({"mb": -1}, {"gpu_mb": float("inf")}, {"device": -1}, {"device": True}):
        with pytest.raises(ValueError, match="Need"):
            Need(**bad)  # type: ignore[arg-type]


# -- exported ------------------------------------------------------------------------------


def test_gpu_metrics_are_exported_with_gpu_and_uuid_labels(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    from pathoai_memobs.exporters.prometheus import instrument

    nvml, torch = gpu
    m = monitor_on(nvml)
    kept = torch.empty(GIB)
    registry = CollectorRegistry()
    instrument(m, registry=registry)
    with m.reserve(0, gpu_mb=100):
        text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    labels = (("gpu", "0"), ("uuid", nvml.devices[0].uuid))
    expected = {
        "pathoai_gpu_memory_limit_bytes": 8 * GIB,
        "pathoai_gpu_memory_used_bytes": CONTEXT + GIB,
        "pathoai_gpu_memory_reserved_bytes": 100 * MIB,
        "pathoai_gpu_process_memory_bytes": CONTEXT + GIB,
        "pathoai_gpu_torch_allocated_bytes": GIB,
        "pathoai_gpu_torch_reserved_bytes": GIB,
        "pathoai_gpu_memory_pressure_level": 0,
        "pathoai_gpu_memory_emergency_threshold_bytes": 512 * MIB,
    }
    for name, value in expected.items():
        assert samples[(name, labels)] == value, name
    assert samples[("pathoai_gpu_torch_fragmentation_ratio", labels)] == 0
    assert "# TYPE pathoai_gpu_oom_errors_total counter" in text
    del kept


def test_the_opentelemetry_names_are_the_hw_gpu_conventions(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from pathoai_memobs.exporters.otel import instrument

    nvml, torch = gpu
    kept = torch.empty(GIB)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrument(provider, monitor=monitor_on(nvml))
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        metric.name: metric.data.data_points
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    (usage,) = points["hw.gpu.memory.usage"]
    assert usage.value == CONTEXT + GIB
    assert dict(usage.attributes) == {
        "pathoai.gpu.index": "0", "hw.id": nvml.devices[0].uuid, "hw.type": "gpu",
    }  # fmt: skip
    assert points["hw.gpu.memory.limit"][0].value == 8 * GIB
    assert 0 < points["hw.gpu.memory.utilization"][0].value < 1
    assert points["pathoai.gpu.torch.allocated"][0].value == GIB
    provider.shutdown()
    del kept


def test_with_a_gpu_the_loop_steps_every_interval_and_without_rests_as_before(
    gpu: tuple[FakeNvml, FakeTorch],
) -> None:
    nvml, _ = gpu
    m = monitor_on(nvml)
    m.tick()
    assert m.gpu.active and m._loop.max_rest_s == m.config.monitoring_interval_sec
    off = MemoryMonitor(
        MemoryConfig(), sampler=Scripted(GIB), gpu=GpuReader(False, torch=lambda: None)
    )
    off.tick()
    assert not off.gpu.active and off._loop.max_rest_s is None
    assert np.isfinite(off.tick())


def test_the_gpu_check_script_passes_on_the_stand_in(
    gpu: tuple[FakeNvml, FakeTorch], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """bench/gpu_check.py, the check for a GPU machine, run here on the stand-in (as NVML
    and torch): its logic is proven before a GPU is lent; its numbers come from a real one."""
    import importlib

    nvml, _ = gpu
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    script = importlib.import_module("gpu_check")
    d = nvml.devices[0]
    monkeypatch.setattr(
        script,
        "smi",
        lambda: {"total_mib": d.total // MIB, "used_mib": d.used // MIB, "uuid": d.uuid},
    )
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path)])
    script.checks.clear()
    assert script.main() == 0, [c for c in script.checks if not c["ok"]]
    assert len(script.checks) == 9 and (tmp_path / "gpu_check.json").exists()


def test_the_wsgi_error_mapping_answers_a_cuda_oom_503(gpu: tuple[FakeNvml, FakeTorch]) -> None:
    from pathoai_memobs.integrations.wsgi import MemoryErrorMiddleware as WsgiErrors

    _, torch = gpu

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        torch.empty(64 * GIB)  # more than the device: CUDA's OOM
        return [b"never"]

    got: list[Any] = []
    before = CAUGHT.totals().get("0", 0)
    body = WsgiErrors(app)({"REQUEST_METHOD": "POST"}, lambda s, h, e=None: got.append((s, h)))
    assert got[0][0] == "503 Service Unavailable" and ("retry-after", "2") in got[0][1]
    assert b"insufficient_gpu_memory" in b"".join(body)
    assert CAUGHT.totals()["0"] == before + 1

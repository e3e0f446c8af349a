"""OpenTelemetry over OTLP, received by real OTLP receivers inside the test (gRPC and HTTP)."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)

from pathoai_memobs import (
    GarbageCollectionManager,
    InsufficientMemoryError,
    MemoryConfig,
    MemoryMonitor,
    SessionManager,
)
from pathoai_memobs.exporters.catalogue import otel_names
from pathoai_memobs.exporters.otel import instrument, setup_otlp
from pathoai_memobs.gc_pauses import PAUSE_BUCKETS
from pathoai_memobs.tools.stack import terminate

from .promstack import free_port


class Received:
    """Every ExportMetricsServiceRequest a receiver got."""

    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.event = threading.Event()

    def add(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        self.requests.append(request)
        self.event.set()

    def metrics(self) -> dict[str, Any]:
        """The latest data of each metric name, with the resource attributes."""
        out: dict[str, Any] = {}
        for req in self.requests:
            for rm in req.resource_metrics:
                resource = {a.key: a.value.string_value for a in rm.resource.attributes}
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        out[m.name] = (m, resource)
        return out


class GrpcReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, received: Received, delay_s: float = 0.0) -> None:
        self.received, self.delay_s = received, delay_s

    def Export(self, request: Any, context: Any) -> Any:
        time.sleep(self.delay_s)
        self.received.add(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received, GrpcReceiver]]:
    received = Received()
    servicer = GrpcReceiver(received)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", received, servicer
    server.stop(0)


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = metrics_service_pb2.ExportMetricsServiceRequest()
            request.ParseFromString(body)
            assert self.path == "/v1/metrics"
            received.add(request)
            reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def otel_env(monkeypatch: pytest.MonkeyPatch, protocol: str, endpoint: str) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "pathoai-test")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")


def the_state() -> tuple[MemoryMonitor, SessionManager, GarbageCollectionManager]:
    sessions = SessionManager(top_k=3)
    monitor = MemoryMonitor(MemoryConfig(), sessions=sessions)
    for i in range(4):
        sid = sessions.create_session()
        sessions.update_session(sid, image=np.ones((i + 1) << 20, np.uint8))
    sessions.delete_session(sid)
    return monitor, sessions, GarbageCollectionManager()


def value(metric: Any, **attrs: Any) -> float:
    kind = metric.WhichOneof("data")
    for p in getattr(metric, kind).data_points:
        got = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in p.attributes}
        if got == attrs:
            return p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
    raise AssertionError(f"no point with {attrs} in {metric.name}")


def check_received(
    received: Received, monitor: MemoryMonitor, sessions: SessionManager, before: float
) -> None:
    """What the receiver got; ``before``: the used ratio read just before the export."""
    got = received.metrics()
    assert set(got) <= otel_names(), set(got) - otel_names()  # nothing beyond the catalogue
    reading = monitor.sample()
    prefix = "container.memory" if reading.source.startswith("cgroup") else "system.memory"
    for name, unit in {
        f"{prefix}.utilization": "1",
        "process.memory.usage": "By",
        "cpython.gc.collections": "{collection}",
        "cpython.gc.collected_objects": "{object}",
        "pathoai.gc.duration": "s",
        "pathoai.session.active": "{session}",
        "pathoai.session.memory": "By",
        "pathoai.memory.emergency_threshold": "By",
        "pathoai.requests.rejected": "{request}",
    }.items():
        assert name in got, f"{name} not received; got {sorted(got)}"
        assert got[name][0].unit == unit, name
    resource = got["pathoai.session.active"][1]
    assert resource["service.name"] == "pathoai-test"
    assert resource["deployment.environment"] == "ci"
    agg = sessions.aggregates()
    assert value(got["pathoai.session.active"][0]) == agg.active == 3
    assert value(got["pathoai.session.memory"][0]) == agg.total_bytes
    assert (
        value(got["pathoai.session.removed"][0], **{"pathoai.session.removal_reason": "explicit"})
        == 1
    )
    assert value(got["pathoai.requests.rejected"][0]) == monitor.requests_rejected_total == 1
    low, high = sorted((before, reading.used_ratio))  # read at the export, between the two
    assert low - 0.01 <= value(got[f"{prefix}.utilization"][0]) <= high + 0.01
    hist = got["pathoai.gc.duration"][0].histogram
    assert list(hist.data_points[0].explicit_bounds) == list(PAUSE_BUCKETS)  # seconds, not ms
    gens = {p.attributes[0].value.int_value for p in hist.data_points}
    assert 2 in gens
    top = got["pathoai.session.top.memory"][0]
    fps = {p.attributes[0].value.string_value for p in top.gauge.data_points}
    assert fps == {fp for fp, _ in agg.top}


def exercise(monitor: MemoryMonitor) -> None:
    gc.collect()
    with pytest.raises(InsufficientMemoryError):
        monitor.check_memory_available(1 << 40)  # a petabyte: refused


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otlp_receiver_gets_every_instrument(
    protocol: str,
    monkeypatch: pytest.MonkeyPatch,
    grpc_receiver: tuple[str, Received, GrpcReceiver],
    http_receiver: tuple[str, Received],
) -> None:
    endpoint, received = (
        grpc_receiver[:2] if protocol == "grpc" else http_receiver
    )  # one protocol each run
    otel_env(monkeypatch, protocol, endpoint)
    monitor, sessions, gcm = the_state()
    provider = setup_otlp()
    try:
        instrument(provider, monitor=monitor, sessions=sessions, gc_manager=gcm)
        exercise(monitor)
        before = monitor.sample().used_ratio
        assert provider.force_flush(10_000)
        assert received.event.wait(10)
        check_received(received, monitor, sessions, before)
    finally:
        provider.shutdown()


def test_a_collector_that_is_down_or_slow_never_blocks_requests(
    monkeypatch: pytest.MonkeyPatch, grpc_receiver: tuple[str, Received, GrpcReceiver]
) -> None:
    endpoint, _, servicer = grpc_receiver
    servicer.delay_s = 3.0  # slow: each export waits 3 s
    otel_env(monkeypatch, "grpc", endpoint)
    monitor, sessions, gcm = the_state()
    provider = setup_otlp()
    instrument(provider, monitor=monitor, sessions=sessions, gc_manager=gcm)
    try:
        time.sleep(0.5)  # an export is now in flight, stuck at the receiver
        worst = 0.0
        for _ in range(200):
            t0 = time.perf_counter()
            monitor.check_memory_available(1)
            sessions.update_session(sessions.create_session(), x=1)
            worst = max(worst, time.perf_counter() - t0)
        assert worst < 0.05, worst  # the request path never waits for the exporter
    finally:
        t0 = time.monotonic()
        provider.shutdown(timeout_millis=5000)
        assert time.monotonic() - t0 < 10
    # and down: nothing listens there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    provider = setup_otlp()
    instrument(provider, monitor=monitor, sessions=sessions, gc_manager=gcm)
    try:
        t0 = time.perf_counter()
        for _ in range(200):
            monitor.check_memory_available(1)
        assert time.perf_counter() - t0 < 1.0
    finally:
        provider.shutdown(timeout_millis=3000)


def test_bad_protocol_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathoai_memobs import ConfigError

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        setup_otlp()


def test_opentelemetry_is_imported_only_when_used() -> None:
    code = (
        "import sys, pathoai_memobs; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_each_gunicorn_worker_exports_after_the_fork(http_receiver: tuple[str, Received]) -> None:
    import os

    from .test_multiprocess import ROOT, wait_until

    endpoint, received = http_receiver
    env = dict(
        os.environ,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_METRIC_EXPORT_INTERVAL="200",
        OTEL_SERVICE_NAME="pathoai-gunicorn",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{free_port()}",
            "-c",
            "tests/apps/gunicorn_otel.py",
            "--log-level",
            "warning",
            "tests.apps.gunicorn_otel:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def pids() -> set[int]:
        found = set()
        for req in list(received.requests):
            for rm in req.resource_metrics:
                attrs = {a.key: a.value for a in rm.resource.attributes}
                if attrs["service.name"].string_value == "pathoai-gunicorn":
                    found.add(attrs["process.pid"].int_value)
        return found

    try:
        wait_until(lambda: len(pids()) >= 2, timeout=30)
    finally:
        terminate(proc, 20)
    assert proc.pid not in pids()  # the workers export, not the master

"""The metric catalogue is the one table behind both exporters and docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from pathoai_memobs import GarbageCollectionManager, MemoryConfig, MemoryMonitor, SessionManager
from pathoai_memobs.exporters.catalogue import BY_NAME, CATALOGUE, otel_names
from pathoai_memobs.exporters.otel import instrument
from pathoai_memobs.reading import Reading, combine

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "metrics.md").read_text()
GIB = 1 << 30


def test_docs_catalogue_lists_every_metric() -> None:
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in DOC.splitlines()
        if line.startswith("| `pathoai_")
    }
    assert set(rows) == set(BY_NAME)
    for name, line in rows.items():
        assert f"| {BY_NAME[name].kind} |" in line, name


def _doc_otel_rows() -> dict[str, str]:
    """OpenTelemetry names in the first cell of each row of the docs' OpenTelemetry table."""
    section = DOC[DOC.index("| OpenTelemetry |") :]
    rows: dict[str, str] = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        first = re.sub(r"`[a-z0-9_.]+`:", "", line.split("|")[1])
        for name in re.findall(r"`([a-z][a-z0-9_.]*)`", first):
            rows[name] = line
    return rows


def test_docs_list_every_opentelemetry_instrument_with_its_unit_and_kind() -> None:
    rows = _doc_otel_rows()
    assert set(rows) == otel_names()
    kinds = {"gauge": "gauge", "updown": "updowncounter", "counter": "counter"}
    kinds["histogram"] = "histogram"
    for metric in CATALOGUE:
        for spec in metric.otel:
            cells = [c.strip() for c in rows[spec.name].split("|")]
            assert cells[2] == spec.unit and cells[3] == kinds[spec.instrument], spec.name
            assert f"`{metric.name}`" in cells[5], f"{spec.name}: the row omits {metric.name}"
            attributes = cells[4]
            for attribute in (*spec.attributes, *(k for k, _ in spec.fixed)):
                assert f"`{attribute}`" in attributes, (spec.name, attribute)


class Fixed:
    """A reading from a cgroup or from the host, as the OpenTelemetry names depend on it."""

    def __init__(self, cgroup: bool) -> None:
        self.cgroup = cgroup

    def sample(self) -> Reading:
        if self.cgroup:
            return combine(8 * GIB, 6 * GIB, "cgroup_v2", 2 * GIB, GIB, 0, 0.0, 0.0)
        return combine(8 * GIB, 6 * GIB, None, None, None, 0, 0.0, 0.0)


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup", "host"])
def test_every_instrument_registered_is_declared_and_every_declaration_in_scope_registered(
    cgroup: bool,
) -> None:
    sessions = SessionManager()
    monitor = MemoryMonitor(MemoryConfig(), sampler=Fixed(cgroup), sessions=sessions)
    reader = InMemoryMetricReader()
    out = instrument(
        MeterProvider(metric_readers=[reader]),
        monitor=monitor,
        sessions=sessions,
        gc_manager=GarbageCollectionManager(),
    )
    registered = set(out.names)
    assert len(registered) == len(out.names)  # one instrument per name
    assert registered <= otel_names()
    scope = "cgroup" if cgroup else "host"
    in_scope = {s.name for m in CATALOGUE for s in m.otel if s.scope in ("any", scope)}
    assert registered == in_scope | {"process.memory.usage"}
    exported = {
        metric.name
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert exported <= registered
    units = {s.name: s.unit for m in CATALOGUE for s in m.otel}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                assert metric.unit == units.get(metric.name, "By"), metric.name

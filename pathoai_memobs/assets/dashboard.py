"""The Grafana dashboards as code: a fleet row over every instance the variables select,
then one instance's rows (``dashboard_host``, ``dashboard_runtime``).

A dashboard is data: every panel's PromQL, unit and layout sit in one reviewable place, and
the tests run every query against a real Prometheus. Rendered as sorted, indented JSON so
the committed files diff cleanly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .dashboard_host import host_rows
from .dashboard_runtime import runtime_rows
from .options import AssetOptions
from .panels import DS, SEL, Layout, panel, target, timeseries


def _query_variable(name: str, label: str, query: str, all_value: str) -> dict[str, Any]:
    return {
        "type": "query",
        "datasource": DS,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": all_value,
        "current": {"text": "All", "value": "$__all"},
        "name": name,
        "label": label,
        "definition": query,
        "query": {"query": query, "refId": name},
    }


def variables(options: AssetOptions) -> list[dict[str, Any]]:
    """Data source, then job (only those the options select), namespace and instance."""
    scope = f'job=~"{options.job}"' + (
        f', namespace="{options.namespace}"' if options.namespace else ""
    )
    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
        },
        _query_variable("job", "Job", f"label_values(pathoai_memobs_build_info{{{scope}}}, job)", ".+"),
        # ".*": outside Kubernetes there is no namespace label, and "All" must still match
        _query_variable("namespace", "Namespace",
                        'label_values(pathoai_memobs_build_info{job=~"$job"}, namespace)', ".*"),
        _query_variable("instance", "Instance",
                        'label_values(pathoai_memobs_build_info{job=~"$job", '
                        'namespace=~"$namespace"}, instance)', ".+"),
        {
            "type": "custom",
            "name": "generation",
            "label": "GC generation",
            "query": "0,1,2",
            "multi": True,
            "includeAll": True,
            "hide": 2,
            "current": {"text": "All", "value": "$__all"},
            "options": [{"text": g, "value": g, "selected": False} for g in ("0", "1", "2")],
        },
    ]  # fmt: skip


def fleet_row(lay: Layout) -> None:
    """Every selected instance at once: who is fullest, what the fleet holds and refuses."""
    lay.row("Fleet")
    ranked = panel(
        "bargauge",
        "Instances by memory used",
        "percentunit",
        [
            target(
                f"sort_desc(max by (namespace, instance) (pathoai_memory_used_ratio{{{SEL}}}))",
                "{{instance}}",
                instant=True,
            )
        ],
        "Each instance's used share of its limit, fullest first: where to look first.",
        options={"orientation": "horizontal", "displayMode": "gradient"},
    )
    ranked["fieldConfig"]["defaults"].update(min=0, max=1)
    lay.add(ranked, w=8, h=8)
    worst = panel(
        "stat",
        "Worst instance",
        "percentunit",
        [
            target(
                f"topk(1, max by (namespace, instance) (pathoai_memory_used_ratio{{{SEL}}}))",
                "{{instance}}",
                instant=True,
            )
        ],
        "The fullest instance now, by name.",
        options={"textMode": "value_and_name", "colorMode": "background"},
    )
    lay.add(worst, w=4, h=8)
    lay.add(
        timeseries(
            "Sessions across the fleet",
            "short",
            [
                target(f"sum by (job) (pathoai_sessions_active{{{SEL}}})", "sessions {{job}}"),
                target(f"count by (job) (pathoai_memory_used_ratio{{{SEL}}})", "instances {{job}}"),
            ],
            "Live sessions summed over the selected instances, and how many instances there are.",
            min=0,
        ),
        w=6,
    )
    lay.add(
        timeseries(
            "Refusals across the fleet",
            "reqps",
            [
                target(f"sum by (job) (rate(pathoai_requests_rejected_total{{{SEL}}}[$__rate_interval]))",
                       "refused/s {{job}}"),
                target(f"sum by (job) (rate(pathoai_requests_total{{{SEL}}}[$__rate_interval]))",
                       "requests/s {{job}}"),
            ],
            "Requests that needed memory, and those refused (503 with Retry-After), summed.",
            min=0,
        ),
        w=6,
    )  # fmt: skip


def overview(options: AssetOptions) -> dict[str, Any]:
    lay = Layout()
    fleet_row(lay)
    host_rows(lay)
    runtime_rows(lay)
    return {
        "uid": "pathoai-memory-overview",
        "title": "PathoAI memory overview",
        "description": "pathoai-memobs: the fleet, then memory, pressure, sessions, GC and "
        "emergency cleanup per instance.",
        "tags": ["pathoai", "memory"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables(options)},
        "annotations": {"list": []},
        "panels": lay.panels,
    }


DASHBOARDS: dict[str, Callable[[AssetOptions], dict[str, Any]]] = {
    "pathoai-memory-overview.json": overview,
}


def render(options: AssetOptions) -> dict[str, str]:
    """Each dashboard's JSON text, by file name."""
    return {
        name: json.dumps(make(options), indent=2, sort_keys=True) + "\n"
        for name, make in DASHBOARDS.items()
    }

"""Kubernetes objects for the Prometheus Operator and the Grafana sidecar: a PrometheusRule
holding the same rules, a ServiceMonitor and a PodMonitor for the exporter's ``metrics``
port, and a ConfigMap of the dashboards labelled ``grafana_dashboard`` for the sidecar.

Written as YAML text without a YAML library: mappings and lists of plain values, strings
quoted as JSON (which YAML reads as double-quoted scalars), multi-line text as ``|`` blocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .options import AssetOptions

API = "monitoring.coreos.com/v1"


def dump(value: Any, indent: int = 0) -> str:
    """``value`` (dicts, lists, str, int, bool) as block YAML lines at ``indent``."""
    pad = " " * indent
    if isinstance(value, Mapping):
        lines = []
        for key, item in value.items():
            head = f"{pad}{json.dumps(str(key)) if _needs_quotes(str(key)) else key}:"
            lines.append(_item(head, item, indent))
        return "".join(lines)
    if isinstance(value, list):
        return "".join(_item(f"{pad}-", item, indent) for item in value)
    raise TypeError(f"dump takes a mapping or a list, got {type(value).__name__}")


def _item(head: str, item: Any, indent: int) -> str:
    """One mapping entry or list element: ``head`` is ``key:`` or ``-``."""
    if isinstance(item, (Mapping, list)):
        if not item:
            return f"{head} {'{}' if isinstance(item, Mapping) else '[]'}\n"
        body = dump(item, indent + 2)
        return f"{head} {body.lstrip()}" if head.endswith("-") else f"{head}\n{body}"
    if isinstance(item, str) and "\n" in item:
        pad = " " * (indent + 2)
        lines = item.rstrip("\n").split("\n")
        return f"{head} |\n" + "".join(f"{pad}{line}\n" if line else "\n" for line in lines)
    return f"{head} {_scalar(item)}\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _needs_quotes(key: str) -> bool:
    return not key.replace("_", "").replace("-", "").replace(".", "").replace("/", "").isalnum()


def _metadata(options: AssetOptions, name: str, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if options.namespace:
        meta["namespace"] = options.namespace
    meta["labels"] = {"app.kubernetes.io/name": options.app, **labels, **options.labels}
    return meta


def prometheus_rule(options: AssetOptions, rules_text: str) -> str:
    """The rules file's groups as a PrometheusRule's ``spec`` (the file's text, indented)."""
    head = dump({"apiVersion": API, "kind": "PrometheusRule",
                 "metadata": _metadata(options, f"{options.app}-memory")})  # fmt: skip
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in rules_text.splitlines())
    return head + "spec:\n" + body


def _monitor(options: AssetOptions, kind: str, endpoints: str) -> str:
    """A ServiceMonitor or PodMonitor: the ``metrics`` port of what carries the app label."""
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app.kubernetes.io/name": options.app}},
        endpoints: [{"port": "metrics", "path": "/metrics", "interval": options.scrape_interval}],
    }
    if options.namespace:
        spec["namespaceSelector"] = {"matchNames": [options.namespace]}
    return dump({"apiVersion": API, "kind": kind,
                 "metadata": _metadata(options, options.app), "spec": spec})  # fmt: skip


def service_monitor(options: AssetOptions) -> str:
    return _monitor(options, "ServiceMonitor", "endpoints")


def pod_monitor(options: AssetOptions) -> str:
    """For pods without a Service (batch workers, sidecars): the same port, by pod label."""
    return _monitor(options, "PodMonitor", "podMetricsEndpoints")


def dashboards_config_map(options: AssetOptions, dashboards: Mapping[str, str]) -> str:
    """The dashboards' JSON in a ConfigMap the Grafana sidecar loads (``grafana_dashboard``)."""
    meta = _metadata(options, f"{options.app}-dashboards", grafana_dashboard="1")
    return dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                 "data": dict(sorted(dashboards.items()))})  # fmt: skip


def objects(
    options: AssetOptions, rules_text: str, dashboards: Mapping[str, str]
) -> dict[str, str]:
    """Every Kubernetes object, by file name."""
    return {
        "prometheusrule.yaml": prometheus_rule(options, rules_text),
        "servicemonitor.yaml": service_monitor(options),
        "podmonitor.yaml": pod_monitor(options),
        "grafana-dashboards.yaml": dashboards_config_map(options, dashboards),
    }

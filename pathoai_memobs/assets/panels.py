"""The dashboard's building blocks: a 24-column grid layout, and panels and targets as the
plain dictionaries Grafana's JSON model is made of."""

from __future__ import annotations

from typing import Any

#: The selector every panel's query carries: the dashboard's job, namespace and instance
#: variables (namespace matches series without one too, outside Kubernetes).
SEL = 'job=~"$job", namespace=~"$namespace", instance=~"$instance"'
DS = {"type": "prometheus", "uid": "${datasource}"}

Panel = dict[str, Any]


class Layout:
    """Places panels left to right on a 24-column grid, rows top to bottom."""

    def __init__(self) -> None:
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[Panel] = []

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def add(self, panel: Panel, w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend, **extra}


def panel(
    kind: str,
    title: str,
    unit: str,
    targets: list[dict[str, Any]],
    description: str,
    **options: Any,
) -> Panel:
    refs = "ABCDEFGH"
    for i, t in enumerate(targets):
        t["refId"] = refs[i]
    p: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    p.update(options)
    return p


def timeseries(
    title: str, unit: str, targets: list[dict[str, Any]], description: str, **defaults: Any
) -> Panel:
    p = panel("timeseries", title, unit, targets, description)
    p["fieldConfig"]["defaults"].update(defaults)
    p["options"] = {
        "legend": {"displayMode": "list", "placement": "bottom"},
        "tooltip": {"mode": "multi"},
    }
    return p


def heatmap(title: str, unit: str, expr: str, description: str, **extra: Any) -> Panel:
    p = panel("heatmap", title, unit, [target(expr, "{{le}}", format="heatmap")], description)
    p["options"] = {
        "calculate": False,
        "yAxis": {"unit": unit},
        "cellGap": 1,
        "color": {"scheme": "Oranges", "mode": "scheme"},
    }
    p.update(extra)
    return p

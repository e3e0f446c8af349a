"""The operations assets, rendered for one installation: alert and recording rules with
their promtool tests, the Alertmanager routing, the Grafana dashboards and provisioning,
and on request the Kubernetes objects (PrometheusRule, ServiceMonitor, PodMonitor, the
dashboards' ConfigMap).

``render`` is pure (options in, file texts out); writing them is
``pathoai_memobs.tools.assets.write``. The repository's ``alerts/`` and ``grafana/`` are
``render(AssetOptions())``, checked by a test that renders them again.
"""

from __future__ import annotations

from typing import NamedTuple

from . import dashboard, kubernetes, rules
from .options import DEFAULT_FOR, AssetOptions, AssetOptionsError, check, parse_pairs

__all__ = ["DEFAULT_FOR", "AssetOptions", "AssetOptionsError", "Assets", "parse_pairs", "render"]


class Assets(NamedTuple):
    files: dict[str, str]  # path relative to the output folder -> text
    notes: list[str]  # what the user should know (e.g. unit tests left out)


def render(options: AssetOptions | None = None) -> Assets:
    """Every asset for ``options`` (the shipped ones by default); AssetOptionsError first
    if the options cannot make valid assets, so nothing is rendered half."""
    options = check(options or AssetOptions())
    parts = {
        "alerts/" + rules.RULES: rules.rules(options),
        "alerts/" + rules.TESTS: rules.tests(options),
        "alerts/" + rules.ROUTING: rules.routing(options),
    }
    files = {path: r.text for path, r in parts.items()}
    notes = [note for r in parts.values() for note in r.notes]
    boards = dashboard.render(options)
    files.update({f"grafana/dashboards/{name}": text for name, text in boards.items()})
    provisioning = {"dashboards": "grafana-dashboards-provider.yml",
                    "datasources": "grafana-datasource.yml"}  # fmt: skip
    for kind, name in provisioning.items():
        files[f"grafana/provisioning/{kind}/pathoai.yml"] = rules.template(name)
    if options.kubernetes:
        objects = kubernetes.objects(options, files["alerts/" + rules.RULES], boards)
        files.update({f"kubernetes/{name}": text for name, text in objects.items()})
    return Assets(dict(sorted(files.items())), notes)

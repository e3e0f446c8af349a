"""What differs between installations of the assets, validated in one place.

``AssetOptions`` holds the job/namespace selector, the runbook base URL, the extra labels on
every Kubernetes object, the alerts' ``for:`` windows and whether to emit the Prometheus
Operator objects. ``check`` refuses bad values with every problem named at once, before
anything is rendered, so nothing is half-written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Every alert the rules hold, with its ``for:`` window as shipped.
DEFAULT_FOR: Mapping[str, str] = {
    "PathoAIMemoryWarning": "5m",
    "PathoAIMemoryCritical": "2m",
    "PathoAIMemoryEmergency": "1m",
    "PathoAIMonitorStale": "2m",
    "PathoAIMonitorAbsent": "2m",
    "PathoAISessionNearLimit": "10m",
    "PathoAIGCPausesLong": "10m",
    "PathoAICleanupCallbackFailing": "1m",
    "PathoAIRequestsRejected": "10m",
    "PathoAISpillDiskNearlyFull": "5m",
    "PathoAIOOMKilled": "1m",
    "PathoAIGpuMemoryCritical": "5m",
    "PathoAIGpuMemoryEmergency": "1m",
    "PathoAIGpuOutOfMemory": "1m",
}

_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
_UNITS = {"y": "year", "w": "week", "d": "day", "h": "hour", "m": "minute", "s": "second",
          "ms": "millisecond"}  # fmt: skip
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"  # an optional DNS prefix, then the name
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_UNSAFE = set("\"'\\\n\r\t`")  # would break out of a PromQL string or a YAML scalar


class AssetOptionsError(ValueError):
    """Options that cannot make valid assets; the message names every problem."""


@dataclass(frozen=True)
class AssetOptions:
    """What the assets are rendered for; the defaults make the committed files."""

    job: str = "pathoai.*"  # a regular expression for the scrape job's name
    namespace: str | None = None  # the Kubernetes namespace: selectors and objects
    runbook_url: str = "docs/runbooks.md"  # each alert links <this>#<alert name, lower case>
    labels: Mapping[str, str] = field(default_factory=dict)  # on every Kubernetes object
    for_windows: Mapping[str, str] = field(default_factory=dict)  # alert name -> duration
    kubernetes: bool = False  # also PrometheusRule, ServiceMonitor, PodMonitor, ConfigMap
    app: str = "pathoai-memobs"  # objects' name, and the app label the monitors select
    scrape_interval: str = "15s"  # the monitors' scrape interval

    def window(self, alert: str) -> str:
        """The ``for:`` window in force for ``alert``."""
        return self.for_windows.get(alert, DEFAULT_FOR[alert])

    def changed_windows(self) -> set[str]:
        """Alerts whose window differs from the shipped one (their unit tests do not fit)."""
        return {a for a, w in self.for_windows.items() if w != DEFAULT_FOR.get(a)}


def seconds(duration: str) -> float:
    """A Prometheus duration (``1h30m``) in seconds; ValueError where it is not one."""
    match = _DURATION.match(duration)
    if not duration or match is None:
        raise ValueError(f"{duration!r} is not a Prometheus duration such as 5m or 1h30m")
    scale = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for part in match.groups():
        if part:
            unit = "ms" if part.endswith("ms") else part[-1]
            total += int(part[: -len(unit)]) * scale[unit]
    return total


def in_words(duration: str) -> str:
    """``5m`` -> ``5 minutes``, ``1h30m`` -> ``1 hour 30 minutes`` (for descriptions)."""
    words = []
    for part in re.findall(r"\d+(?:ms|[ywdhms])", duration):
        number = int(re.match(r"\d+", part).group())  # type: ignore[union-attr]
        unit = _UNITS[part[len(str(number)) :]]
        words.append(f"{number} {unit}{'' if number == 1 else 's'}")
    return " ".join(words)


def _problems(o: AssetOptions) -> list[str]:
    out: list[str] = []
    if not isinstance(o.job, str) or not o.job or _UNSAFE & set(o.job):
        out.append(f"job must be a non-empty regular expression without quotes, backslashes "
                   f"or newlines, got {o.job!r}")  # fmt: skip
    else:
        try:
            re.compile(o.job)
        except re.error as exc:
            out.append(f"job {o.job!r} is not a regular expression: {exc}")
    if o.namespace is not None and not (
        isinstance(o.namespace, str) and _DNS_LABEL.match(o.namespace)
    ):
        out.append(f"namespace must be a Kubernetes name (a-z, 0-9, -), got {o.namespace!r}")
    if not isinstance(o.app, str) or not _DNS_LABEL.match(o.app):
        out.append(f"app must be a Kubernetes name (a-z, 0-9, -), got {o.app!r}")
    url = o.runbook_url
    if not isinstance(url, str) or not url or _UNSAFE & set(url) or " " in url or "#" in url:
        out.append(f"runbook_url must be a URL or path without spaces, quotes or '#', got {url!r}")
    for key, value in dict(o.labels).items():
        if not isinstance(key, str) or not _LABEL_NAME.match(key):
            out.append(f"label name {key!r} is not a Kubernetes label name")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            out.append(f"label {key}={value!r}: the value is not a Kubernetes label value")
    for alert, window in dict(o.for_windows).items():
        if alert not in DEFAULT_FOR:
            out.append(f"no alert named {alert!r} (known: {', '.join(DEFAULT_FOR)})")
        out.extend(_duration_problem(f"for: window of {alert}", window))
    out.extend(_duration_problem("scrape_interval", o.scrape_interval))
    if not isinstance(o.kubernetes, bool):
        out.append(f"kubernetes must be a bool, got {o.kubernetes!r}")
    return out


def _duration_problem(what: str, value: object) -> list[str]:
    try:
        if not isinstance(value, str) or seconds(value) <= 0:
            raise ValueError
    except ValueError:
        return [f"{what} must be a Prometheus duration > 0 such as 5m, got {value!r}"]
    return []


def check(options: AssetOptions) -> AssetOptions:
    """``options`` if they make valid assets; AssetOptionsError naming every problem."""
    problems = _problems(options)
    if problems:
        raise AssetOptionsError("; ".join(problems))
    return options


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """``["a=b", ...]`` from the command line as a mapping; AssetOptionsError on ``a`` alone."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AssetOptionsError(f"{what} must be NAME=VALUE, got {item!r}")
        pairs[key] = value
    return pairs

"""The alert and recording rules, their promtool unit tests and the Alertmanager routing,
rendered from the package's templates for one installation's options.

Templates mark what varies with ``@{name}`` tokens (``@{for:ALERT}``, ``@{runbook}``...);
``fill`` replaces them and refuses a token it has no value for. Unit tests written for a
shipped ``for:`` window do not hold for another one: those groups are left out of the test
file, and the file's head and the render's notes say which.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import NamedTuple

from .options import DEFAULT_FOR, AssetOptions, in_words

_TOKEN = re.compile(r"@\{([\w:]+)\}")
RULES, TESTS, ROUTING = (
    "pathoai-memory.rules.yml",
    "pathoai-memory.rules.test.yml",
    "alertmanager.yml",
)


class Rendered(NamedTuple):
    text: str
    notes: list[str]  # what the user should know about this output (tests left out)


def template(name: str) -> str:
    """One of the package's templates (read-only package data)."""
    return (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with every ``@{name}`` replaced; KeyError names a token without a value."""

    def one(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise KeyError(f"template token @{{{match.group(1)}}} has no value")
        return values[match.group(1)]

    return _TOKEN.sub(one, text)


def example_job(pattern: str) -> str | None:
    """A job name ``pattern`` matches in full, for the absent-target test; None if the
    pattern is not a literal with an optional ``.*``/``.+`` tail."""
    stem = re.sub(r"\.[*+]$", "", pattern)
    for candidate in (stem, stem + "x"):
        if re.fullmatch(r"[A-Za-z0-9_:-]+", candidate) and re.fullmatch(pattern, candidate):
            return candidate
    return None


def values(options: AssetOptions) -> dict[str, str]:
    """Every token's value for ``options``."""
    ns = options.namespace
    selector = f'job=~"{options.job}"' + (f', namespace="{ns}"' if ns else "")
    job = example_job(options.job) or "unmatched"
    out = {
        "runbook": options.runbook_url,
        "up_selector": selector,
        "example_up_labels": f'job="{job}"' + (f',namespace="{ns}"' if ns else ""),
    }
    for alert in DEFAULT_FOR:
        out[f"for:{alert}"] = options.window(alert)
        out[f"for_words:{alert}"] = in_words(options.window(alert))
    return out


def _groups(text: str) -> tuple[str, list[str]]:
    """The test file's head and its test groups (each from a ``- name:`` line at column 0)."""
    parts = re.split(r"(?m)^(?=- name: )", text)
    return parts[0], parts[1:]


def _tested(group: str) -> set[str]:
    return set(re.findall(r"(?m)^\s+alertname: (\w+)$", group))


def rules(options: AssetOptions) -> Rendered:
    return Rendered(fill(template(RULES), values(options)), [])


def tests(options: AssetOptions) -> Rendered:
    """The promtool tests that hold for ``options``: groups testing a changed window, or
    the absent-target group where no job name for it can be derived, are left out."""
    head, groups = _groups(fill(template(TESTS), values(options)))
    changed = options.changed_windows()
    if example_job(options.job) is None:
        changed |= {"PathoAIMonitorAbsent"}
    kept = [g for g in groups if not (_tested(g) & changed)]
    if len(kept) == len(groups):
        return Rendered(head + "".join(kept), [])
    left = sorted({a for g in groups for a in _tested(g) & changed})
    note = (f"promtool tests left out for {', '.join(left)}: written for the shipped for: "
            "windows and job names; add your own")  # fmt: skip
    return Rendered(f"# {note}.\n" + head + "".join(kept), [note])


def routing(options: AssetOptions) -> Rendered:
    del options  # the routing is the same everywhere; receivers are the user's to set
    return Rendered(template(ROUTING), [])

"""Side-by-side measurement: medians, ratios against a baseline of the same run, RESULTS.md.

Candidate and baseline are timed in alternating rounds, so drift on a shared, noisy
machine hits both alike; the median of the rounds is reported, never the best.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\nEach section is rewritten by the command shown in it; numbers "
    "are medians of alternating rounds against the baseline measured in the same run.\n"
)


@dataclass
class Row:
    """One line of a results table."""

    case: str
    ours: float
    baseline: float | None
    unit: str  # "us", "ms", "MiB", "%", "KB"...
    target: str
    met: bool | None
    baseline_name: str = ""
    #: A rate (more is better): the ratio is ours over the baseline. Otherwise a time or a
    #: size (less is better): the baseline over ours. Either way, above 1x is ours ahead.
    higher_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        if self.higher_is_better:
            return None if not self.baseline else self.ours / self.baseline
        if self.baseline is None or self.ours == 0:
            return None
        return self.baseline / self.ours


def per_call(fn: Callable[[], object], number: int) -> float:
    """Seconds per call over ``number`` calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def interleaved(
    candidate: Callable[[], object],
    baseline: Callable[[], object] | None,
    *,
    number: int,
    rounds: int = 15,
) -> tuple[float, float | None]:
    """Median seconds per call of candidate and baseline, measured in alternating rounds."""
    ours: list[float] = []
    theirs: list[float] = []
    per_call(candidate, max(1, number // 10))  # warm caches and descriptors
    if baseline is not None:
        per_call(baseline, max(1, number // 10))
    for _ in range(rounds):
        ours.append(per_call(candidate, number))
        if baseline is not None:
            theirs.append(per_call(baseline, number))
    return statistics.median(ours), (statistics.median(theirs) if theirs else None)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| case | ours (median) | baseline (median) | baseline | ratio | target | met |",
        "|---|---:|---:|---|---:|---|:---:|",
    ]
    for r in rows:
        ratio = f"{r.ratio:.1f}x" if r.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        lines.append(
            f"| {r.case} | {_fmt(r.ours, r.unit)} | {_fmt(r.baseline, r.unit)} | "
            f"{r.baseline_name or '-'} | {ratio} | {r.target} | {met} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpus = os.cpu_count()
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.release()} "
        f"({platform.machine()}, {cpus} CPUs)"
    )


def write_section(suite: str, title: str, body: str, command: str) -> None:
    """Replace (or append) the section of ``suite`` in RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = (
        f"<!-- suite:{suite} -->\n## {title}\n\n"
        f"Command: `{command}` · {stamp} · {machine()}\n\n{body.strip()}\n<!-- /suite:{suite} -->"
    )
    pattern = re.compile(
        rf"<!-- suite:{re.escape(suite)} -->.*?<!-- /suite:{re.escape(suite)} -->", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)

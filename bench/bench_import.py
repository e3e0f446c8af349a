"""Cost of ``import pathoai_memobs`` (no exporters) over a bare interpreter, in fresh processes."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from .harness import Row, progress

TITLE = "import pathoai_memobs over a bare interpreter (targets: <= 60 ms, <= 6 MiB)"
ROUNDS = 21


# The child reports its own peak RSS (VmHWM): a forked child's ru_maxrss starts from
# the parent's high-water mark and would hide the difference.
PEAK = (
    "; print([int(l.split()[1]) for l in open('/proc/self/status') "
    "if l.startswith('VmHWM:')][0] * 1024)"
)


def _spawn(code: str) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one fresh ``python -c code``."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code + PEAK], capture_output=True, text=True, check=True
    ).stdout
    return time.perf_counter() - start, int(out.split()[-1])


def run() -> tuple[list[Row], str]:
    check = (
        "import sys, pathoai_memobs; "
        "heavy = [m for m in ('prometheus_client', 'opentelemetry', 'structlog', 'psutil', "
        "'numpy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    bare_t, ours_t, bare_m, ours_m = [], [], [], []
    for i in range(ROUNDS):
        if i % 5 == 0:
            progress(f"round {i + 1}/{ROUNDS}")
        t, m = _spawn("pass")
        bare_t.append(t)
        bare_m.append(m)
        t, m = _spawn(check)
        ours_t.append(t)
        ours_m.append(m)
    extra_ms = (statistics.median(ours_t) - statistics.median(bare_t)) * 1e3
    extra_mib = (statistics.median(ours_m) - statistics.median(bare_m)) / (1 << 20)
    rows = [
        Row(
            "import time over bare `python -c pass`",
            extra_ms,
            statistics.median(bare_t) * 1e3,
            "ms",
            "<= 60 ms",
            extra_ms <= 60,
            "bare interpreter start",
        ),
        Row(
            "peak RSS over bare interpreter",
            extra_mib,
            statistics.median(bare_m) / (1 << 20),
            "MiB",
            "<= 6 MiB",
            extra_mib <= 6,
            "bare interpreter RSS",
        ),
    ]
    notes = (
        "Each round also asserts that prometheus_client, opentelemetry, structlog, psutil "
        "and numpy stay unimported. The baseline column is the bare interpreter's own "
        "start time and RSS, for scale; ratio is not meaningful here."
    )
    return rows, notes

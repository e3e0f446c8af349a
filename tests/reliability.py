"""Counts what the bad-input, fault and soak suites tried, for docs/reliability.md.

The suites call ``tally``; ``python -m tests.reliability`` runs them with
``PATHOAI_RELIABILITY_OUT`` set (conftest writes the counts there at the end) and renders
docs/reliability.md from the counts and pytest's verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

COUNTS: Counter[str] = Counter()
SUITES = ("tests/test_bad_input.py", "tests/test_faults.py", "tests/test_soak.py")
ROOT = Path(__file__).resolve().parent.parent


def tally(key: str, n: int = 1) -> None:
    """Count one thing a suite tried or observed (``inputs``, ``typed_errors``, ...)."""
    COUNTS[key] += n


def write(path: str) -> None:
    Path(path).write_text(json.dumps(dict(COUNTS), sort_keys=True))


def main() -> int:
    out = ROOT / ".reliability.json"
    started = time.monotonic()
    env = dict(os.environ, PATHOAI_RELIABILITY_OUT=str(out))
    print("running the bad-input, fault and soak suites ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    verdict = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    counts = json.loads(out.read_text()) if out.exists() else {}
    out.unlink(missing_ok=True)
    rows = "\n".join(f"| {k.replace('_', ' ')} | {v:,} |" for k, v in sorted(counts.items()))
    doc = f"""# Reliability

What the standing bad-input, fault and soak suites try, and what the last run found.
Regenerate with `make reliability` (`python -m tests.reliability`); the same suites run in
`make test`.

- **Bad input** (`tests/test_bad_input.py`): hypothesis generates values of every kind
  (huge and negative numbers, NaN, infinities, bools, None, strings, bytes, containers) for
  every public entry point: config fields and variables, MB amounts, session ids, keys and
  values, callback names and priorities, GC generations and reasons and levels, eviction
  amounts and reasons, route tables, exporter options, monitor options and CLI flags. Each
  call either works or raises the documented type, and a refusal changes nothing.
- **Faults** (`tests/test_faults.py`): callbacks that raise, hang or allocate; source files
  that turn to garbage mid-run and come back; signals delivered during collections and
  during emergency runs (including a KeyboardInterrupt out of one); fork after start.
- **Soak** (`tests/test_soak.py`): 16 threads of mixed session operations, reservations,
  scrapes and collections for a bounded time, then exact totals.

Last run: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, {time.monotonic() - started:.0f} s,
pytest: `{verdict}`

| what | count |
|---|---:|
{rows}
"""
    (ROOT / "docs" / "reliability.md").write_text(doc)
    print(doc)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())

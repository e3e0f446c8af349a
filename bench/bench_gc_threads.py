"""The GC pause timer in a threaded process (target: collections/s and RSS within 10 % of
no timer at all).

Four threads make cyclic garbage for a few seconds, in a fresh interpreter per run (each
imports the library, so RSS compares like with like): with no callback in
``gc.callbacks``, with our compiled timer, and with a no-op Python callback
(what any Python timer costs: CPython may switch threads inside a collection while no
other can start). Runs alternate; medians of the rounds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from .harness import Row, progress

TITLE = "GC pause timer with 4 threads making garbage: collections/s and RSS"
ROUNDS = 3
SECONDS = 4.0
CHILD = r"""
import gc, json, sys, threading, time
mode, seconds = sys.argv[1], float(sys.argv[2])
from pathoai_memobs.gc_pauses import COMPILED, GC_PAUSES  # imported by every variant alike
if mode == "compiled":
    assert COMPILED and GC_PAUSES.install()
elif mode == "python":
    gc.callbacks.append(lambda phase, info: None)
stop = threading.Event()
def churn():
    while not stop.is_set():
        for _ in range(1000):
            a = {}; b = [a]; a["b"] = b  # a cycle only the collector frees
start = sum(s["collections"] for s in gc.get_stats())
threads = [threading.Thread(target=churn) for _ in range(4)]
t0 = time.perf_counter()
for t in threads: t.start()
time.sleep(seconds)
stop.set()
for t in threads: t.join()
elapsed = time.perf_counter() - t0
collections = sum(s["collections"] for s in gc.get_stats()) - start
with open("/proc/self/status") as f:
    rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
print(json.dumps({"per_s": collections / elapsed, "rss": rss}))
"""


def _once(mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(SECONDS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def run() -> tuple[list[Row], str]:
    runs: dict[str, list[dict[str, float]]] = {"off": [], "compiled": [], "python": []}
    for i in range(ROUNDS):
        for mode, results in runs.items():
            progress(f"round {i + 1}/{ROUNDS}: {mode}")
            results.append(_once(mode))
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("per_s", "rss")}
        for m, rs in runs.items()
    }
    off, ours, py = med["off"], med["compiled"], med["python"]
    mib = 1 << 20
    rows = [
        Row("collections/s, compiled timer", ours["per_s"], off["per_s"], "/s",
            ">= 0.9x of no timer", ours["per_s"] >= 0.9 * off["per_s"], "no timer",
            higher_is_better=True),
        Row("RSS at the end, compiled timer", ours["rss"] / mib, off["rss"] / mib, "MiB",
            "<= 1.1x of no timer", ours["rss"] <= 1.1 * off["rss"], "no timer"),
        Row("collections/s, a no-op Python callback", py["per_s"], off["per_s"], "/s",
            "(reported)", None, "no timer", higher_is_better=True),
        Row("RSS at the end, a no-op Python callback", py["rss"] / mib, off["rss"] / mib, "MiB",
            "(reported)", None, "no timer"),
    ]  # fmt: skip
    note = (
        f"{ROUNDS} rounds of {SECONDS:g} s per variant, each in a fresh interpreter, alternating. "
        "Ratio: for collections/s, ours over the baseline (1.0x means as many as without a "
        "timer); for RSS, the baseline over ours (above 1.0x means less memory). Without the "
        "compiled extension the library installs no Python callback (collections are counted "
        "from gc.get_stats, not timed), so the last two rows are what it avoids."
    )
    return rows, note

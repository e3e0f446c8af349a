"""Serving under pressure: the slide service in a real 2 GiB cgroup, the library against the
hand-tuned workaround, side by side in one run; and a burst of uploads to gunicorn workers
that share one reservation ledger, ten trials each.

Each configuration runs ``TRIALS_LOAD`` times (library and workaround alternating, so
both meet the same machine) for 60 s with 12 clients that upload (150-300 MiB), analyse,
read, pause and abandon half their sessions, obeying Retry-After
(tests/apps/slide_load.py); the rows are medians over the trials. The
workaround is what users write by hand: no library, one heavy request at a time and a cap
on live sessions (oldest dropped), the largest values that did not OOM here. Under
gunicorn both span the workers (files, tests/apps/workaround.py): a semaphore per worker
was OOM-killed 2 and 115 times, and a session cap per worker adds up (one each with four
workers was OOM-killed 6 times in 3 trials).

Then the stack run: the same service with an unbounded tile cache growing to 1440 MiB (memory
admission cannot free), scraped every 5 s by a real Prometheus with the shipped rules as
they are, routing to a real Alertmanager: Warning and Critical must fire, Stale must not.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from tests.apps.slide_load import run_load
from tests.apps.slide_stack import STALE, run_with_stack

from .harness import Row, progress

TITLE = "Serving under pressure: the slide service in 2 GiB, 12 clients"
SECONDS = float(os.environ.get("PATHOAI_BENCH_SERVING_S", "60"))
TRIALS_LOAD = int(os.environ.get("PATHOAI_BENCH_SERVING_TRIALS", "3"))
TRIALS = int(os.environ.get("PATHOAI_BENCH_BURST_TRIALS", "10"))
STACK_S = float(os.environ.get("PATHOAI_BENCH_STACK_S", "600"))
RAW = Path(__file__).with_name("serving_runs.json")
#: The stack run's pressure: 1440 MiB puts 2 GiB between critical (85 %) and the floor
#: (205 MB, 90 %). At 10 MiB/s the warning rung (80 %) is passed ~130 s in, and the run stays
#: above it for ~7 minutes, past Warning's for: of 5; at 5 MiB/s it was ~260 s in, and
#: whether Warning fired by 600 s came down to timing (it did in one run, not the next).
LEAK = {"SLIDE_LEAK_MB": "1440", "SLIDE_LEAK_MB_PER_S": "10"}


#: The workaround's live sessions in the container, by gunicorn workers (0: one uvicorn
#: process): the largest caps that were not OOM-killed in 3 trials of 60 s. One more was:
#: x2 with 4, 3 kills in one trial; x4 with 3, one kill in 3 trials (with 4, 14 in one).
SESSIONS = {0: 3, 2: 3, 4: 2}


def _config(workers: int) -> dict[str, str]:
    env = {"SLIDE_SESSIONS": str(SESSIONS[workers])}
    if workers:
        env["SLIDE_MODEL_MB"] = "100"  # four 300 MiB models alone would fill 2 GiB
    return env


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's numbers from several: medians, and sums of what must be 0 in every run."""
    out: dict[str, Any] = {}
    for key in ("goodput_per_min", "share_503", "p50_s", "p99_s", "lost"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    for key in ("oom_kills", "no_retry_after", "other_5xx"):
        out[key] = sum(r[key] for r in runs)
    return out


def _per_analysis(r: dict[str, Any]) -> float:
    return 60 / r["goodput_per_min"] if r["goodput_per_min"] else math.inf


def _rows(server: str, ours: dict[str, Any], hand: dict[str, Any]) -> list[Row]:
    lib_s, hand_s = _per_analysis(ours), _per_analysis(hand)
    good = ours["goodput_per_min"] >= 0.9 * hand["goodput_per_min"]
    name = "hand-tuned workaround"
    return [
        Row(f"{server}: seconds per completed analysis (60 / goodput)", lib_s, hand_s, "s",
            ">= 0.9x the workaround's goodput", good, name),
        Row(f"{server}: analyses completed per minute", ours["goodput_per_min"],
            hand["goodput_per_min"], "/min", "(informational)", None, name,
            higher_is_better=True),
        Row(f"{server}: requests meeting a lost session", ours["lost"], hand["lost"], "",
            "far fewer (none)", ours["lost"] <= hand["lost"] / 10, name),
        Row(f"{server}: OOM kills", ours["oom_kills"], hand["oom_kills"], "", "0",
            ours["oom_kills"] == 0, name),
        Row(f"{server}: share of 503s", 100 * ours["share_503"], 100 * hand["share_503"], "%",
            "(informational)", None, name),
        Row(f"{server}: p50 latency of a successful analysis", ours["p50_s"] or math.nan,
            hand["p50_s"] or math.nan, "s", "(informational)", None, name),
        Row(f"{server}: p99 latency of a successful analysis", ours["p99_s"] or math.nan,
            hand["p99_s"] or math.nan, "s", "(informational)", None, name),
        Row(f"{server}: 503s without Retry-After, other 5xx", ours["no_retry_after"]
            + ours["other_5xx"], hand["no_retry_after"] + hand["other_5xx"], "", "0",
            ours["no_retry_after"] + ours["other_5xx"] == 0, name),
    ]  # fmt: skip


def _stack_rows(r: dict[str, Any]) -> list[Row]:
    fired, after = r["fired_in_prometheus"], r["fired_after_s"]
    rows = []
    for name in ("PathoAIMemoryWarning", "PathoAIMemoryCritical"):
        notified = after[name]
        note = "notified" if notified is not None else "inhibited by Critical"
        rows.append(Row(f"stack: {name} fired (rules as shipped; {note})", int(fired[name]),
                        None, "yes=1", "1", fired[name]))  # fmt: skip
    stale = fired[STALE] or r["stale_pending_or_firing"]
    rows.append(Row(f"stack: {STALE} pending or fired", int(stale), None, "yes=1", "0", not stale))
    rows.append(Row("stack: OOM kills", r["oom_kills"], None, "", "0", r["oom_kills"] == 0))
    return rows


def run() -> tuple[list[Row], str]:
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for workers in (0, 2, 4):
        server = "uvicorn" if workers == 0 else f"gunicorn x{workers}"
        runs: dict[str, list[dict[str, Any]]] = {"library": [], "workaround": []}
        for trial in range(TRIALS_LOAD):
            for mode in ("library", "workaround"):
                progress(f"{server}, {mode}, trial {trial + 1}/{TRIALS_LOAD}: {SECONDS:.0f} s")
                r = run_load(mode, seconds=SECONDS, workers=workers, env=_config(workers),
                             seed=trial + 1)  # fmt: skip
                r.pop("stderr_tail")
                runs[mode].append(r)
        raw[server] = runs
        rows += _rows(server, _median(runs["library"]), _median(runs["workaround"]))
    bursts: dict[str, list[int]] = {}
    for workers in (2, 4):
        kills = []
        for trial in range(TRIALS):
            progress(f"burst of uploads, gunicorn x{workers}, trial {trial + 1}/{TRIALS}")
            r = run_load("library", seconds=12, workers=workers, burst=True,
                         env={"SLIDE_MODEL_MB": "50"}, seed=trial + 1)  # fmt: skip
            kills.append(r["oom_kills"] + (0 if r["alive"] else 1))
        bursts[f"gunicorn x{workers}"] = kills
        killed = sum(k > 0 for k in kills)
        case = f"burst of uploads, gunicorn x{workers}: trials OOM-killed"
        rows.append(Row(case, killed, None, f"of {TRIALS}", "0", killed == 0))
    raw["bursts"] = bursts
    progress(f"stack: Prometheus and Alertmanager watching a growing cache, {STACK_S:.0f} s")
    watched = run_with_stack(STACK_S, env=LEAK)
    watched.pop("stderr_tail")
    raw["stack"] = watched
    rows += _stack_rows(watched)
    RAW.write_text(json.dumps(raw, indent=1) + "\n")
    notes = (
        f"Medians of {TRIALS_LOAD} trials of {SECONDS:.0f} s per configuration (library and "
        "workaround alternating); OOM kills and 5xx are summed over the trials; statuses of "
        "every run in `bench/serving_runs.json`. Only what was answered within the trial "
        "counts: a request still unanswered when it ends is given up (before 2026-12-04 the "
        "clients waited for those, and the analyses finished in the seconds after, up to 15 "
        "per trial for the library, whose requests wait in line up to 10 s, were counted). "
        "Library: the slide service as the README sets it up (MemoryConfig.from_env, "
        "each request sized by what it holds: an upload its declared slide + 20 MiB, an "
        "analysis 2.25x its session's slide + 20 MiB (at most 700, declared as the largest), "
        "session= for the session budget and the session each request works on; a shared "
        "ledger under gunicorn). "
        "Workaround: one heavy request at a time and a cap on live sessions, oldest dropped "
        f"(uvicorn {SESSIONS[0]}, gunicorn x2 {SESSIONS[2]}, x4 {SESSIONS[4]}; under gunicorn "
        "both span the workers, with lock and slot files). "
        f"Stack run: {STACK_S:.0f} s, scrape every 5 s, a tile cache growing to "
        f"{LEAK['SLIDE_LEAK_MB']} MiB at {LEAK['SLIDE_LEAK_MB_PER_S']} MiB/s; "
        "`fired_after_s` in the raw file is when each notification reached the "
        "webhook. Under gunicorn the model cache is 100 MiB per "
        "worker. Each client keeps one keep-alive connection, so its requests stay with one "
        "worker, and the clients are spread evenly over the workers (as a sticky balancer "
        "would place them). The workaround's caps are the largest that were not OOM-killed "
        "in 3 trials of 60 s each; one session per worker (four with four workers) was "
        "OOM-killed 6 times in 3 trials (84 analyses a minute, but not a service that stays "
        "up)."
    )
    return rows, notes

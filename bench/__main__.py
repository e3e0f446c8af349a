"""``python -m bench [suite ...]``: run benchmark suites and rewrite their RESULTS.md sections."""

from __future__ import annotations

import argparse
import importlib
import sys

from .harness import table, write_section

SUITES = {
    "sample": "bench.bench_sample",
    "import": "bench.bench_import",
    "gc": "bench.bench_gc",
    "gcthreads": "bench.bench_gc_threads",
    "sessions": "bench.bench_sessions",
    "monitor": "bench.bench_monitor",
    "scrape": "bench.bench_scrape",
    "debug": "bench.bench_debug",
    "otel": "bench.bench_otel",
    "serving": "bench.bench_serving",
    "spill": "bench.bench_spill",
    "gpu": "bench.bench_gpu",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", choices=[*SUITES, []], help="default: all")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    chosen = args.suites or list(SUITES)
    command = "make bench" if not args.suites else "python -m bench " + " ".join(chosen)
    failed = []
    for name in chosen:
        module = importlib.import_module(SUITES[name])
        print(f"== {module.TITLE}", file=sys.stderr, flush=True)
        rows, notes = module.run()
        body = table(rows) + ("\n\n" + notes.strip() if notes.strip() else "")
        print(body + "\n", flush=True)
        if not args.no_write:
            write_section(name, module.TITLE, body, command)
        failed += [f"{name}: {r.case}" for r in rows if r.met is False]
    if failed:
        print("targets not met:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

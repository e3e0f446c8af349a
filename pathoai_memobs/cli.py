"""The ``pathoai-memobs`` command: ``watch`` prints live readings; ``check-config`` validates."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

from .config import MemoryConfig
from .exceptions import ConfigError
from .monitor import MemoryMonitor


def _watch(args: argparse.Namespace) -> int:
    config = MemoryConfig.from_env()
    monitor = MemoryMonitor(config)
    deadline = time.monotonic() + args.seconds
    while True:
        m = monitor.get_current_metrics()
        if args.json:
            print(json.dumps(asdict(m)), flush=True)
        else:
            print(
                f"{time.strftime('%H:%M:%S', time.localtime(m.timestamp))}  "
                f"source={m.source:<9}  used={m.used_mb:9.0f} MB / {m.total_mb:.0f} MB "
                f"({m.percent_used:5.1f} %)  available={m.available_mb:9.0f} MB  "
                f"rss={m.process_rss_mb:7.1f} MB",
                flush=True,
            )
        if time.monotonic() + args.interval > deadline:
            return 0
        time.sleep(args.interval)


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = MemoryConfig.from_env()
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(config.as_dict()))
    else:
        for name, value in config.as_dict().items():
            print(f"{name:36} {value!s:>10}  ({config.source_of(name)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pathoai-memobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch", help="print get_current_metrics() every interval")
    watch.add_argument("--seconds", type=float, default=5.0, help="how long to watch")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.set_defaults(func=_watch)
    check = sub.add_parser("check-config", help="validate the environment's configuration")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_check_config)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

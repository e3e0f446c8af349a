"""The ``pathoai-memobs`` command: demo, stack, assets, status, watch, check-config."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import NoReturn

from ..config import MemoryConfig
from ..exceptions import ConfigError
from ..monitor import MemoryMonitor
from ..pressure import rungs_in_order


def _seconds(text: str) -> float:
    """A finite number of seconds > 0 (argparse turns the ValueError into one line, exit 2)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0 or value > 1e7:
        raise ValueError(text)
    return value


def _duration(text: str) -> float:
    """Seconds >= 0 (0: until Ctrl-C)."""
    value = float(text)
    if not math.isfinite(value) or value < 0 or value > 1e7:
        raise ValueError(text)
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def _writable_file(text: str) -> str:
    """A file path whose folder exists (the demo writes its JSON log there)."""
    import os  # noqa: PLC0415

    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder) or os.path.isdir(text):
        raise ValueError(text)
    return text


_seconds.__name__ = "seconds > 0"  # argparse names the type in its one-line error
_duration.__name__ = "seconds >= 0"
_port.__name__ = "port (0-65535)"
_writable_file.__name__ = "file in an existing folder"


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


def _rungs(monitor: MemoryMonitor, total_bytes: int) -> dict[str, object]:
    """The rungs in force at this limit (fitted in small containers) and whether in order."""
    t = monitor.thresholds.for_total(total_bytes)
    return {
        "warning_ratio": round(t.warning_ratio, 4),
        "critical_ratio": round(t.critical_ratio, 4),
        "floor_bytes": t.floor_bytes,
        "in_order": rungs_in_order(t, total_bytes),
    }


def _check_config(args: argparse.Namespace) -> int:
    config = MemoryConfig.from_env()
    monitor = MemoryMonitor(config)
    rungs = _rungs(monitor, monitor.sample().total_bytes)
    if args.json:
        print(json.dumps({**config.as_dict(), "rungs_at_this_limit": rungs}))
    else:
        for name, value in config.as_dict().items():
            print(f"{name:36} {value!s:>10}  ({config.source_of(name)})")
        order = "in order" if rungs["in_order"] else "OUT OF ORDER (the floor comes first)"
        w, c, f = rungs["warning_ratio"], rungs["critical_ratio"], rungs["floor_bytes"]
        print(f"rungs at this limit: warning {w}, critical {c}, floor {f} bytes: {order}")
    return 0


def _status(args: argparse.Namespace) -> int:
    config = MemoryConfig.from_env()
    monitor = MemoryMonitor(config)
    r = monitor.sample()
    settings = {
        name: {"value": value, "source": config.source_of(name)}
        for name, value in config.as_dict().items()
    }
    reading = {
        "source": r.source,
        "limit_bytes": r.total_bytes,
        "used_bytes": r.used_bytes,
        "available_bytes": r.available_bytes,
        "used_ratio": round(r.used_ratio, 4),
        "process_rss_bytes": r.process_rss_bytes,
        "level": monitor.level.name,
        "rungs": _rungs(monitor, r.total_bytes),
    }
    if args.json:
        print(json.dumps({"reading": reading, "config": settings}))
        return 0
    mib = 1 << 20
    print(f"source     {r.source}")
    print(f"limit      {r.total_bytes / mib:,.0f} MiB")
    print(f"used       {r.used_bytes / mib:,.0f} MiB ({r.used_ratio:.1%})")
    print(f"available  {r.available_bytes / mib:,.0f} MiB")
    print(f"level      {monitor.level.name}")
    rungs = reading["rungs"]
    assert isinstance(rungs, dict)
    print(
        f"rungs      warning {rungs['warning_ratio']:.1%}, critical {rungs['critical_ratio']:.1%}, "
        f"floor {int(str(rungs['floor_bytes'])) / mib:,.0f} MiB"
        + ("" if rungs["in_order"] else "  OUT OF ORDER: the floor comes first at this limit")
    )
    print("configuration in force:")
    for name, item in settings.items():
        print(f"  {name:36} {item['value']!s:>10}  ({item['source']})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from . import demo  # noqa: PLC0415

    settings = demo.DemoSettings(
        duration_s=args.duration, port=args.port, addr=args.addr, json_lines=args.json
    )
    if args.log:
        settings.log_path = Path(args.log)
    inner = os.environ.get(demo.INNER_ENV) == "1"
    return demo.main(settings, inner=inner, use_cgroup=not args.no_cgroup)


def _stack(args: argparse.Namespace) -> int:
    from . import stack  # noqa: PLC0415

    return stack.main(args.target, args.prometheus_port, args.alertmanager_port, args.duration)


def _assets(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from ..assets import AssetOptions, AssetOptionsError, parse_pairs  # noqa: PLC0415
    from . import assets  # noqa: PLC0415

    try:
        options = AssetOptions(
            job=args.job, namespace=args.namespace, runbook_url=args.runbook_url,
            labels=parse_pairs(args.label, "--label"),
            for_windows=parse_pairs(args.for_window, "--for"),
            kubernetes=args.kubernetes, app=args.app, scrape_interval=args.scrape_interval,
        )  # fmt: skip
        written, rendered = assets.write(Path(args.out), options)
    except AssetOptionsError as exc:  # nothing was written
        print(f"assets: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file in the way, no permission
        print(f"assets: {exc}", file=sys.stderr)
        return 1
    for target in written:
        print(target)
    for note in rendered.notes:
        print(f"assets: note: {note}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """A bad flag is one line naming it (and exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _top(args: argparse.Namespace) -> int:
    """Fetch the service's /debug/memory and show it, refreshing (``--json``: once)."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    fmt = "json" if args.json else "text"
    url = args.url + ("&" if "?" in args.url else "?") + f"format={fmt}"
    deadline = time.monotonic() + args.seconds if args.seconds else None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            print(f"cannot read {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
            return 1
        if args.json:
            print(body, end="" if body.endswith("\n") else "\n")
            return 0
        tty = sys.stdout.isatty()
        sys.stdout.write(("\x1b[H\x1b[2J" if tty else "") + body + ("" if tty else "\n"))
        sys.stdout.flush()
        if deadline is not None and time.monotonic() + args.interval > deadline:
            return 0
        time.sleep(args.interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="pathoai-memobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch", help="print get_current_metrics() every interval")
    watch.add_argument("--seconds", type=_seconds, default=5.0, help="how long to watch")
    watch.add_argument("--interval", type=_seconds, default=1.0, help="seconds between readings")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.set_defaults(func=_watch)
    check = sub.add_parser("check-config", help="validate the environment's configuration")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_check_config)
    status = sub.add_parser("status", help="one reading and the configuration in force")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)
    demo = sub.add_parser("demo", help="run the demo workload with the exporter and JSON logs")
    demo.add_argument("--duration", type=_seconds, default=90.0, help="seconds (Ctrl-C ends early)")
    demo.add_argument("--port", type=_port, default=9464, help="metrics port")
    demo.add_argument("--addr", default="127.0.0.1", help="metrics address (0.0.0.0 in a pod)")
    demo.add_argument("--json", action="store_true", help="a JSON status line every second")
    demo.add_argument("--log", type=_writable_file, help="JSON log file (default: in the temp dir)")
    demo.add_argument("--no-cgroup", action="store_true", help="use a budget, not a cgroup")
    demo.set_defaults(func=_demo)
    stack = sub.add_parser("stack", help="Prometheus + Alertmanager on loopback for the demo")
    stack.add_argument("--target", default="127.0.0.1:9464", help="exporter to scrape")
    stack.add_argument("--prometheus-port", type=_port, default=9090)
    stack.add_argument("--alertmanager-port", type=_port, default=9093)
    stack.add_argument("--duration", type=_duration, default=0, help="seconds; 0 runs until Ctrl-C")
    stack.set_defaults(func=_stack)
    top = sub.add_parser("top", help="the /debug/memory view of a running service, live")
    top.add_argument("--url", default="http://127.0.0.1:9464/debug/memory", help="its address")
    top.add_argument("--interval", type=_seconds, default=2.0, help="seconds between refreshes")
    top.add_argument("--seconds", type=_duration, default=0, help="how long; 0 until Ctrl-C")
    top.add_argument("--json", action="store_true", help="the JSON once, and exit")
    top.set_defaults(func=_top)
    out = sub.add_parser("assets", help="write the alert rules, routing and dashboards to a folder")
    out.add_argument("--out", required=True, help="folder to write into (created if missing)")
    out.add_argument("--job", default="pathoai.*", help="regex of the scrape job's name")
    out.add_argument("--namespace", help="Kubernetes namespace: selectors and objects")
    out.add_argument(
        "--runbook-url",
        default="docs/runbooks.md",
        help="where the runbooks are; alerts link URL#alertname",
    )
    out.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a label on every Kubernetes object, e.g. release=prometheus",
    )
    out.add_argument(
        "--for",
        dest="for_window",
        action="append",
        default=[],
        metavar="ALERT=DURATION",
        help="an alert's for: window, e.g. PathoAIMemoryWarning=10m",
    )
    out.add_argument(
        "--kubernetes",
        action="store_true",
        help="also PrometheusRule, ServiceMonitor, PodMonitor, dashboards ConfigMap",
    )
    out.add_argument(
        "--app",
        default="pathoai-memobs",
        help="Kubernetes objects' name and the app.kubernetes.io/name they select",
    )
    out.add_argument("--scrape-interval", default="15s", help="the monitors' scrape interval")
    out.set_defaults(func=_assets)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:  # every command reads the environment: one clear refusal
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

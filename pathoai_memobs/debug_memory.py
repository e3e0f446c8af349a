"""``/debug/memory``: what holds the memory, for the engineer on call (Go's
``/debug/pprof/heap`` is the model), served by the exporter's own server only when asked
(``start_http_server(debug=DebugMemory(...))``; loopback, its TLS and basic auth apply).

GET shows, as JSON (``?format=json``) or as text a person reads in a terminal: the reading
and level, the charge breakdown, managed and unmanaged bytes, the allocator, PSI, OOM kills,
the collector's statistics and frozen objects, the largest sessions by fingerprint with
their largest values by type and bytes (never ids, keys or contents), recent level changes
and emergency runs. ``?action=`` runs one thing: ``trace`` (start tracemalloc with
``frames``, stopped after ``seconds``), ``snapshot`` (top allocation sites by file:line,
and live objects by type), ``diff`` (against the previous snapshot), ``trim`` (the
allocator, bytes returned), ``collect`` (a full collection, what it freed).

One request at a time (another gets 429), each bounded: lists are cut to ``TOP`` entries,
a body to ``MAX_BODY`` bytes, and the wait to ``MAX_WAIT_S`` (the work runs in its own
thread; past that the answer is 503 with Retry-After, and the next request is refused until
it ends, so slow snapshots of a huge heap never pile up).
"""

from __future__ import annotations

import collections
import gc
import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from .level_actions import RECENT

if TYPE_CHECKING:
    from .monitor import MemoryMonitor
    from .session_manager import SessionManager

TOP: Final = 20
MAX_BODY: Final = 256 << 10
MAX_WAIT_S: Final = 10.0
MAX_TRACE_S: Final = 600.0
MAX_FRAMES: Final = 50


class DebugMemory:
    """The view over one monitor (and its sessions); ``wsgi`` serves it."""

    def __init__(self, monitor: MemoryMonitor, sessions: SessionManager | None = None) -> None:
        self.monitor = monitor
        self.sessions = sessions if sessions is not None else monitor.sessions
        self._busy = threading.Lock()
        self.max_wait_s = MAX_WAIT_S
        self._previous: tracemalloc.Snapshot | None = None
        self._stop_timer: threading.Timer | None = None

    # -- what is shown --------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        m = self.monitor
        r = m.last_reading or m.sample()
        charged, process = m.memory_breakdown()
        managed = m.managed_bytes()
        heap = m.allocator.heap()
        psi = m.pressure
        runs, _ = m.emergency_runs_since(max(0, m.emergency_totals.runs - 5))
        return {
            "reading": {
                "used_bytes": r.used_bytes,
                "available_bytes": r.available_bytes,
                "total_bytes": r.total_bytes,
                "used_ratio": round(r.used_ratio, 4),
                "source": r.source,
                "level": m.level.name,
            },
            "charged": charged,
            "process": process,
            "managed_bytes": managed,
            "unmanaged_bytes": max(0, r.used_bytes - managed),
            "allocator": None
            if heap is None
            else {**heap._asdict(), "arenas": m.allocator.arenas()},
            "psi": None
            if psi is None
            else {"some_avg10": psi.some_avg10, "full_avg10": psi.full_avg10},
            "oom_kills": m.oom_kills(),
            "gc": {
                "counts": gc.get_count(),
                "thresholds": gc.get_threshold(),
                "enabled": gc.isenabled(),
                "frozen": gc.get_freeze_count(),
                "generations": gc.get_stats(),
            },
            "sessions": self._sessions(),
            "level_changes": list(RECENT)[-TOP:],
            "emergency_runs": [
                {
                    "reason": x.reason,
                    "freed_bytes": x.freed_bytes,
                    "duration_s": round(x.duration_s, 4),
                    "restored": x.restored,
                }
                for x in runs
            ],
            "tracing": tracemalloc.is_tracing(),
        }

    def _sessions(self) -> dict[str, Any] | None:
        """The largest sessions by fingerprint, each with its largest values by type."""
        s = self.sessions
        if s is None:
            return None
        agg = s.aggregates()
        largest = []
        with s._lock:  # the manager's own lock: a consistent look at the top sessions
            for record in s._top.ranked()[:10]:
                values = sorted(
                    ((type(record.data[k]).__name__, c.host_bytes) for k, c in record.keys.items()),
                    key=lambda tv: -tv[1],
                )[:5]
                shown = [{"type": t, "bytes": n} for t, n in values]
                largest.append({"session": record.fp, "bytes": record.host,
                                "spilled": bool(record.spilled), "values": shown})  # fmt: skip
        return {"active": agg.active, "total_bytes": agg.total_bytes,
                "spilled": s.spilled_sessions, "largest": largest}  # fmt: skip

    def act(self, action: str, params: dict[str, str]) -> dict[str, Any]:
        """Run one action (see the module docstring); ValueError for a bad one."""
        if action == "trace":
            frames = int(_bounded(params.get("frames", "10"), "frames", int, 1, MAX_FRAMES))
            seconds = _bounded(params.get("seconds", "60"), "seconds", float, 1, MAX_TRACE_S)
            if tracemalloc.is_tracing():
                return {"tracing": True, "started": False}
            tracemalloc.start(frames)
            self._stop_timer = threading.Timer(seconds, tracemalloc.stop)
            self._stop_timer.daemon = True
            self._stop_timer.start()
            return {"tracing": True, "started": True, "frames": frames, "stops_after_s": seconds}
        if action in ("snapshot", "diff"):
            return self._snapshot(diff=action == "diff")
        if action == "trim":
            return {"returned_bytes": self.monitor.allocator.trim()}
        if action == "collect":
            before = self.monitor.sample().process_rss_bytes
            started = time.perf_counter()
            collected = gc.collect()
            after = self.monitor.sample().process_rss_bytes
            return {"collected": collected, "duration_s": round(time.perf_counter() - started, 4),
                    "rss_returned_bytes": max(0, before - after)}  # fmt: skip
        raise ValueError(f"unknown action {action!r}: trace, snapshot, diff, trim, collect")

    def _snapshot(self, *, diff: bool) -> dict[str, Any]:
        by_type = collections.Counter(type(o).__name__ for o in gc.get_objects())
        out: dict[str, Any] = {"objects_by_type": by_type.most_common(TOP)}
        if not tracemalloc.is_tracing():
            return out | {"tracing": False, "hint": "start it first: ?action=trace"}
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        if diff and self._previous is not None:
            stats = snap.compare_to(self._previous, "lineno")[:TOP]
            out["diff"] = [{"where": str(s.traceback[0]), "size_diff_bytes": s.size_diff,
                            "count_diff": s.count_diff} for s in stats]  # fmt: skip
        else:
            stats_now = snap.statistics("lineno")[:TOP]
            out["top"] = [{"where": str(s.traceback[0]), "bytes": s.size, "count": s.count}
                          for s in stats_now]  # fmt: skip
        self._previous = snap
        return out | {"tracing": True}

    # -- serving ----------------------------------------------------------------------------

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self._busy.acquire(blocking=False):
            return _answer(start_response, "429 Too Many Requests", {"error": "busy"},
                           ("Retry-After", "1"))  # fmt: skip
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        action = query.pop("action", "")
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["doc"] = self.act(action, query) if action else self.summary()
            except ValueError as exc:
                result["bad"] = str(exc)
            except Exception as exc:  # reported, never raised into the server
                result["failed"] = type(exc).__name__
            finally:
                self._busy.release()

        worker = threading.Thread(target=work, name="pathoai-debug-memory", daemon=True)
        worker.start()
        worker.join(self.max_wait_s)
        if worker.is_alive():
            return _answer(start_response, "503 Service Unavailable",
                           {"error": "still running", "after_s": self.max_wait_s},
                           ("Retry-After", str(round(self.max_wait_s))))  # fmt: skip
        if "bad" in result:
            return _answer(start_response, "400 Bad Request", {"error": result["bad"]})
        if "failed" in result:
            return _answer(start_response, "500 Internal Server Error",
                           {"error": result["failed"]})  # fmt: skip
        doc = result["doc"]
        if query.get("format") == "json" or action:
            return _answer(start_response, "200 OK", doc)
        body = text(doc).encode()[:MAX_BODY]
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])  # fmt: skip
        return [body]


def _answer(start_response: Callable[..., Any], status: str, doc: dict[str, Any],
            *extra: tuple[str, str]) -> list[bytes]:  # fmt: skip
    body = json.dumps(doc, default=str).encode()
    if len(body) > MAX_BODY:  # lists are cut already: never cut JSON in the middle
        body = json.dumps({"error": "too large", "bytes": len(body)}).encode()
    headers = [("Content-Type", "application/json"), *extra,
               ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]  # fmt: skip
    start_response(status, headers)
    return [body]


def _bounded(text: str, name: str, kind: type[float], low: float, high: float) -> float:
    """A query parameter as ``kind`` (int or float) within ``low``..``high``; ValueError
    naming it otherwise."""
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {text!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be {low:g}..{high:g}, got {value}")
    return value


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.1f} MiB"


def text(doc: dict[str, Any]) -> str:
    """The summary as lines a person reads in a terminal (``pathoai-memobs top``)."""
    r = doc["reading"]
    lines = [
        f"memory    {r['used_ratio']:.1%} used: {_mib(r['used_bytes'])} of {_mib(r['total_bytes'])}"
        f", {_mib(r['available_bytes'])} available; level {r['level']} ({r['source']})",
        f"managed   {_mib(doc['managed_bytes'])}   unmanaged {_mib(doc['unmanaged_bytes'])}",
    ]
    if doc["charged"]:
        lines.append("charged   " + "  ".join(f"{k} {_mib(v)}" for k, v in doc["charged"].items()))
    if doc["process"]:
        lines.append("process   " + "  ".join(f"{k} {_mib(v)}" for k, v in doc["process"].items()))
    if doc["allocator"]:
        a = doc["allocator"]
        lines.append(f"malloc    in use {_mib(a['in_use'])}, free {_mib(a['free'])}, "
                     f"mmapped {_mib(a['mmapped'])}, {a['arenas']} arenas")  # fmt: skip
    if doc["psi"]:
        lines.append(
            f"psi       some {doc['psi']['some_avg10']:.2f}  full {doc['psi']['full_avg10']:.2f}"
        )
    lines.append(f"oom kills {doc['oom_kills']}   gc counts {doc['gc']['counts']}, "
                 f"frozen {doc['gc']['frozen']}")  # fmt: skip
    sessions = doc["sessions"]
    if sessions:
        lines.append(f"sessions  {sessions['active']} active, {_mib(sessions['total_bytes'])}, "
                     f"{sessions['spilled']} spilled")  # fmt: skip
        for s in sessions["largest"]:
            values = ", ".join(f"{v['type']} {_mib(v['bytes'])}" for v in s["values"])
            lines.append(f"  {s['session']}  {_mib(s['bytes'])}  {values}")
    for c in doc["level_changes"][-5:]:
        at = time.strftime("%H:%M:%S", time.localtime(c["at"]))
        lines.append(f"level     {c['from']} -> {c['to']} at {at}")
    for e in doc["emergency_runs"]:
        lines.append(
            f"emergency {e['reason']}: freed {_mib(e['freed_bytes'])} in {e['duration_s']} s"
        )
    return "\n".join(lines) + "\n"

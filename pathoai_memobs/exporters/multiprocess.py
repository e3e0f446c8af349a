"""Multiprocess mode: every worker's state in one ``/metrics`` (gunicorn, uvicorn workers).

prometheus_client's multiprocess mode only carries its own Counter/Gauge/Histogram
objects; custom collectors such as ours are left out. So each worker runs a
``Publisher`` that writes what its collector would expose to
``$PROMETHEUS_MULTIPROC_DIR/pathoai_memobs_<pid>.json`` (atomically, every second), and
the process that serves ``/metrics`` registers a ``MultiprocessCollector`` that merges
the files by each metric's catalogue rule: counters and histograms add up, the shared
container's memory takes the max (min for available bytes and the oldest sample time),
top sessions keep the largest across workers.

A dead worker's series go away: ``mark_process_dead(pid)`` (gunicorn's ``child_exit``
hook) folds its counters and histograms into an archive, so totals never go backwards,
and deletes its file. A file whose process is gone and which has not been refreshed for
three publishing intervals is folded the same way at the next scrape, should the hook
be missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..logging import MONITOR_ERROR, WARNING, emit
from .catalogue import BY_NAME, Merge, family_name

PREFIX = "pathoai_memobs_"
ARCHIVE = "pathoai_memobs_archive.json"
LOCK = "pathoai_memobs.lock"
_CUMULATIVE = ("counter", "histogram")

Family = dict[str, Any]


def directory_from_env(directory: str | os.PathLike[str] | None = None) -> Path:
    """The multiprocess directory: the argument, else ``PROMETHEUS_MULTIPROC_DIR``."""
    chosen = directory if directory is not None else os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not chosen:
        raise ValueError("multiprocess mode needs PROMETHEUS_MULTIPROC_DIR (or a directory)")
    path = Path(chosen)
    if not path.is_dir():
        raise ValueError(f"PROMETHEUS_MULTIPROC_DIR={str(path)!r} is not a directory")
    return path


def _rule(family: Family) -> Merge:
    name = family["name"]
    spec = BY_NAME.get(name) or BY_NAME.get(name + "_total")
    if spec is not None:
        return spec.merge
    return "sum" if family["type"] in _CUMULATIVE else "max"


def serialize(families: Iterable[Metric]) -> list[Family]:
    """Families as plain JSON-able dicts (name, type, help, samples)."""
    return [
        {
            "name": f.name,
            "type": f.type,
            "help": f.documentation,
            "samples": [[s.name, s.labels, s.value] for s in f.samples],
        }
        for f in families
    ]


def merge(files: list[list[Family]], archive: list[Family]) -> list[Family]:
    """Combine workers' families by their catalogue rule; archived (dead) counts add in."""
    out: dict[str, Family] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    tops: dict[str, int] = {}
    for families in [*files, archive]:
        for fam in families:
            name = fam["name"]
            if name not in out:
                out[name] = {k: fam[k] for k in ("name", "type", "help")}
                values[name] = {}
            rule = _rule(fam)
            table = values[name]
            if rule == "top":
                tops[name] = max(tops.get(name, 0), len(fam["samples"]))
            for sample_name, labels, value in fam["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                old = table.get(key)
                if old is None:
                    table[key] = value
                elif rule == "sum":
                    table[key] = old + value
                elif rule == "min":
                    table[key] = min(old, value)
                else:  # max, union, top
                    table[key] = max(old, value)
    for name, fam in out.items():
        items = list(values[name].items())
        if name in tops:
            items = sorted(items, key=lambda kv: kv[1], reverse=True)[: tops[name]]
        fam["samples"] = [[n, dict(labels), v] for (n, labels), v in items]
    return list(out.values())


def _fold(into: list[Family], dead: list[Family]) -> list[Family]:
    """Add a dead worker's counters and histograms to the archive."""
    return merge([into], [f for f in dead if f["type"] in _CUMULATIVE])


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


_TYPES = frozenset(
    {"counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "unknown"}
)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def valid_worker_file(data: object) -> bool:
    """Whether a worker file holds what ``Publisher`` writes: its pid, time and interval,
    and families of (name, type, help, samples of [name, {label: value}, number])."""
    if not isinstance(data, dict) or not isinstance(data.get("families"), list):
        return False
    if not (_number(data.get("time")) and _number(data.get("interval_s"))):
        return False
    if not isinstance(data.get("pid"), int) or isinstance(data.get("pid"), bool):
        return False
    for fam in data["families"]:
        if not isinstance(fam, dict) or fam.get("type") not in _TYPES:
            return False
        if not (isinstance(fam.get("name"), str) and isinstance(fam.get("help"), str)):
            return False
        samples = fam.get("samples")
        if not isinstance(samples, list):
            return False
        for sample in samples:
            if not (isinstance(sample, list) and len(sample) == 3):
                return False
            name, labels, value = sample
            if not (isinstance(name, str) and isinstance(labels, dict) and _number(value)):
                return False
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
                return False
    return True


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def _archive_locked(directory: Path, pid: int) -> bool:
    path = directory / f"{PREFIX}{pid}.json"
    data = _read(path)
    if data is None:
        return False
    archive = _read(directory / ARCHIVE) or {"families": []}
    _write(directory / ARCHIVE, {"families": _fold(archive["families"], data["families"])})
    path.unlink(missing_ok=True)
    return True


def mark_process_dead(pid: int, directory: str | os.PathLike[str] | None = None) -> bool:
    """Retire a worker: keep its counts in the archive, drop its live series.

    Call it from gunicorn's ``child_exit`` hook (beside prometheus_client's own
    ``multiprocess.mark_process_dead``). True if the worker had published.
    """
    path = directory_from_env(directory)
    with _locked(path):
        return _archive_locked(path, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Publisher:
    """Writes this worker's families to the multiprocess directory every ``interval_s``.

    Start it in each worker after the fork (gunicorn ``post_fork``), never before: a
    thread does not survive ``fork()``.
    """

    def __init__(
        self,
        collector: Collector,
        directory: str | os.PathLike[str] | None = None,
        *,
        interval_s: float = 1.0,
    ) -> None:
        self.collector = collector
        self.directory = directory_from_env(directory)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    @property
    def path(self) -> Path:
        return self.directory / f"{PREFIX}{os.getpid()}.json"

    def publish(self) -> None:
        """Write the current state now."""
        data = {
            "pid": os.getpid(),
            "time": time.time(),
            "interval_s": self.interval_s,
            "families": serialize(self.collector.collect()),
        }
        _write(self.path, data)

    def start(self) -> Publisher:
        self.publish()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="pathoai-metrics-publisher", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish()
            except Exception as exc:
                self.errors += 1
                emit(
                    logging.ERROR,
                    MONITOR_ERROR,
                    where="publish",
                    error=type(exc).__name__,
                    exc_info=exc,
                )

    def stop(self, *, remove: bool = False) -> None:
        """Stop publishing; ``remove`` retires this worker's file now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if remove:
            mark_process_dead(os.getpid(), self.directory)


class MultiprocessCollector(Collector):
    """Merges every worker's published families into one exposition."""

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self.directory = directory_from_env(directory)
        self.malformed_total = 0
        self._seen_bad: set[tuple[str, int]] = set()
        if registry is not None:
            registry.register(self)

    def _malformed(self, path: Path) -> None:
        try:
            version = path.stat().st_mtime_ns
        except OSError:  # gone meanwhile: a worker replaced or removed it
            return
        if (path.name, version) in self._seen_bad:
            return
        self._seen_bad.add((path.name, version))
        self.malformed_total += 1
        emit(
            WARNING,
            MONITOR_ERROR,
            where="multiprocess_file",
            error="MalformedWorkerFile",
            file=path.name,
        )

    def collect(self) -> Iterator[Metric]:
        with _locked(self.directory):
            live = []
            now = time.time()
            for path in sorted(self.directory.glob(f"{PREFIX}*.json")):
                if path.name == ARCHIVE:
                    continue
                data = _read(path)
                if data is None or not valid_worker_file(data):
                    self._malformed(path)  # skipped, counted, logged once per file version
                    continue
                stale = now - data.get("time", now) > 3 * data.get("interval_s", 1.0)
                if stale and not _alive(int(data.get("pid", -1))):
                    _archive_locked(self.directory, int(data["pid"]))
                    continue
                live.append(data["families"])
            archive = (_read(self.directory / ARCHIVE) or {"families": []})["families"]
        for fam in merge(live, archive):
            metric = Metric(fam["name"], fam["help"], fam["type"])
            for sample_name, labels, value in fam["samples"]:
                metric.add_sample(sample_name, labels, value)
            yield metric
        spec = BY_NAME["pathoai_multiprocess_workers"]
        workers = Metric(spec.name, spec.help, "gauge")
        workers.add_sample(spec.name, {}, float(len(live)))
        yield workers
        spec = BY_NAME["pathoai_multiprocess_malformed_files_total"]
        bad = Metric(family_name(spec), spec.help, "counter")
        bad.add_sample(spec.name, {}, float(self.malformed_total))
        yield bad

"""The demo workload: simulated pathologists uploading slides, in waves of memory pressure.

Users arrive in waves; each uploads a synthetic slide (a numpy image admitted through
``reserve``), tiles it into views, runs analyses whose results are stored without a
reservation (so memory creeps), goes idle and times out. Waves push memory past the
warning (85 %) and critical (90 %) rungs and under the floor, so every part of the
manager works: proactive GC, emergency eviction, rejections, timeouts.

Spilling is on: sessions idle for 3 s may go to an encrypted spill directory under
/var/tmp (a disk, not tmpfs) at CRITICAL, and the emergency spills before it evicts; a
bounded tile cache (96 MiB) is shrunk at WARNING. The directory is removed at the end.

It runs inside a 2 GiB cgroup it creates where it can, with the floor lowered to 150 MB so
the three rungs come in order within 2 GiB (85 % leaves 307 MB, 90 % leaves 205 MB). Where
no cgroup can be made, it watches a 2 GiB budget of its own memory instead (the reading's
limit is that budget) and says so.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from ..config import MemoryConfig
from ..exceptions import InsufficientMemoryError, SessionMemoryLimitError, SessionNotFoundError
from ..monitor import MemoryMonitor
from ..readers.system import MemorySampler
from ..reading import MIB, Reading

LIMIT_BYTES = 2 << 30
INNER_ENV = "PATHOAI_DEMO_INNER"


@dataclass
class DemoSettings:
    """The demo's embedded defaults (scaled to a 2 GiB limit)."""

    duration_s: float = 90.0
    port: int = 9464
    #: Where the exporter listens; a pod serves on 0.0.0.0 (then without /debug/memory,
    #: whose actions are for the loopback only).
    addr: str = "127.0.0.1"
    floor_mb: float = 150.0
    session_timeout_s: float = 12.0
    wave_period_s: float = 30.0
    slide_mb: tuple[int, int] = (60, 120)
    results_mb: tuple[int, int] = (4, 16)
    #: What an upload reserves beyond its slide: its analyses' results, as an app would.
    headroom_mb: int = 32
    seed: int = 7
    json_lines: bool = False
    #: Where idle sessions spill (a disk; /tmp may be tmpfs, which would free nothing).
    spill_parent: Path = field(
        default_factory=lambda: Path(
            "/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()
        )
    )
    spill_idle_s: float = 3.0
    tile_cache_mb: float = 96.0
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "pathoai-demo.jsonl"
    )


class BudgetSampler:
    """Where no cgroup can be made: a limit of ``budget`` bytes over this process's RSS
    growth since start, so the ladder is walked without threatening the host."""

    def __init__(self, budget: int) -> None:
        self.inner = MemorySampler(cgroup=False)
        self.budget = budget
        self.baseline = self.inner.sample().process_rss_bytes

    def sample(self) -> Reading:
        r = self.inner.sample()
        used = max(0, r.process_rss_bytes - self.baseline)
        available = max(0, min(self.budget - used, r.host_available_bytes))
        return r._replace(total_bytes=self.budget, used_bytes=used, available_bytes=available)


@dataclass
class User:
    sid: str
    until: float  # active until then, then idle until the session times out
    analyses: int = 0


class Workload:
    """One step every 50 ms: arrivals by wave, analyses by active users."""

    def __init__(self, monitor: MemoryMonitor, sessions: Any, s: DemoSettings) -> None:
        from ..bounded_cache import BoundedCache  # noqa: PLC0415

        self.monitor, self.sessions, self.s = monitor, sessions, s
        #: Decoded tiles, as a viewer would keep them: shrunk by the ladder at WARNING.
        self.tiles: BoundedCache[tuple[str, int], Any] = BoundedCache(
            s.tile_cache_mb, name="tiles", monitor=monitor
        )
        self.rng = random.Random(s.seed)
        self.users: list[User] = []
        self.rejected = 0
        self.uploads = 0
        self.start = time.monotonic()

    def wave(self, now: float) -> float:
        """0..1: the arrival pressure at ``now`` (a raised cosine of the wave period)."""
        return 0.5 - 0.5 * math.cos(2 * math.pi * (now - self.start) / self.s.wave_period_s)

    def step(self) -> None:
        import numpy as np  # noqa: PLC0415 -- numpy only for the demo

        now = time.monotonic()
        if self.rng.random() < 0.02 + 0.25 * self.wave(now):
            mb = self.rng.randint(*self.s.slide_mb)
            try:
                with self.monitor.reserve(mb + self.s.headroom_mb):
                    side = int(math.sqrt(mb * MIB))
                    slide = np.full((side, side), 200, np.uint8)  # every page touched
                    tiles = [slide[i : i + 256, j : j + 256] for i in (0, 256) for j in (0, 256)]
                    sid = self.sessions.create_session()
                    self.sessions.update_session(sid, slide=slide, tiles=tiles)
                    self.uploads += 1
                    self.users.append(User(sid, now + self.rng.uniform(3, 8)))
            except InsufficientMemoryError:
                self.rejected += 1
        for user in list(self.users):
            if now > user.until:
                self.users.remove(user)  # goes idle; the session times out on its own
            elif self.rng.random() < 0.03:  # a viewer decodes a tile (a copy) and keeps it
                self.tiles.put((user.sid, self.rng.randint(0, 63)), np.ones(4 * MIB, np.uint8))
            elif self.rng.random() < 0.04:
                mb = self.rng.randint(*self.s.results_mb)
                results = {
                    "heatmap": np.ones(mb * MIB, np.uint8),
                    "scores": [self.rng.random() for _ in range(100)],
                }
                user.analyses += 1
                try:
                    self.sessions.update_session(user.sid, **{f"analysis_{user.analyses}": results})
                except (SessionNotFoundError, SessionMemoryLimitError):
                    # evicted meanwhile, or over its own limit (the app answers 413)
                    self.users.remove(user)


class Scene(NamedTuple):
    """What the status screen shows."""

    monitor: MemoryMonitor
    sessions: Any
    work: Workload
    s: DemoSettings
    where: str


def _bar(ratio: float, width: int = 32) -> str:
    filled = round(min(1.0, max(0.0, ratio)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def status_lines(scene: Scene, elapsed: float) -> list[str]:
    """The one-screen status, as text lines."""
    monitor, sessions, work, s, where = scene
    from ..gc_pauses import GC_PAUSES  # noqa: PLC0415

    r = monitor.last_reading or monitor.sample()
    agg = sessions.aggregates()
    t = monitor.thresholds.for_total(r.total_bytes)  # the rungs fitted to this limit
    totals = monitor.emergency_totals
    snap = GC_PAUSES.snapshot()
    removed = ", ".join(f"{n} {k}" for k, n in sorted(agg.removed_total.items()) if n) or "none"
    store = sessions.spill_store
    spilled = store.spilled_bytes if store is not None else 0
    shrunk = work.tiles.evictions["pressure"]
    last = totals.last
    if last is None:
        emergency = "none yet"
    else:
        ago = time.time() - last.started_at
        emergency = (
            f"{totals.runs} runs; last {ago:.0f} s ago freed {last.freed_bytes / MIB:.0f} MiB "
            f"in {last.duration_s * 1000:.0f} ms" + ("" if last.restored else " (not restored)")
        )
    return [
        f"pathoai-memobs demo - {where} - {elapsed:4.0f} s / {s.duration_s:.0f} s - Ctrl-C stops",
        f"memory    {_bar(r.used_ratio)} {r.used_ratio * 100:5.1f} %  "
        f"used {r.used_bytes / MIB:5.0f} of {r.total_bytes / MIB:.0f} MiB, "
        f"available {r.available_bytes / MIB:.0f} MiB",
        f"level     {monitor.level.name:<10} (warning {t.warning_ratio:.0%}, critical "
        f"{t.critical_ratio:.0%}, floor {t.floor_bytes / MIB:.0f} MiB)",
        f"sessions  {agg.active} active, {agg.created_total} created; removed: {removed}",
        f"spilled   {sessions.spilled_sessions} sessions, {spilled / MIB:.0f} MiB on disk "
        f"(encrypted); tile cache {work.tiles.nbytes / MIB:.0f} of "
        f"{work.tiles.max_bytes / MIB:.0f} MiB, {shrunk} shrunk under pressure",
        f"admission {work.uploads} uploads admitted, {work.rejected} refused",
        f"gc        last pause {snap.last_seconds * 1000:.2f} ms "
        f"(generation {snap.last_generation})",
        f"emergency {emergency}",
        f"look at   http://{s.addr}:{s.port}/metrics   /debug/memory   logs {s.log_path}",
    ]


def run(s: DemoSettings, where: str, sampler: Any = None, out: TextIO = sys.stdout) -> int:
    """Run the workload with the whole manager, the exporter and JSON logs, until the
    duration ends or Ctrl-C."""
    from ..exporters.prometheus import instrument, start_http_server  # noqa: PLC0415
    from ..gc_manager import GarbageCollectionManager  # noqa: PLC0415
    from ..logging import configure_logging  # noqa: PLC0415
    from ..session_manager import SessionManager  # noqa: PLC0415

    log = open(s.log_path, "a", encoding="utf-8")  # noqa: SIM115 -- closed below
    handler = configure_logging("json", stream=log)
    spill_dir = tempfile.mkdtemp(prefix="pathoai-demo-spill-", dir=s.spill_parent)
    config = MemoryConfig(
        emergency_cleanup_threshold_mb=s.floor_mb,
        monitoring_interval_sec=0.5,
        session_timeout_minutes=s.session_timeout_s / 60,
        session_cleanup_interval_minutes=2 / 60,
        max_session_memory_gb=0.5,
        spill_dir=spill_dir,
        spill_max_gb=4.0,
        spill_idle_minutes=s.spill_idle_s / 60,
    )
    sessions = SessionManager.from_config(config)
    gcm = GarbageCollectionManager.from_config(config)
    gcm.configure_gc()
    monitor = MemoryMonitor(
        config, sampler=sampler, sessions=sessions, gc_manager=gcm, emergency_cooldown_s=1.0
    )
    instrument(monitor, sessions, gcm)
    from ..debug_memory import DebugMemory  # noqa: PLC0415
    from ..probes import Probes  # noqa: PLC0415

    debug = DebugMemory(monitor, sessions) if s.addr in ("127.0.0.1", "::1", "localhost") else None
    try:
        server = start_http_server(s.port, s.addr, debug=debug, probes=Probes(monitor))
    except OSError as exc:
        print(f"cannot serve metrics on {s.addr}:{s.port}: {exc.strerror}", file=sys.stderr)
        return 1
    work = Workload(monitor, sessions, s)
    scene = Scene(monitor, sessions, work, s, where)
    tty = out.isatty() and not s.json_lines
    start = time.monotonic()
    next_print = start
    sessions.start_sweeper()
    monitor.start()
    try:
        while (elapsed := time.monotonic() - start) < s.duration_s:
            work.step()
            if time.monotonic() >= next_print:
                next_print += 1.0 if not tty else 0.5
                _show(out, scene, elapsed, tty)
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        monitor.stop()
        sessions.stop_sweeper()
        server.stop()
        gcm.restore()
        if sessions.spill_store is not None:
            sessions.spill_store.close()
        shutil.rmtree(spill_dir, ignore_errors=True)  # patient data: nothing left behind
        import logging as stdlib  # noqa: PLC0415

        stdlib.getLogger().removeHandler(handler)
        log.close()
    print(
        f"demo finished: {work.uploads} uploads, {work.rejected} refused; logs in {s.log_path}",
        file=out,
        flush=True,
    )
    return 0


def _show(out: TextIO, scene: Scene, elapsed: float, tty: bool) -> None:
    monitor, sessions, work, s, _ = scene
    if s.json_lines:
        r = monitor.last_reading or monitor.sample()
        agg = sessions.aggregates()
        row = {
            "elapsed_s": round(elapsed, 1),
            "used_ratio": round(r.used_ratio, 4),
            "available_bytes": r.available_bytes,
            "level": monitor.level.name,
            "sessions_active": agg.active,
            "sessions_created": agg.created_total,
            "removed": dict(agg.removed_total),
            "rejected": work.rejected,
            "emergency_runs": monitor.emergency_totals.runs,
            "sessions_spilled": sessions.spilled_sessions,
            "tile_cache_bytes": work.tiles.nbytes,
        }
        print(json.dumps(row), file=out, flush=True)
        return
    if tty:
        out.write("\x1b[H\x1b[2J" + "\n".join(status_lines(scene, elapsed)) + "\n")
    else:
        r = monitor.last_reading or monitor.sample()
        agg = sessions.aggregates()
        out.write(
            f"{elapsed:4.0f} s  used {r.used_ratio:6.1%}  available "
            f"{r.available_bytes / MIB:5.0f} MiB  {monitor.level.name:<9}  sessions "
            f"{agg.active:3d} (created {agg.created_total}, evicted "
            f"{agg.removed_total.get('emergency', 0)}, timed out "
            f"{agg.removed_total.get('timeout', 0)}, spilled {sessions.spilled_sessions})  "
            f"refused {work.rejected}  "
            f"emergency runs {monitor.emergency_totals.runs}\n"
        )
    out.flush()


def main(s: DemoSettings, *, inner: bool, use_cgroup: bool = True) -> int:
    """Run in a fresh 2 GiB cgroup where one can be made, else on a budget, saying so."""
    if inner:
        return run(s, "2 GiB cgroup")
    if use_cgroup:
        from .cgroup_sandbox import CgroupUnavailableError, create_memory_cgroup  # noqa: PLC0415

        try:
            group = create_memory_cgroup(LIMIT_BYTES, prefix="pathoai-demo")
        except CgroupUnavailableError as exc:
            print(
                f"no cgroup for the demo ({exc}); watching a 2 GiB budget of this "
                "process's memory instead",
                file=sys.stderr,
            )
        else:
            return _in_cgroup(group, s)
    return run(s, "2 GiB budget (no cgroup)", sampler=BudgetSampler(LIMIT_BYTES))


def _in_cgroup(group: Any, s: DemoSettings) -> int:
    argv = [
        sys.executable,
        "-m",
        "pathoai_memobs",
        "demo",
        "--duration",
        str(s.duration_s),
        "--port",
        str(s.port),
        "--log",
        str(s.log_path),
    ] + (["--json"] if s.json_lines else [])
    env = dict(os.environ, **{INNER_ENV: "1"})
    proc = group.popen(argv, env=env)
    previous: Callable[..., Any] | int | None = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda *_: proc.send_signal(signal.SIGINT))
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kills = group.oom_kills()
        group.remove()
    if kills:
        print(f"the demo's cgroup saw {kills} OOM kill(s)", file=sys.stderr)
    return 0 if code in (0, -signal.SIGINT, 130) else int(code)

"""The pressure engine's cost at rest and its speed under pressure (pressure-engine issue).

CPU: our monitor thread and a plain psutil sampler thread (``virtual_memory`` + RSS every
interval, the usual home-grown monitor) take turns, each alone for a 3 s window (8 rounds
each, so 24 s of each at each rate), at 1 Hz and at 10 Hz; each thread's CPU clock, read
from outside (``pthread_getcpuclockid``, so measuring costs the thread nothing), gives its %
of one core; medians of the rounds. Alone, because two threads waking in phase make each
other wait for the GIL. At 1 Hz two floors take their turns too: a Python thread that only
wakes from ``poll()``, and one that wakes and reads /proc/meminfo (the one file no host
sampler can skip), so the table shows what part of the cost is the VM's, not ours.

Detection latency: inside a real 1 GiB cgroup, a child allocates (and touches) enough to
push available memory under the 500 MB floor; latency is the time from the allocation
returning to the first emergency callback starting (0 when the callback started before
the allocation finished). Two untimed allocations of about the same size come first: on a
fresh VM the first touch of guest pages is slow (over a second for 570 MB here), which
would let both samplers see the crossing before the allocation returns. Ours (default 1 s
interval, adaptive pace, kernel wake-ups) alternates with the reference's pattern, a loop
that samples every 1 s.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil

from pathoai_memobs import MemoryConfig, MemoryMonitor

from .harness import Row, progress

TITLE = "Pressure engine: monitor CPU at rest, detection latency under pressure"
CPU_TARGET_PCT = 0.02
LATENCY_TARGET_MS = 150.0
WINDOW_S = 3.0
ROUNDS = 8


class LoopThread:
    """A thread that sleeps in ``poll()`` for ``interval`` and then runs ``work`` (the
    baselines: a psutil sampler, and the floors: waking alone, waking to read meminfo)."""

    def __init__(self, interval: float, work: Callable[[], object] | None) -> None:
        self.interval = interval
        self.work = work
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        work, timeout = self.work, int(self.interval * 1000)
        while not poller.poll(timeout):
            if work is not None:
                work()

    @property
    def thread_cpu_seconds(self) -> float:
        """Read from outside, from the thread's CPU clock, as for our monitor."""
        assert self._thread.ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)


def psutil_sampler(interval: float) -> LoopThread:
    """The baseline: ``virtual_memory`` + RSS every interval, the usual home-grown monitor."""
    process = psutil.Process()

    def work() -> None:
        vm = psutil.virtual_memory()
        rss = process.memory_info().rss
        if vm.available < 500 << 20 or rss < 0:  # the decision a monitor makes
            pass

    return LoopThread(interval, work)


def meminfo_reader(interval: float) -> LoopThread:
    """A floor: the least any sampler can do, one pread of /proc/meminfo, nothing else."""
    fd = os.open("/proc/meminfo", os.O_RDONLY | os.O_CLOEXEC)
    return LoopThread(interval, lambda: os.pread(fd, 8192, 0))


def _window(sampler: MemoryMonitor | LoopThread) -> float:
    """% of one core one sampler thread uses over a window, running alone."""
    sampler.start()
    time.sleep(0.5)  # past start-up
    cpu = sampler.thread_cpu_seconds
    t0 = time.monotonic()
    time.sleep(WINDOW_S)
    rate = (sampler.thread_cpu_seconds - cpu) / (time.monotonic() - t0) * 100
    sampler.stop()
    return rate


def _cpu_rows() -> tuple[list[Row], dict[str, float]]:
    rows = []
    floors: dict[str, list[float]] = {"wake": [], "meminfo": []}
    for hz in (1, 10):
        ours: list[float] = []
        theirs: list[float] = []
        for i in range(ROUNDS):
            ours.append(_window(MemoryMonitor(MemoryConfig(monitoring_interval_sec=1 / hz))))
            theirs.append(_window(psutil_sampler(1 / hz)))
            if hz == 1:
                floors["wake"].append(_window(LoopThread(1.0, None)))
                floors["meminfo"].append(_window(meminfo_reader(1.0)))
            progress(
                f"{hz} Hz round {i + 1}/{ROUNDS}: ours {ours[-1]:.4f} %, psutil {theirs[-1]:.4f} %"
                + (
                    f", floors {floors['wake'][-1]:.4f} / {floors['meminfo'][-1]:.4f} %"
                    if hz == 1
                    else ""
                )
            )
        o, t = statistics.median(ours), statistics.median(theirs)
        rows.append(
            Row(
                case=f"monitor thread CPU at {hz} Hz (% of one core)",
                ours=o,
                baseline=t,
                unit="%",
                target=f"<= {CPU_TARGET_PCT} %" if hz == 1 else "(reported)",
                met=(o <= CPU_TARGET_PCT) if hz == 1 else None,
                baseline_name="psutil sampler thread",
            )
        )
        if hz == 1:
            for key, what in (
                ("wake", "floor: a Python thread that only wakes from poll()"),
                ("meminfo", "floor: wakes and reads /proc/meminfo, nothing else"),
            ):
                rows.append(
                    Row(
                        case=f"{what}, 1 Hz (% of one core)",
                        ours=statistics.median(floors[key]),
                        baseline=t,
                        unit="%",
                        target="(reported)",
                        met=None,
                        baseline_name="psutil sampler thread",
                    )
                )
    return rows, {k: statistics.median(v) for k, v in floors.items()}


def _poll_loop(
    sampler: object, floor: int, stop: threading.Event, callback: Callable[[], None]
) -> None:
    """The reference's pattern: sample every second, act when below the floor."""
    while not stop.is_set():
        if sampler.sample().available_bytes < floor:  # type: ignore[attr-defined]
            callback()
        stop.wait(1.0)


class Probe:
    """One trial's emergency callback: the time of its first call. A new one per trial, so
    a late call from an earlier trial's cleanup cannot be taken for this one."""

    def __init__(self) -> None:
        self.fired = threading.Event()
        self.stamp = 0.0

    def __call__(self) -> None:
        if not self.fired.is_set():
            self.stamp = time.monotonic()
            self.fired.set()


def _inner_latency(trials: int) -> dict[str, list[float]]:
    """Runs inside the cgroup: alternate our monitor and a 1 s polling loop."""
    import numpy as np

    from pathoai_memobs.readers import MemorySampler

    config = MemoryConfig()
    floor = int(config.emergency_cleanup_threshold_mb) << 20
    out: dict[str, list[float]] = {"ours": [], "poll_1s": [], "early": []}
    sampler = MemorySampler()
    for _ in range(2):  # the VM backs guest pages on first touch: warm them, untimed
        warm = np.ones(sampler.sample().available_bytes - floor - (64 << 20), np.uint8)
        del warm
    for _ in range(trials):
        for kind in ("ours", "poll_1s"):
            probe = Probe()
            stop = threading.Event()
            if kind == "ours":
                monitor = MemoryMonitor(config, emergency_cooldown_s=0)
                monitor.register_cleanup_callback(probe, name="probe")
                monitor.start()
            else:
                poller = threading.Thread(target=_poll_loop, args=(sampler, floor, stop, probe))
                poller.start()
            time.sleep(1.3)  # at rest: the sampler is in its full-interval sleep
            begin = time.monotonic()
            block = np.ones(sampler.sample().available_bytes - floor + (64 << 20), np.uint8)
            done = time.monotonic()
            probe.fired.wait(5)
            if probe.fired.is_set() and probe.stamp < begin:
                out["early"].append(1.0)  # fired before the allocation: not a detection
            late = max(0.0, probe.stamp - done) * 1000
            out[kind].append(late if probe.fired.is_set() else 5000.0)
            out.setdefault(f"{kind}_alloc", []).append((done - begin) * 1000)
            del block
            if kind == "ours":
                monitor.stop()
            else:
                stop.set()
                poller.join()
            time.sleep(0.2)
    return out


def _latency_rows() -> tuple[list[Row], str]:
    from pathoai_memobs.cgroup_sandbox import CgroupUnavailableError, memory_cgroup

    progress("detection latency inside a 1 GiB cgroup (15 trials each, alternating)")
    try:
        with memory_cgroup(1 << 30, prefix="pathoai-bench") as group:
            proc = subprocess.run(
                group.wrap([sys.executable, "-m", "bench.bench_monitor", "--inner", "15"]),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            result = json.loads(proc.stdout)
            kills = group.oom_kills()
    except CgroupUnavailableError as exc:
        return [], f"Detection latency was not measured: {exc}."
    ours, theirs = statistics.median(result["ours"]), statistics.median(result["poll_1s"])
    row = Row(
        case="detection latency, allocation to first callback (1 GiB cgroup)",
        ours=ours,
        baseline=theirs,
        unit="ms",
        target=f"<= {LATENCY_TARGET_MS:g} ms",
        met=ours <= LATENCY_TARGET_MS,
        baseline_name="1 s polling loop",
    )
    allocs = sorted(result["ours_alloc"] + result["poll_1s_alloc"])
    trials = ", ".join(f"{x:.0f}" for x in result["ours"])
    base = ", ".join(f"{x:.0f}" for x in result["poll_1s"])
    notes = (
        f"Latency trials (ms): ours [{trials}]; 1 s polling [{base}]. OOM kills: {kills}. "
        f"Allocations took {allocs[0]:.0f} to {allocs[-1]:.0f} ms (median "
        f"{statistics.median(allocs):.0f} ms); a detection while the allocation is still "
        f"running counts 0. Callbacks before an allocation began: {len(result['early'])}."
    )
    return [row], notes


def run() -> tuple[list[Row], str]:
    rows, floors = _cpu_rows()
    latency, notes = _latency_rows()
    notes += (
        f"\n\nAt 1 Hz the cost is the wake itself: on this VM a Python thread that only wakes "
        f"from poll() once a second uses {floors['wake']:.4f} % of a core, and one that also "
        f"reads /proc/meminfo {floors['meminfo']:.4f} % (after a second asleep the caches are "
        "cold: the same pread takes about 60 us instead of 2). At rest the monitor takes one "
        "reading and makes three comparisons against a precomputed band (pressure.rest_band); "
        "limits, PSI and the process RSS are re-read only every few seconds."
    )
    return rows + latency, notes


if __name__ == "__main__" and "--inner" in sys.argv:
    print(json.dumps(_inner_latency(int(sys.argv[-1]))))

"""The pressure engine's cost at rest and its speed under pressure (targets: at most
0.02 % of a core at 1 Hz, and 150 ms to detect a crossing).

CPU: our monitor thread and a plain psutil sampler thread (``virtual_memory`` + RSS every
interval, the usual home-grown monitor) take turns, each alone for a 3 s window (10 rounds,
so 30 s of each at each rate), at 1 Hz and at 10 Hz; each thread's CPU clock, read from
outside (``pthread_getcpuclockid``, so measuring costs the thread nothing), gives its % of
one core; medians of the rounds. Alone, because two threads waking in phase make each
other wait for the GIL. At 1 Hz three more take their turns: the same monitor with its
Python rest loop (what an installation without a C compiler runs), and two floors, a
Python thread that only wakes from ``poll()`` and one that wakes and reads /proc/meminfo
(the one file no host sampler can skip), so the table shows what part is the VM's. The
same comparison also runs inside a real 2 GiB cgroup (reported): the usual container,
where the adaptive pace is faster than the interval and more files are read per sample.

Detection latency: inside a real 1 GiB cgroup, a child pushes available memory under the
500 MB floor with a real allocation (touched), in two scenarios: from rest, one allocation
of all the headroom and 64 MiB more; from near the floor, an untimed allocation leaves
32 MiB of headroom and a timed 96 MiB one crosses. Latency is from the crossing
allocation's return to the first emergency callback (0 when the callback came while it
still ran; a callback before it began is left out and counted). Two untimed allocations
come first: on a fresh VM the first touch of guest pages is slow. Ours (default 1 s
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
from typing import Any

import psutil

from pathoai_memobs import MemoryConfig, MemoryMonitor, rest

from .harness import Row, progress

TITLE = "Pressure engine: monitor CPU at rest, detection latency under pressure"
CPU_TARGET_PCT = 0.02
LATENCY_TARGET_MS = 150.0
WINDOW_S = 3.0
ROUNDS = 10  # 10 windows of 3 s: 30 s of each sampler at each rate


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
    compiled = rest.available()
    ours_name = "compiled rest loop" if compiled else "Python rest loop (_rest not built)"
    rows = []
    floors: dict[str, list[float]] = {"wake": [], "meminfo": [], "python": []}
    for hz in (1, 10):
        ours: list[float] = []
        theirs: list[float] = []
        for i in range(ROUNDS):
            config = MemoryConfig(monitoring_interval_sec=1 / hz)
            ours.append(_window(MemoryMonitor(config)))
            theirs.append(_window(psutil_sampler(1 / hz)))
            if hz == 1:
                if compiled:
                    floors["python"].append(_window(MemoryMonitor(config, native=False)))
                floors["wake"].append(_window(LoopThread(1.0, None)))
                floors["meminfo"].append(_window(meminfo_reader(1.0)))
            progress(
                f"{hz} Hz round {i + 1}/{ROUNDS}: ours {ours[-1]:.4f} %, psutil {theirs[-1]:.4f} %"
                + (
                    f", Python loop {floors['python'][-1] if compiled else float('nan'):.4f} %, "
                    f"floors {floors['wake'][-1]:.4f} / {floors['meminfo'][-1]:.4f} %"
                    if hz == 1
                    else ""
                )
            )
        o, t = statistics.median(ours), statistics.median(theirs)
        rows.append(
            Row(
                case=f"monitor thread CPU at {hz} Hz, {ours_name} (% of one core)",
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
                ("python", "the same monitor with native=False (the Python rest loop)"),
                ("wake", "floor: a Python thread that only wakes from poll()"),
                ("meminfo", "floor: a Python thread that wakes and reads /proc/meminfo"),
            ):
                if not floors[key]:
                    continue
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
    return rows, {k: statistics.median(v) for k, v in floors.items() if v}


def _run_in_cgroup(limit: int, flag: str, count: int, timeout_s: int) -> tuple[Any, int]:
    """Run this module with ``flag count`` in a new cgroup of ``limit`` bytes: its JSON
    output and the cgroup's OOM kills. Raises CgroupUnavailableError where none can be made."""
    from pathoai_memobs.tools.cgroup_sandbox import memory_cgroup

    with memory_cgroup(limit, prefix="pathoai-bench") as group:
        proc = subprocess.run(
            group.wrap([sys.executable, "-m", "bench.bench_monitor", flag, str(count)]),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        return json.loads(proc.stdout), group.oom_kills()


CGROUP_CPU_LIMIT = 2 << 30
CGROUP_CPU_ROUNDS = 5


def _inner_cpu(rounds: int) -> dict[str, float]:
    """Runs inside the limited cgroup: medians of ours (both loops) and psutil at 1 s."""
    found: dict[str, list[float]] = {"ours": [], "python": [], "psutil": []}
    config = MemoryConfig(monitoring_interval_sec=1.0)
    for _ in range(rounds):
        found["ours"].append(_window(MemoryMonitor(config)))
        found["python"].append(_window(MemoryMonitor(config, native=False)))
        found["psutil"].append(_window(psutil_sampler(1.0)))
    return {k: statistics.median(v) for k, v in found.items()}


def _cgroup_cpu_rows() -> tuple[list[Row], str]:
    """The same at rest inside a small limited cgroup, the usual container: there every
    reading is within a few seconds' fill of a rung, so the adaptive pace is faster than
    the interval, and the limit, usage and memory.stat files are read on each sample."""
    from pathoai_memobs.tools.cgroup_sandbox import CgroupUnavailableError

    progress(f"monitor CPU inside a {CGROUP_CPU_LIMIT >> 30} GiB cgroup")
    try:
        found, _ = _run_in_cgroup(CGROUP_CPU_LIMIT, "--inner-cpu", CGROUP_CPU_ROUNDS, 300)
    except CgroupUnavailableError as exc:
        return [], f" The in-cgroup CPU was not measured: {exc}."
    rows = [
        Row(
            case=f"monitor thread CPU inside a {CGROUP_CPU_LIMIT >> 30} GiB cgroup, 1 s "
            f"interval, {name} (% of one core)",
            ours=found[key],
            baseline=found["psutil"],
            unit="%",
            target="(reported)",
            met=None,
            baseline_name="psutil sampler thread, 1 Hz",
        )
        for key, name in (("ours", "compiled rest loop"), ("python", "Python rest loop"))
    ]
    note = (
        f" Inside the {CGROUP_CPU_LIMIT >> 30} GiB cgroup the monitor rests at 0.64 s, not "
        "1 s: 1.5 GiB of headroom to the floor fills in 0.73 s at the assumed 2 GiB/s, and "
        "the resting pace is the slowest step (1 s x 0.8^k) no slower than that."
    )
    return rows, note


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


#: The two ways a trial crosses the floor: from rest, one allocation of a little more than
#: all the headroom; from near the floor, an untimed allocation leaves NEAR_HEADROOM above
#: it, and a small timed one (CROSSING) pushes memory under it, so the crossing happens
#: at a known moment instead of somewhere inside a long allocation.
SCENARIOS = ("rest", "near")
NEAR_HEADROOM = 32 << 20
CROSSING = 96 << 20


def _inner_latency(trials: int) -> dict[str, list[float]]:
    """Runs inside the cgroup: in both scenarios, alternate our monitor and a 1 s polling
    loop; per trial, the ms from the crossing allocation's return to the first callback."""
    import numpy as np

    from pathoai_memobs.readers import MemorySampler

    config = MemoryConfig()
    floor = int(config.emergency_cleanup_threshold_mb) << 20
    out: dict[str, list[float]] = {"early": []}
    sampler = MemorySampler()
    for _ in range(2):  # the VM backs guest pages on first touch: warm them, untimed
        warm = np.ones(sampler.sample().available_bytes - floor - (64 << 20), np.uint8)
        del warm
    for _ in range(trials):
        for scenario in SCENARIOS:
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
                headroom = sampler.sample().available_bytes - floor
                bulk = None
                if scenario == "near":
                    bulk = np.ones(headroom - NEAR_HEADROOM, np.uint8)
                time.sleep(1.3)  # the sampler settles: at rest, or sampling fast near the floor
                begin = time.monotonic()
                size = CROSSING if scenario == "near" else headroom + (64 << 20)
                block = np.ones(size, np.uint8)
                done = time.monotonic()
                probe.fired.wait(5)
                if probe.fired.is_set() and probe.stamp < begin:
                    out["early"].append(1.0)  # fired before the allocation: no detection, left out
                else:
                    late = max(0.0, probe.stamp - done) * 1000
                    out.setdefault(f"{scenario}_{kind}", []).append(
                        late if probe.fired.is_set() else 5000.0
                    )
                out.setdefault(f"{scenario}_alloc", []).append((done - begin) * 1000)
                del block, bulk
                if kind == "ours":
                    monitor.stop()
                else:
                    stop.set()
                    poller.join()
                time.sleep(0.2)
    return out


def _latency_rows() -> tuple[list[Row], str]:
    from pathoai_memobs.tools.cgroup_sandbox import CgroupUnavailableError

    trials = 11
    progress(f"detection latency inside a 1 GiB cgroup ({trials} trials per scenario and sampler)")
    try:
        result, kills = _run_in_cgroup(1 << 30, "--inner", trials, 400)
    except CgroupUnavailableError as exc:
        return [], f"Detection latency was not measured: {exc}."
    rows, notes = [], []
    for scenario, what in (
        ("rest", "from rest, one allocation past the floor"),
        (
            "near",
            f"from {NEAR_HEADROOM >> 20} MiB above the floor, a {CROSSING >> 20} MiB allocation",
        ),
    ):
        ours, theirs = result[f"{scenario}_ours"], result[f"{scenario}_poll_1s"]
        rows.append(
            Row(
                case=f"detection latency, {what} (1 GiB cgroup)",
                ours=statistics.median(ours),
                baseline=statistics.median(theirs),
                unit="ms",
                target=f"<= {LATENCY_TARGET_MS:g} ms",
                met=statistics.median(ours) <= LATENCY_TARGET_MS,
                baseline_name="1 s polling loop",
            )
        )
        allocs = sorted(result[f"{scenario}_alloc"])
        notes.append(
            f"{scenario}: ours [{', '.join(f'{x:.0f}' for x in ours)}] ms; 1 s polling "
            f"[{', '.join(f'{x:.0f}' for x in theirs)}] ms; the timed allocations took "
            f"{allocs[0]:.0f} to {allocs[-1]:.0f} ms (median {statistics.median(allocs):.0f})."
        )
    return rows, (
        "Latency is from the crossing allocation's return to the first callback; a callback "
        "while the allocation still runs counts 0 (from rest, the allocation is long and "
        "the crossing falls somewhere inside it; near the floor it falls at its end). "
        + " ".join(notes)
        + f" OOM kills: {kills}. Callbacks before an allocation began: {len(result['early'])}."
    )


def run() -> tuple[list[Row], str]:
    rows, floors = _cpu_rows()
    in_cgroup, cgroup_note = _cgroup_cpu_rows()
    latency, notes = _latency_rows()
    python = floors.get("python")
    notes += (
        "\n\nAt 1 Hz the cost is the wake: on this VM a Python thread that only wakes from "
        f"poll() once a second uses {floors['wake']:.4f} % of a core, and one that also reads "
        f"/proc/meminfo {floors['meminfo']:.4f} % (after a second asleep every cache is cold, "
        "the interpreter's included). At rest the monitor waits in the compiled loop of "
        "rest.py instead, with the GIL released: it polls, reads the same files, checks the "
        "rest band and goes back to sleep without waking the interpreter, which it enters "
        "only for a decision (a kernel event, a reading outside the band) or a full step "
        "once a minute."
        + (
            f" The same monitor in its Python rest loop (where _rest cannot be built): "
            f"{python:.4f} %."
            if python is not None
            else ""
        )
        + cgroup_note
    )
    return rows + in_cgroup + latency, notes


if __name__ == "__main__" and "--inner" in sys.argv:
    print(json.dumps(_inner_latency(int(sys.argv[-1]))))
if __name__ == "__main__" and "--inner-cpu" in sys.argv:
    print(json.dumps(_inner_cpu(int(sys.argv[-1]))))

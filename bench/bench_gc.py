"""Garbage collection: freezing long-lived objects, the pause timer's cost, each level's cost."""

from __future__ import annotations

import gc
import statistics
import time

from pathoai_memobs.gc_manager import LEVELS, GarbageCollectionManager
from pathoai_memobs.gc_pauses import PauseTimer

from .harness import Row, progress

TITLE = "Garbage collection: freeze, pause-timer cost, levels"


class Obj:
    __slots__ = ("ref",)

    def __init__(self) -> None:
        self.ref: object = None


def _full_pause_ms(rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _freeze_rows() -> list[Row]:
    rows = []
    manager = GarbageCollectionManager()
    for millions in (1, 3):
        progress(f"full collection with {millions}M long-lived objects")
        heap = [Obj() for _ in range(millions * 1_000_000)]
        unfrozen = _full_pause_ms()
        manager.freeze()
        frozen = _full_pause_ms()
        manager.unfreeze()
        del heap
        gc.collect()
        rows.append(
            Row(
                f"full collection, {millions}M objects, after freeze()",
                frozen,
                unfrozen,
                "ms",
                ">= 50x faster",
                unfrozen / frozen >= 50,
                "same heap unfrozen",
            )
        )
    return rows


def _timer_row() -> Row:
    progress("pause timer cost per collection")
    timer = PauseTimer()
    gc.collect()
    with_timer, without = [], []
    n = 2000
    for _ in range(21):
        start = time.perf_counter()
        for _ in range(n):
            gc.collect(0)
        without.append((time.perf_counter() - start) / n)
        timer.install()
        start = time.perf_counter()
        for _ in range(n):
            gc.collect(0)
        with_timer.append((time.perf_counter() - start) / n)
        timer.uninstall()
    base = statistics.median(without) * 1e6
    cost = statistics.median(with_timer) * 1e6 - base
    return Row(
        "pause timer, added cost per collection",
        cost,
        base,
        "us",
        "<= 2 us",
        cost <= 2.0,
        "young collection without the timer",
    )


def _workload() -> None:
    """Allocation-heavy and cycle-making: tiles with back references, results dicts."""
    keep: list[object] = []
    for i in range(200_000):
        a, b = Obj(), Obj()
        a.ref, b.ref = b, a  # a cycle, as parent/child links in parsed results make
        rec = {"tile": i, "score": i * 0.5, "obj": a}
        if i % 10 == 0:
            keep.append(rec)
    keep.clear()


def _level_rows() -> tuple[list[Row], str]:
    rows, lines = (
        [],
        [
            "| level | thresholds | collections/s | GC share of time | wall (median) |",
            "|---|---|---:|---:|---:|",
        ],
    )
    saved = gc.get_threshold()
    shares: dict[str, float] = {}
    for name, level in LEVELS.items():
        progress(f"level {name}")
        walls, counts, shares_l = [], [], []
        for _ in range(7):
            timer = PauseTimer()
            gc.collect()
            gc.set_threshold(*level.thresholds)
            timer.install()
            start = time.perf_counter()
            _workload()
            wall = time.perf_counter() - start
            timer.uninstall()
            snap = timer.snapshot()
            walls.append(wall)
            counts.append(snap.total_count / wall)
            shares_l.append(snap.total_seconds / wall)
        gc.set_threshold(*saved)
        shares[name] = statistics.median(shares_l) * 100
        rate, wall_ms = statistics.median(counts), statistics.median(walls) * 1e3
        cells = [name, str(level.thresholds), f"{rate:,.0f}", f"{shares[name]:.1f} %"]
        lines.append("| " + " | ".join([*cells, f"{wall_ms:.0f} ms"]) + " |")
    for name in LEVELS:
        rows.append(
            Row(
                f"level {name}: GC share of time",
                shares[name],
                shares["moderate"],
                "%",
                "informative",
                None,
                "moderate",
            )
        )
    return rows, "\n".join(lines)


def run() -> tuple[list[Row], str]:
    rows = _freeze_rows()
    rows.append(_timer_row())
    level_rows, level_table = _level_rows()
    rows += level_rows
    notes = (
        "Levels on one fixed allocation-heavy workload (200,000 iterations, each making a "
        "two-object cycle and a dict; every tenth kept until the end):\n\n" + level_table
    )
    return rows, notes

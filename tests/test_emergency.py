"""run_plan, the core of an emergency run, driven by a fake measure and clock; one callback
inside its budget."""

from __future__ import annotations

import dataclasses
import threading

from pathoai_memobs.emergency import (
    EmergencyRun,
    EmergencyTotals,
    RegisteredCallback,
    Step,
    StepStatus,
    cooldown_after,
    run_plan,
    run_with_budget,
)

MIB = 1 << 20


class Memory:
    """Available bytes that steps free; every measure is counted."""

    def __init__(self, available: int) -> None:
        self.available = available
        self.measures = 0

    def measure(self) -> int:
        self.measures += 1
        return self.available

    def frees(self, nbytes: int, status: StepStatus = StepStatus.OK) -> Step:
        def run() -> StepStatus:
            self.available += nbytes
            return status

        return Step(f"frees_{nbytes // MIB}", run)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.5  # every look at the clock: half a second later
        return self.now


def test_steps_run_in_order_until_the_target_and_each_is_measured() -> None:
    mem = Memory(100 * MIB)
    steps = [mem.frees(50 * MIB), mem.frees(0, StepStatus.FAILED), mem.frees(500 * MIB)]
    steps.append(mem.frees(1000 * MIB))
    outcome = run_plan(steps, mem.measure, 550 * MIB, Clock())
    assert [r.name for r in outcome.steps] == ["frees_50", "frees_0", "frees_500"]
    assert [r.freed_bytes for r in outcome.steps] == [50 * MIB, 0, 500 * MIB]
    assert [r.status for r in outcome.steps] == [StepStatus.OK, StepStatus.FAILED, StepStatus.OK]
    assert not outcome.steps[1].ok and outcome.steps[0].ok
    assert all(r.duration_s == 0.5 for r in outcome.steps)  # two clock looks per step
    assert (outcome.available_before, outcome.available_after) == (100 * MIB, 650 * MIB)
    assert mem.measures == 4  # before the first step and after each one that ran


def test_nothing_runs_when_already_at_the_target() -> None:
    mem = Memory(600 * MIB)
    outcome = run_plan([mem.frees(MIB)], mem.measure, 550 * MIB)
    assert outcome.steps == () and mem.available == 600 * MIB


def test_memory_taken_meanwhile_counts_as_nothing_freed() -> None:
    mem = Memory(100 * MIB)

    def others_allocate() -> StepStatus:
        mem.available -= 30 * MIB
        return StepStatus.OK

    outcome = run_plan([Step("busy", others_allocate)], mem.measure, 550 * MIB)
    assert outcome.steps[0].freed_bytes == 0 and outcome.available_after == 70 * MIB


def test_only_a_futile_run_or_a_failed_reading_holds_the_next_one() -> None:
    """The cooldown follows what a run proved: nothing left to win, or no reading at all."""

    def run(before: int, after: int, steps: int = 1) -> EmergencyRun:
        mem = Memory(before)
        plan = [Step(f"s{i}", lambda: StepStatus.OK) for i in range(steps)]
        outcome = run_plan(plan, lambda: after if mem.measures else mem.measure(), 550 * MIB)
        return EmergencyRun(
            "level",
            0.0,
            0.1,
            before,
            outcome.available_after,
            outcome.available_after >= 550 * MIB,
            outcome.steps,
        )

    assert cooldown_after(run(100 * MIB, 90 * MIB), 5.0) == 5.0  # ran, won nothing back
    assert cooldown_after(run(100 * MIB, 200 * MIB), 5.0) == 0.0  # won some: go on at once
    already = run(600 * MIB, 600 * MIB)  # restored before it began: it ran no step
    assert already.steps == () and already.freed_bytes == 0
    assert cooldown_after(already, 5.0) == 0.0  # proves nothing about what is left to win
    raced = dataclasses.replace(run(100 * MIB, 100 * MIB), evicted_sessions=1)
    assert cooldown_after(raced, 5.0) == 0.0  # evicted one while as much was allocated
    assert cooldown_after(None, 5.0) == 5.0  # could not read memory: do not spin on it


def test_a_callback_that_raises_overruns_or_still_runs() -> None:
    totals, lock = EmergencyTotals(), threading.Lock()

    def boom() -> None:
        raise RuntimeError("bug")

    assert run_with_budget(RegisteredCallback("ok", lambda: None, 1, 0), 1, totals, lock) is (
        StepStatus.OK
    )
    assert run_with_budget(RegisteredCallback("boom", boom, 1, 1), 1, totals, lock) is (
        StepStatus.FAILED
    )
    release = threading.Event()
    hangs = RegisteredCallback("hangs", lambda: release.wait(5), 1, 2)
    assert run_with_budget(hangs, 0.05, totals, lock) is StepStatus.OVERRAN
    assert run_with_budget(hangs, 0.05, totals, lock) is StepStatus.SKIPPED
    release.set()
    assert totals.callback_failures["boom"] == 1 and totals.callback_overruns["hangs"] == 1

"""MemoryMonitor: the reference's monitor, a facade over the parts that do its four jobs.

- readings and the level: here, with the ladder's decisions in ``pressure``;
- admission: ``admission.Admission`` over a ``ledger`` (reserved bytes, refusals, hints);
- the loop: ``sampling_loop`` (``level_actions`` acts); cleanup: ``emergency_cleanup``
  (its methods in ``monitor_cleanup``); GPUs: ``gpu_watch`` (a ladder per device).

A refused request starts an emergency cleanup in the background only while the level is
EMERGENCY; otherwise memory is merely short for that size and nothing needs freeing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING

from .admission import Admission, GpuNeed
from .breakdown import Breakdown
from .config import MemoryConfig
from .emergency_cleanup import EmergencyCleanup
from .errors import ErrorCounts
from .gate import AdmissionGate
from .gpu_watch import GpuWatch
from .ledger import GPU_DEVICES, open_ledger
from .level_actions import LevelActions, log_level_change
from .monitor_cleanup import CleanupMethods
from .postmortem import Keeper
from .pressure import Level, Thresholds, classify, headroom_bytes
from .readers.psi import CachedPsi, Pressure
from .readers.select import open_sampler
from .reading import MemoryMetrics, Reading
from .sampling_loop import Sampler, SamplingLoop
from .session_admission import hold_session, hold_session_async
from .units import non_negative, to_bytes_mb

if TYPE_CHECKING:
    from .gc_manager import GarbageCollectionManager
    from .readers.gpu import GpuReader
    from .session_manager import SessionManager

#: How long cgroup limits are reused before a full step reads them again; how often PSI
#: is read at most (when an exporter or the status screen asks).
LIMIT_TTL_S = PSI_TTL_S = 1.0


class MemoryMonitor(CleanupMethods):
    """Reads memory as the OOM killer sees it, walks the pressure ladder, and decides whether
    new work may start. ``root`` points the readers at another tree (fixture trees);
    ``sampler`` replaces them; ``source="psutil"`` reads through psutil (machines without
    /proc; "auto" picks it only there). ``sessions`` and ``gc_manager`` give emergency
    cleanup its built-in steps. The thread starts with ``start()``, ``with``, or on its own
    when the config enables background monitoring; ``native=False`` keeps its rest in Python.
    ``gpu`` replaces the GPU reader (an NVML stand-in in tests; by default NVML and the
    application's torch, off where neither is there).
    """

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        root: str = "/",
        sampler: Sampler | None = None,
        source: str = "auto",
        sessions: SessionManager | None = None,
        gc_manager: GarbageCollectionManager | None = None,
        wakeups: bool = True,
        native: bool = True,
        emergency_cooldown_s: float = 5.0,
        callback_budget_s: float = 2.0,
        proactive_gc_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        gpu: GpuReader | None = None,
    ) -> None:
        if config is not None and not isinstance(config, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(config).__name__}")
        self.config = config = config if config is not None else MemoryConfig()
        self.thresholds = Thresholds.from_config(config)
        self._sampler = sampler if sampler is not None else open_sampler(source, root, LIMIT_TTL_S)
        self._sessions: SessionManager | None = None
        self._breakdown = Breakdown(
            lambda: getattr(getattr(self._sampler, "cgroup", None), "location", None), root
        )
        self._last: Reading | None = None
        self._level, self._last_good_wall, self._samples = Level.NORMAL, 0.0, 0
        self._errors = ErrorCounts()
        self._psi = CachedPsi.for_sampler(self._sampler, root, PSI_TTL_S, clock)
        interval, floor = config.monitoring_interval_sec, self.thresholds.floor_bytes
        self._admission = Admission(floor, interval, clock, open_ledger(config))
        self._cleanup = EmergencyCleanup(
            sample=self.sample,
            target_bytes=self.thresholds.restored_bytes,
            sessions=lambda: self.sessions,
            gc_manager=lambda: self._actions.gc_manager,
            count_error=self._errors.count,
            cooldown_s=emergency_cooldown_s,
            callback_budget_s=callback_budget_s,
            clock=clock,
            managed=self.managed_bytes,
        )
        gc_every = proactive_gc_interval_s
        self._actions = LevelActions(
            config, gc_manager, gc_every, self._cleanup.start, clock,
            thresholds=self.thresholds, sessions=lambda: self.sessions,
        )  # fmt: skip
        self._loop = SamplingLoop(
            self._sampler,
            root=root,
            interval_s=interval,
            thresholds=self.thresholds,
            step=self._step,
            level=lambda: self._level,
            count_error=self._errors.count,
            wakeups=wakeups,
            native=native,
            clock=clock,
        )
        self._gate = AdmissionGate(
            sample=self._sampler.sample,
            last=lambda: self._last,
            observe=self._observe,
            level=lambda: self._level,
            admission=self._admission,
            errors=self._errors,
            sessions=lambda: self.sessions,
            cooldown_left_s=self._cleanup.cooldown_left_s,
            start_cleanup=self._cleanup.start,
            idle_free_s=config.session_idle_free_minutes * 60,
            floor=lambda total: self.thresholds.for_total(total).floor_bytes,
            gpu=lambda device, nbytes: self._gpu.need(device, nbytes),  # noqa: PLW0108 -- made below
        )
        self._gpu = GpuWatch(
            config, gpu, sessions=lambda: self.sessions, count_error=self._errors.count,
            cooldown_s=emergency_cooldown_s, callback_budget_s=callback_budget_s, clock=clock,
        )  # fmt: skip
        self._gate.start_gpu_cleanup = lambda device: self._gpu.cleanup(device).start("rejection")
        self.sessions = sessions
        self._postmortem = (
            Keeper(config, self.oom_kills, self.emergency_runs_since, self._errors.count)
            if config.state_dir
            else None
        )
        if config.enable_background_monitoring:
            self.start()

    @property
    def sessions(self) -> SessionManager | None:
        """The session manager whose sessions cleanup and admission may free; its spilled
        sessions come back through this monitor's admission (``restore_gate``)."""
        return self._sessions

    @sessions.setter
    def sessions(self, sessions: SessionManager | None) -> None:
        if self._sessions is not None and self._sessions is not sessions:
            self._sessions.restore_gate = None
        if sessions is not None:
            sessions.restore_gate = self._gate
        self._sessions = sessions

    def sample(self) -> Reading:
        """Take a fresh reading (bytes), remember it, and move the level accordingly."""
        reading = self._sampler.sample()
        self._observe(reading)
        return reading

    def _observe(
        self, reading: Reading, required: int = 0, hold: bool = False, ticket: int = 0,
        gpu: GpuNeed | None = None,
    ) -> tuple[bool, int]:  # fmt: skip
        """Record ``reading``, move the level, and under the same lock admit ``required``
        bytes (and ``gpu``; held when ``hold``): (admitted, bytes reserved before)."""
        with self._admission.lock:  # the reading, the level and admission at once
            previous = self._level
            t = self.thresholds.for_total(reading.total_bytes)  # the rungs fitted to the limit
            if t.floor_bytes != self._admission.floor_bytes:  # the floor follows the limit
                self._admission.floor_bytes = t.floor_bytes
                self._cleanup.target_bytes = t.restored_bytes
            level = classify(reading.used_ratio, reading.available_bytes, t, previous)
            self._level, self._last, self._last_good_wall = level, reading, reading.timestamp
            self._samples += 1
            admitted, reserved = self._admission.admit_locked(
                level, reading.available_bytes, required, hold=hold, ticket=ticket, gpu=gpu
            )
        if level is not previous:
            log_level_change(previous, level, reading, self.managed_bytes())
        return admitted, reserved

    def _step(self, reading: Reading) -> int:  # observe, act; the headroom to the next rung
        self._observe(reading)
        if self._postmortem is not None:
            self._postmortem.keep(reading, self._level)
        try:
            self._actions.step(self._level, reading)
            self._gate.serve_peers()  # sessions held here that another worker waits for
        except Exception as exc:
            self._errors.count("action", exc)
        try:
            self._gpu.step()  # at rest too: the host's rest band knows nothing of GPUs
            if self._gpu.active is (self._loop.max_rest_s is None):  # found or lost a GPU
                gpu_pace = self.config.monitoring_interval_sec if self._gpu.active else None
                self._loop.max_rest_s = gpu_pace
        except Exception as exc:
            self._errors.count("gpu", exc)
        t, r = self.thresholds.for_total(reading.total_bytes), reading
        return headroom_bytes(r.total_bytes, r.used_bytes, r.available_bytes, t)

    @property
    def last_reading(self) -> Reading | None:
        """The latest reading taken, without taking a new one (None before the first)."""
        last, rest = self._last, self._loop.latest()
        return (
            rest if rest is not None and (last is None or rest.monotonic > last.monotonic) else last
        )

    def get_current_metrics(self) -> MemoryMetrics:
        """A fresh reading in the reference's units (MiB, percent)."""
        return MemoryMetrics.from_reading(self.sample())

    @property
    def level(self) -> Level:
        """The pressure level after the latest reading."""
        return self._level

    @property
    def pressure(self) -> Pressure | None:
        """PSI some/full avg10 as ratios, read at most once a second; None where unreadable."""
        return self._psi.read()

    @property
    def last_sample_timestamp(self) -> float:
        """Wall-clock time of the last good reading (0 before the first); old when stuck."""
        wall, rest = self._last_good_wall, self._loop.latest()
        return rest.timestamp if rest is not None and rest.timestamp > wall else wall

    @property
    def samples_total(self) -> int:
        """Readings taken by ``sample()``, the loop's full steps and its at-rest looks."""
        return self._samples + self._loop.rest_samples_total

    @property
    def errors_total(self) -> dict[str, int]:
        """Errors the monitor survived, by where they happened (sample, action, ...)."""
        return self._errors.totals()

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by this monitor's reservations in flight."""
        return self._admission.reserved_bytes

    @property
    def floor_bytes(self) -> int:
        """The emergency floor below which available memory must not be pushed, fitted to
        the limit of the latest reading (``Thresholds.for_total``)."""
        return self._admission.floor_bytes

    @property
    def requests_rejected_total(self) -> int:
        return self._admission.rejected_total

    @property
    def admission(self) -> Admission:
        """The admission part: requests, refusals, the line and its waits (for exporters)."""
        return self._admission

    def check_memory_available(self, required_mb: float) -> bool:
        """True when ``required_mb`` MiB fit above the emergency floor (after freeing idle
        sessions, see gate.py). Otherwise, or while EMERGENCY: ``InsufficientMemoryError``
        (with a retry hint) when request rejection is enabled (the default), else False.
        Bad input raises ValueError."""
        error = self._gate.admit(to_bytes_mb(required_mb), hold=False)
        if error is not None and self.config.enable_request_rejection:
            raise error
        return error is None

    def check_gpu_memory_available(self, required_mb: float, device: int = 0) -> bool:
        """``check_memory_available`` for GPU ``device``: True when ``required_mb`` MiB fit
        above its floor, below its EMERGENCY; else InsufficientGpuMemoryError (or False
        without request rejection). GpuUnavailableError where the device cannot be read."""
        ask = _gpu_ask(required_mb, device)
        error = self._gate.admit(0, hold=False, gpu=ask)
        if error is not None and self.config.enable_request_rejection:
            raise error
        return error is None

    def reserve(
        self, required_mb: float, *, wait_s: float = 0.0, new_work: bool = False,
        gpu_mb: float = 0.0, device: int = 0, session: str | None = None,
    ) -> AbstractContextManager[object]:  # fmt: skip
        """Admit ``required_mb`` MiB and hold them until the ``with`` block ends: two requests
        that each fit alone are not both admitted when together they don't. With ``wait_s``,
        wait in line that long for memory first; ``new_work`` (for no existing session) must
        fit the session budget too (``gate.budget``); ``gpu_mb`` MiB on GPU ``device`` must
        fit that device too, in the same decision and line; ``session``: the request works
        on that session, pinned and in memory for the block (``session_admission``). A
        refusal raises InsufficientMemoryError (InsufficientGpuMemoryError where the GPU
        refused); a session that is gone SessionNotFoundError."""
        wait = non_negative("wait_s", wait_s, maximum=3600)
        gpu = _gpu_ask(gpu_mb, device) if gpu_mb else None
        required = to_bytes_mb(required_mb)
        if session is not None and self.sessions is not None:
            return hold_session(self._gate, self.sessions, session, required, wait, gpu=gpu)
        return self._gate.hold(required, wait, new_work=new_work, gpu=gpu)

    def reserve_async(
        self, required_mb: float, *, wait_s: float = 0.0, new_work: bool = False,
        gpu_mb: float = 0.0, device: int = 0, session: str | None = None,
    ) -> AbstractAsyncContextManager[object]:  # fmt: skip
        """``reserve`` for an event loop (``async with``): waiting never blocks the loop."""
        wait = non_negative("wait_s", wait_s, maximum=3600)
        gpu = _gpu_ask(gpu_mb, device) if gpu_mb else None
        required = to_bytes_mb(required_mb)
        if session is not None and self.sessions is not None:
            return hold_session_async(self._gate, self.sessions, session, required, wait,
                                      gpu=gpu)  # fmt: skip
        return self._gate.hold_async(required, wait, new_work=new_work, gpu=gpu)

    @property
    def gpu(self) -> GpuWatch:
        """The GPU part: devices read last, their levels, cleanups (for exporters)."""
        return self._gpu

    @property
    def gate(self) -> AdmissionGate:
        """The admission gate: freeing, the line, the session budget."""
        return self._gate

    @property
    def running(self) -> bool:  # the background thread
        return self._loop.running

    def start(self) -> None:
        """Start the sampling thread (idempotent)."""
        self._loop.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the sampling thread and wait for it (idempotent); the post-mortem file, where
        kept, says this run stopped cleanly."""
        was_running = self._loop.running
        self._loop.stop(timeout_s)
        last = self.last_reading
        if self._postmortem is not None and was_running and last is not None:
            self._postmortem.keep(last, self._level, clean_stop=True)

    @property
    def previous_run(self) -> dict[str, object] | None:
        """How the latest earlier run in ``state_dir`` ended (``postmortem.ending``)."""
        return None if self._postmortem is None else self._postmortem.previous_run

    def __enter__(self) -> MemoryMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tick(self) -> float:
        """One step of the loop in this thread; how long to sleep before the next."""
        return self._loop.tick()

    @property
    def thread_cpu_seconds(self) -> float:
        """CPU time the background thread has used (read from its CPU clock)."""
        return self._loop.thread_cpu_seconds

    @property
    def wakeup_sources(self) -> tuple[str, ...]:
        """Kernel event sources armed for the background thread (empty: timer only)."""
        return self._loop.wakeup_sources

    @property
    def wakeups_total(self) -> dict[str, int]:
        """Early wake-ups of the background thread, by source."""
        return self._loop.wakeups_total


def _gpu_ask(required_mb: float, device: int) -> tuple[int, int]:
    """(device, bytes) for the gate; a bad device index or amount raises ValueError."""
    if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < GPU_DEVICES:
        raise ValueError(f"device must be a GPU index in 0..{GPU_DEVICES - 1}, got {device!r}")
    return device, to_bytes_mb(required_mb, "gpu_mb")

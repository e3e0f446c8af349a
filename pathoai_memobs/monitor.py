"""MemoryMonitor: the reference's monitor, a facade over the parts that do its four jobs.

- readings and the level: here (``sample``, ``level``, ``last_reading``), with the ladder's
  decisions in ``pressure``;
- admission: ``admission.Admission`` (reserved bytes, refusals, the retry hint);
- the background sampling loop: ``sampling_loop.SamplingLoop``;
- emergency cleanup: ``emergency_cleanup.EmergencyCleanup``.

A refused request starts an emergency cleanup in the background only while the level is
EMERGENCY; otherwise memory is merely short for that size and nothing needs freeing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .admission import Admission
from .config import MemoryConfig
from .emergency import EmergencyRun, EmergencyTotals
from .emergency_cleanup import EmergencyCleanup
from .logging import ERROR, INFO, LEVEL_CHANGED, MONITOR_ERROR, PROACTIVE_GC, WARNING, emit
from .pressure import Level, Thresholds, actions, classify, headroom_bytes
from .readers.psi import Pressure, PsiReader, psi_path
from .readers.select import open_sampler
from .reading import MemoryMetrics, Reading
from .sampling_loop import THREAD_NAME, Sampler, SamplingLoop
from .units import non_negative, positive, to_bytes_mb

if TYPE_CHECKING:
    from .exceptions import InsufficientMemoryError
    from .gc_manager import GarbageCollectionManager
    from .rest import NativeRest
    from .session_manager import SessionManager

__all__ = ["THREAD_NAME", "MemoryMonitor", "Sampler"]

#: How long the monitor reuses cgroup limits before reading them again.
LIMIT_TTL_S = 1.0
#: PSI is read when asked (by an exporter, the status screen), at most this often.
PSI_TTL_S = 1.0


class MemoryMonitor:
    """Reads memory as the OOM killer sees it, walks the pressure ladder, and decides whether
    new work may start.

    ``root`` points every reader at another filesystem tree (tests use fixture trees);
    ``sampler`` replaces the readers altogether; ``source="psutil"`` reads through psutil
    (for machines without /proc and cgroups; "auto" picks it only there). ``sessions`` and
    ``gc_manager`` give the emergency cleanup its built-in steps. The background thread
    starts on its own when the config's ``enable_background_monitoring`` is true, else with
    ``start()`` or ``with``. At rest it waits in the compiled loop of ``rest.py`` where that
    is built (``native=False`` keeps it in Python).
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
    ) -> None:
        if config is not None and not isinstance(config, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(config).__name__}")
        self.config = config if config is not None else MemoryConfig()
        cooldown = non_negative("emergency_cooldown_s", emergency_cooldown_s, maximum=86400)
        budget = positive("callback_budget_s", callback_budget_s, maximum=3600)
        self.proactive_gc_interval_s = non_negative(
            "proactive_gc_interval_s", proactive_gc_interval_s, maximum=86400
        )
        self.thresholds = Thresholds.from_config(self.config)
        self._sampler: Sampler = (
            sampler if sampler is not None else open_sampler(source, root, LIMIT_TTL_S)
        )
        self.sessions = sessions
        self._gc_manager = gc_manager
        self._clock = clock
        self._lock = threading.Lock()  # readings, level, reservations, error counts
        self._last: Reading | None = None
        self._level = Level.NORMAL
        self._last_good_wall = 0.0
        self._samples = 0
        self._errors: Counter[str] = Counter()
        self._next_proactive = 0.0
        self._pressure: Pressure | None = None
        self._psi: PsiReader | None = None
        self._psi_next = 0.0
        cgroup = getattr(self._sampler, "cgroup", None)
        if sampler is None and hasattr(self._sampler, "descriptors"):
            self._psi = PsiReader(psi_path(root, cgroup.location if cgroup else None))
        interval = self.config.monitoring_interval_sec
        self._admission = Admission(self.thresholds.floor_bytes, interval, self._lock, clock)
        self._loop = SamplingLoop(
            self._sampler,
            root=root,
            interval_s=interval,
            thresholds=self.thresholds,
            step=self._step,
            level=lambda: self._level,
            count_error=self._count_error,
            wakeups=wakeups,
            native=native,
            clock=clock,
        )
        self._cleanup = EmergencyCleanup(
            sample=self.sample,
            target_bytes=self.thresholds.restored_bytes,
            sessions=lambda: self.sessions,
            gc_manager=lambda: self._gc_manager,
            count_error=self._count_error,
            cooldown_s=cooldown,
            callback_budget_s=budget,
            clock=clock,
        )
        if self.config.enable_background_monitoring:
            self.start()

    # -- readings and the level -------------------------------------------------------------

    def sample(self) -> Reading:
        """Take a fresh reading (bytes), remember it, and move the level accordingly."""
        reading = self._sampler.sample()
        self._observe(reading)
        return reading

    def _observe(self, reading: Reading, required: int = 0, hold: bool = False) -> tuple[bool, int]:
        """Record ``reading`` and move the level; then, under the same lock, admit
        ``required`` bytes (holding them when ``hold``): (admitted, bytes reserved before)."""
        with self._lock:
            previous = self._level
            level = classify(reading.used_ratio, reading.available_bytes, self.thresholds, previous)
            self._level = level
            self._last = reading
            self._last_good_wall = reading.timestamp
            self._samples += 1
            admitted, reserved = self._admission.admit_locked(
                level, reading.available_bytes, required, hold=hold
            )
        if level is not previous:
            emit(
                WARNING if level > previous else INFO,
                LEVEL_CHANGED,
                pressure_level=level.name,
                previous_level=previous.name,
                used_ratio=round(reading.used_ratio, 4),
                available_bytes=reading.available_bytes,
                total_bytes=reading.total_bytes,
                source=reading.source,
            )
        return admitted, reserved

    @property
    def last_reading(self) -> Reading | None:
        """The latest reading taken, without taking a new one (None before the first)."""
        last, rest = self._last, self._loop.latest()
        if rest is not None and (last is None or rest.monotonic > last.monotonic):
            return rest
        return last

    def get_current_metrics(self) -> MemoryMetrics:
        """A fresh reading in the reference's units (MiB, percent)."""
        return MemoryMetrics.from_reading(self.sample())

    @property
    def level(self) -> Level:
        """The pressure level after the latest reading."""
        return self._level

    @property
    def pressure(self) -> Pressure | None:
        """PSI some/full avg10 (ratios); None where unreadable. Read when asked, at most once
        per ``PSI_TTL_S``: only exporters and people look at it."""
        psi = self._psi
        now = self._clock()
        if psi is not None and now >= self._psi_next:
            self._psi_next = now + PSI_TTL_S
            try:
                self._pressure = psi.read()
            except (OSError, ValueError):
                self._pressure = None  # PSI absent or disabled (psi=0): not an error
                self._psi = None
                psi.close()
        return self._pressure

    @property
    def last_sample_timestamp(self) -> float:
        """Wall-clock time of the last good reading (0 before the first): a dead or stuck
        monitor shows here as an old timestamp."""
        wall, rest = self._last_good_wall, self._loop.latest()
        return rest.timestamp if rest is not None and rest.timestamp > wall else wall

    @property
    def samples_total(self) -> int:
        """Readings taken: by ``sample()``, the background thread's full steps, and its
        cheap at-rest looks."""
        return self._samples + self._loop.rest_samples_total

    @property
    def _rest_samples_total(self) -> int:
        return self._loop.rest_samples_total

    @property
    def _native(self) -> NativeRest | None:
        return self._loop.native

    @property
    def errors_total(self) -> dict[str, int]:
        """Errors the monitor survived, by where they happened (sample, action, ...)."""
        return dict(self._errors)

    def _count_error(self, where: str, exc: BaseException) -> None:
        with self._lock:
            self._errors[where] += 1
        emit(ERROR, MONITOR_ERROR, where=where, error=type(exc).__name__, exc_info=exc)

    # -- admission --------------------------------------------------------------------------

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by reservations in flight."""
        return self._admission.reserved_bytes

    @property
    def floor_bytes(self) -> int:
        """The emergency floor below which available memory must not be pushed."""
        return self.thresholds.floor_bytes

    @property
    def requests_rejected_total(self) -> int:
        return self._admission.rejected_total

    def check_memory_available(self, required_mb: float) -> bool:
        """True when ``required_mb`` MiB fit above the emergency floor.

        When they don't, or while the level is EMERGENCY: raises ``InsufficientMemoryError``
        (with a retry-after hint) if request rejection is enabled (the default), else
        returns False. Bad input raises ValueError.
        """
        required = to_bytes_mb(required_mb)
        reading = self._sampler.sample()
        admitted, reserved = self._observe(reading, required)
        if admitted:
            return True
        error = self._refuse(required, reading, reserved)
        if self.config.enable_request_rejection:
            raise error
        return False

    @contextmanager
    def reserve(self, required_mb: float) -> Iterator[None]:
        """Admit ``required_mb`` MiB and hold them until the block ends.

        Two concurrent requests that each fit alone are not both admitted when together
        they don't. Refusal follows ``check_memory_available``: with request rejection
        disabled, a refused reservation still raises, since the block cannot be skipped.
        """
        required = to_bytes_mb(required_mb)
        reading = self._sampler.sample()
        admitted, reserved = self._observe(reading, required, hold=True)
        if not admitted:
            raise self._refuse(required, reading, reserved)
        try:
            yield
        finally:
            self._admission.release(required)

    def _refuse(self, required: int, reading: Reading, reserved: int) -> InsufficientMemoryError:
        level = self._level
        error = self._admission.refuse(
            required, reading, reserved, level, self._cleanup.cooldown_left_s()
        )
        if level is Level.EMERGENCY:
            self._cleanup.start("rejection")
        return error

    # -- background thread ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self) -> None:
        """Start the sampling thread (idempotent)."""
        self._loop.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the sampling thread and wait for it (idempotent)."""
        self._loop.stop(timeout_s)

    def __enter__(self) -> MemoryMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tick(self) -> float:
        """One step of the background loop: sample, act on the level, and return how long
        to sleep before the next (shorter the closer memory is to a rung)."""
        return self._loop.tick()

    @property
    def thread_cpu_seconds(self) -> float:
        """CPU time the background thread has used since it started (read from its CPU
        clock by the caller, so measuring costs the thread nothing)."""
        return self._loop.thread_cpu_seconds

    @property
    def wakeup_sources(self) -> tuple[str, ...]:
        """Kernel event sources armed for the background thread (empty: timer only)."""
        return self._loop.wakeup_sources

    @property
    def wakeups_total(self) -> dict[str, int]:
        """Early wake-ups of the background thread, by source."""
        return self._loop.wakeups_total

    def _step(self, reading: Reading) -> int:
        """Observe ``reading`` and act on its level; the headroom to the nearest rung."""
        self._observe(reading)
        try:
            self._act(self._level)
        except Exception as exc:
            self._count_error("action", exc)
        t = self.thresholds
        return headroom_bytes(reading.total_bytes, reading.used_bytes, reading.available_bytes, t)

    def _act(self, level: Level) -> None:
        todo = actions(
            level,
            self._clock(),
            self._next_proactive,
            proactive_gc=self.config.enable_proactive_gc,
            gc_interval_s=self.proactive_gc_interval_s,
        )
        self._next_proactive = todo.next_proactive
        if todo.collect:
            stats = self._gc().proactive_collect("proactive")
            emit(
                INFO,
                PROACTIVE_GC,
                pressure_level=level.name,
                skipped=bool(stats.get("skipped")),
                collected=stats["collected"],
                duration_s=round(stats["duration_ms"] / 1000, 6),
            )
        if todo.emergency:
            self._cleanup.start("level")

    def _gc(self) -> GarbageCollectionManager:
        if self._gc_manager is None:
            from .gc_manager import GarbageCollectionManager  # noqa: PLC0415

            self._gc_manager = GarbageCollectionManager.from_config(self.config)
        return self._gc_manager

    # -- emergency cleanup ------------------------------------------------------------------

    def register_cleanup_callback(
        self, fn: Callable[[], object], *, name: str, priority: int = 100
    ) -> None:
        """Add an emergency cleanup step; lower ``priority`` runs first (ties: registration
        order). User callbacks run before the built-in steps, each in its own thread within
        ``callback_budget_s``. ``name`` labels its metrics and logs: keep it short and fixed.
        """
        self._cleanup.register(fn, name=name, priority=priority)

    def unregister_cleanup_callback(self, name: str) -> bool:
        return self._cleanup.unregister(name)

    @property
    def cleanup_callback_names(self) -> tuple[str, ...]:
        """Registered callback names, in the order they run."""
        return self._cleanup.names

    @property
    def emergency_totals(self) -> EmergencyTotals:
        """A copy of the emergency counters (runs, bytes freed, durations, failures)."""
        return self._cleanup.totals

    def emergency_runs_since(self, since: int) -> tuple[list[EmergencyRun], int]:
        """Runs recorded after the first ``since`` and the new ``since``: exporters that
        record each run (OpenTelemetry histograms) drain them."""
        return self._cleanup.runs_since(since)

    def run_emergency_cleanup(self, reason: str = "manual") -> EmergencyRun | None:
        """Run one emergency cleanup now, in this thread; None if one is already running.

        Steps run one at a time with a fresh reading after each, and the run stops as soon
        as available memory is back above the floor plus its margin.
        """
        return self._cleanup.run(reason)

    def _start_emergency(self, reason: str) -> None:
        self._cleanup.start(reason)

    @property
    def emergency_cooldown_s(self) -> float:
        return self._cleanup.cooldown_s

    @property
    def callback_budget_s(self) -> float:
        return self._cleanup.callback_budget_s

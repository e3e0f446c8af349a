"""MemoryMonitor: readings, the pressure ladder in a background thread, emergency cleanup and
admission control.

Admission rule (pure, see ``admits``): an operation needing ``required`` bytes is admitted
when ``available - reserved - required >= floor``, where ``floor`` is the emergency
threshold (500 MB by default) and ``reserved`` is what admitted operations still hold;
and never while the level is EMERGENCY. Admission first, eviction second: a refused
request starts an emergency cleanup in the background, it never waits for one.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from .config import MemoryConfig
from .emergency import (
    EmergencyRun,
    EmergencyTotals,
    RegisteredCallback,
    StepResult,
    run_with_budget,
)
from .exceptions import InsufficientMemoryError
from .logging import (
    EMERGENCY_CLEANUP,
    ERROR,
    INFO,
    LEVEL_CHANGED,
    MONITOR_ERROR,
    PROACTIVE_GC,
    REQUEST_REJECTED,
    WARNING,
    RateLimit,
    emit,
)
from .pressure import (
    Level,
    RestBand,
    Thresholds,
    classify,
    headroom_bytes,
    next_interval,
    rest_band,
    rest_pace,
    retry_after_s,
)
from .readers.psi import Pressure, PsiReader, psi_path
from .readers.system import MemorySampler
from .readers.wakeups import Wakeups
from .reading import MIB, MemoryMetrics, Reading
from .rest import EVENT, LEFT, POLL, NativeRest

if TYPE_CHECKING:
    from .gc_manager import GarbageCollectionManager
    from .session_manager import SessionManager

THREAD_NAME = "pathoai-memory-monitor"
#: How long the monitor reuses cgroup limits before reading them again.
LIMIT_TTL_S = 1.0
#: At rest (NORMAL), the Python loop re-reads the process RSS at most this often: no
#: decision uses it, and every read after a sleep costs tens of microseconds of cold path.
REST_PERIOD_S = 5.0
#: At rest, the compiled loop hands back to Python for a full step at least this often.
REST_FULL_STEP_S = 60.0
#: PSI is read when asked (by an exporter, the status screen), at most this often.
PSI_TTL_S = 1.0
#: After a kernel wake-up, sample every BURST_INTERVAL_S for BURST_S: a v1 usage threshold
#: counts page cache, so it can fire a little before the working set itself crosses.
BURST_S = 1.0
BURST_INTERVAL_S = 0.02
#: Emergency runs kept one by one for exporters that record each run.
RUN_LOG = 64


class Sampler(Protocol):
    """Anything that returns a Reading: the real MemorySampler, or one over a fixture tree."""

    def sample(self) -> Reading: ...


def admits(
    available_bytes: int, reserved_bytes: int, required_bytes: int, floor_bytes: int
) -> bool:
    """True when ``required`` fits above the floor after what is already reserved."""
    return available_bytes - reserved_bytes - required_bytes >= floor_bytes


def to_bytes_mb(required_mb: object, name: str = "required_mb") -> int:
    """Validate a MiB amount from the public API and convert it to bytes.

    Raises ValueError for a non-number (bools included), NaN, infinity or a negative.
    """
    if isinstance(required_mb, bool) or not isinstance(required_mb, (int, float)):
        raise ValueError(f"{name} must be a number of MB, got {required_mb!r}")
    if not math.isfinite(required_mb) or required_mb < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {required_mb!r}")
    return math.ceil(required_mb * MIB)


def v1_usage_thresholds(limit_bytes: int, t: Thresholds) -> tuple[int, ...]:
    """cgroup v1 usage values worth a wake-up: each ratio rung and the floor, in bytes."""
    return (
        int(limit_bytes * t.warning_ratio),
        int(limit_bytes * t.critical_ratio),
        limit_bytes - t.floor_bytes,
    )


class MemoryMonitor:
    """Reads memory as the OOM killer sees it, walks the pressure ladder, and decides whether
    new work may start.

    ``root`` points every reader at another filesystem tree (tests use fixture trees);
    ``sampler`` replaces the readers altogether. ``sessions`` and ``gc_manager`` give the
    emergency cleanup its built-in steps. The background thread starts on its own when the
    config's ``enable_background_monitoring`` is true, else with ``start()`` or ``with``.
    At rest it waits in the compiled loop of ``rest.py`` where that is built (``native=False``
    keeps it in Python).
    """

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        root: str = "/",
        sampler: Sampler | None = None,
        sessions: SessionManager | None = None,
        gc_manager: GarbageCollectionManager | None = None,
        wakeups: bool = True,
        native: bool = True,
        emergency_cooldown_s: float = 5.0,
        callback_budget_s: float = 2.0,
        proactive_gc_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else MemoryConfig()
        self.thresholds = Thresholds.from_config(self.config)
        self._floor_bytes = self.thresholds.floor_bytes
        self._root = root
        # Limits up the cgroup tree are re-read at most once a second (see MemorySampler).
        self._sampler: Sampler = (
            sampler if sampler is not None else MemorySampler(root, limit_ttl_s=LIMIT_TTL_S)
        )
        self.sessions = sessions
        self._gc_manager = gc_manager
        self._use_wakeups = wakeups
        self._use_native = native
        self.emergency_cooldown_s = emergency_cooldown_s
        self.callback_budget_s = callback_budget_s
        self.proactive_gc_interval_s = proactive_gc_interval_s
        self._clock = clock
        self._lock = threading.Lock()  # readings, level, reservations, counters
        self._reserved_bytes = 0
        self._last: Reading | None = None
        self._level = Level.NORMAL
        self._last_good_wall = 0.0
        self._samples = 0
        # Rest samples not in the compiled loop's own count (the Python loop's, less those the
        # full step recounts); written by the background thread alone.
        self._rest_samples = 0
        self._pending: Reading | None = None  # a rest reading that left the band: step it next
        self._errors: Counter[str] = Counter()
        self._rejected = 0
        self._reject_log = RateLimit(1.0, clock)
        self._pressure: Pressure | None = None
        self._psi: PsiReader | None = None
        self._psi_next = 0.0
        self._rss_next = 0.0
        self._burst_until = 0.0
        if sampler is None:
            location = getattr(self._sampler, "cgroup", None)
            self._psi = PsiReader(psi_path(root, location.location if location else None))
        # background thread
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wakeups: Wakeups | None = None
        self._wakeup_counts: Counter[str] = Counter()
        self._native: NativeRest | None = None  # the compiled rest loop, made at start()
        self._cpu_seconds = 0.0
        self._next_proactive = 0.0
        # emergency cleanup
        self._callbacks: list[RegisteredCallback] = []
        self._emergency_lock = threading.Lock()  # held for a whole run: never two at once
        self._emergency_worker: threading.Thread | None = None
        self._next_emergency = 0.0
        self._totals = EmergencyTotals()
        self._runs: list[EmergencyRun] = []  # the last RUN_LOG runs, for exporters
        self._runs_total = 0
        if self.config.enable_background_monitoring:
            self.start()

    # -- readings ---------------------------------------------------------------------------

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
            reserved = self._reserved_bytes
            admitted = level is not Level.EMERGENCY and admits(
                reading.available_bytes, reserved, required, self._floor_bytes
            )
            if admitted and hold:
                self._reserved_bytes = reserved + required
        if level is not previous:
            self._level_changed(previous, level, reading)
        return admitted, reserved

    @property
    def last_reading(self) -> Reading | None:
        """The latest reading taken, without taking a new one (None before the first)."""
        last = self._last
        native = self._native
        if native is not None:
            rest = native.latest()
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
        per ``PSI_TTL_S``: only exporters and people look at it, so the background thread
        doesn't pay for it on every wake."""
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
        wall = self._last_good_wall
        native = self._native
        rest = native.latest() if native is not None else None
        return rest.timestamp if rest is not None and rest.timestamp > wall else wall

    @property
    def samples_total(self) -> int:
        """Readings taken: by ``sample()`` and the background thread's full steps, and its
        cheap at-rest looks."""
        return self._samples + self._rest_samples_total

    @property
    def _rest_samples_total(self) -> int:
        native = self._native
        return self._rest_samples + (native.samples_total if native is not None else 0)

    @property
    def errors_total(self) -> dict[str, int]:
        """Errors the monitor survived, by where they happened (sample, psi, action)."""
        return dict(self._errors)

    @property
    def requests_rejected_total(self) -> int:
        return self._rejected

    @property
    def emergency_totals(self) -> EmergencyTotals:
        """A copy of the emergency counters (runs, bytes freed, durations, failures)."""
        with self._lock:
            return self._totals.copy()

    @property
    def thread_cpu_seconds(self) -> float:
        """CPU time the background thread has used since it started (read from its CPU
        clock by the caller, so measuring costs the thread nothing)."""
        thread = self._thread
        if thread is not None and thread.ident is not None and thread.is_alive():
            try:
                return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except OSError:  # it ended just now
                pass
        return self._cpu_seconds

    @property
    def wakeup_sources(self) -> tuple[str, ...]:
        """Kernel event sources armed for the background thread (empty: timer only)."""
        return self._wakeups.sources if self._wakeups is not None else ()

    @property
    def wakeups_total(self) -> dict[str, int]:
        """Early wake-ups of the background thread, by source."""
        return dict(self._wakeup_counts)

    def _level_changed(self, previous: Level, level: Level, reading: Reading) -> None:
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

    # -- admission --------------------------------------------------------------------------

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by reservations in flight."""
        return self._reserved_bytes

    @property
    def floor_bytes(self) -> int:
        """The emergency floor below which available memory must not be pushed."""
        return self._floor_bytes

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
            with self._lock:
                self._reserved_bytes -= required

    def _refuse(self, required: int, reading: Reading, reserved: int) -> InsufficientMemoryError:
        """Count and log a refusal, start a cleanup if in EMERGENCY, and build the error."""
        level = self._level
        with self._lock:
            self._rejected += 1
        cooldown_left = max(0.0, self._next_emergency - self._clock())
        hint = retry_after_s(level, self.config.monitoring_interval_sec, cooldown_left)
        held = self._reject_log.allow()
        if held is not None:
            emit(
                WARNING,
                REQUEST_REJECTED,
                required_bytes=required,
                available_bytes=reading.available_bytes,
                reserved_bytes=reserved,
                pressure_level=level.name,
                retry_after_s=hint,
                suppressed=held,
            )
        if level is Level.EMERGENCY:
            self._start_emergency("rejection")
        return InsufficientMemoryError(
            required / MIB,
            reading.available_bytes / MIB,
            floor_mb=self._floor_bytes / MIB,
            reserved_mb=reserved / MIB,
            retry_after_s=hint,
        )

    # -- background thread ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the sampling thread (idempotent)."""
        with self._thread_lock:
            if self.running:
                return
            self._stopping.clear()
            if self._use_wakeups and self._wakeups is None:
                self._wakeups = self._open_wakeups()
            if self._native is None and self._wakeups is not None:  # its kick pipe stops it
                self._native = NativeRest.create(
                    self._sampler, self._clock, enabled=self._use_native
                )
            self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the sampling thread and wait for it (idempotent)."""
        with self._thread_lock:
            thread = self._thread
            self._stopping.set()
            if self._wakeups is not None:
                self._wakeups.kick()
            if thread is not None:
                thread.join(timeout_s)
            self._thread = None
            if self._wakeups is not None:
                self._wakeups.close()
                self._wakeups = None

    def __enter__(self) -> MemoryMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_wakeups(self) -> Wakeups | None:
        cgroup = getattr(self._sampler, "cgroup", None)
        location = cgroup.location if cgroup is not None else None
        if not isinstance(self._sampler, MemorySampler):
            return None  # a synthetic sampler has no kernel to hear from
        try:
            return Wakeups(location, psi_path(self._root, location))
        except OSError as exc:  # no poll/pipe: sample on the timer alone
            self._count_error("wakeups", exc)
            return None

    def _loop(self) -> None:
        base = self.config.monitoring_interval_sec
        try:
            while not self._stopping.is_set():
                interval = base
                band: RestBand | None = None
                try:
                    reading, self._pending = self._pending, None
                    reading = reading if reading is not None else self._take()
                    headroom = self._step(reading)
                    interval = next_interval(headroom, base)
                    pace = rest_pace(headroom, base) if self._level is Level.NORMAL else None
                    if pace is not None:
                        interval = pace
                        band = rest_band(reading.total_bytes, self.thresholds, pace)
                except Exception as exc:
                    self._count_error("sample", exc)
                try:
                    if band is not None and self._clock() >= self._burst_until:
                        self._rest(band, interval, base)
                    else:
                        self._sleep(interval)
                except Exception as exc:  # poll() itself failed: wait on the timer alone
                    self._count_error("wakeups", exc)
                    self._stopping.wait(interval)
        finally:
            self._cpu_seconds = time.thread_time()  # the thread's CPU clock starts at 0

    def _rest(self, band: RestBand, pace: float, base: float) -> None:
        """At rest: sample every ``pace`` seconds while readings stay in ``band`` (where
        nothing can change), and return when a full step is needed: a kernel event, a
        reading outside the band (left in ``_pending``), a failed read, or one is due (once
        a minute at the full interval; every few seconds at a faster pace, which a full
        step may slow down again)."""
        native, wakeups = self._native, self._wakeups
        if native is not None and wakeups is not None:
            every = REST_FULL_STEP_S if pace >= base else REST_PERIOD_S
            samples = max(1, round(every / pace))
            reason, _taken, detail = native.watch(wakeups.poll_fds(), pace, samples, band)
            if reason == EVENT and isinstance(detail, list):
                self._woken(wakeups.dispatch(detail))
            elif reason == LEFT:  # the full step observes (and counts) that sample
                self._pending = native.latest()
                self._rest_samples -= 1
            elif reason == POLL and isinstance(detail, int):
                raise OSError(detail, os.strerror(detail))
            return  # DUE, or a failed read: the full step reads again and reports it
        sampler = self._sampler
        if not isinstance(sampler, MemorySampler):  # a synthetic sampler: just wait
            self._sleep(pace)
            return
        while self._sleep(pace):
            if self._clock() >= self._rss_next:
                return  # the RSS is due
            reading = sampler.sample(rss=False)
            if not band.holds(reading.total_bytes, reading.used_bytes, reading.available_bytes):
                self._pending = reading
                return
            self._last = reading
            self._last_good_wall = reading.timestamp
            self._rest_samples += 1

    def _sleep(self, interval: float) -> bool:
        """Wait for the next sample: the interval, or less after a kernel wake-up. True when
        the interval ran out undisturbed."""
        if self._clock() < self._burst_until:
            interval = min(interval, BURST_INTERVAL_S)
        wakeups = self._wakeups
        if wakeups is None:
            return not self._stopping.wait(interval)
        fired = wakeups.wait(interval)
        self._woken(fired)
        return not fired

    def _woken(self, sources: tuple[str, ...]) -> None:
        for source in sources:
            self._wakeup_counts[source] += 1
            if source != "kick":  # the kernel saw something: look closely a moment
                self._burst_until = self._clock() + BURST_S

    def tick(self) -> float:
        """One step of the background loop: sample, act on the level, and return how long
        to sleep before the next (shorter the closer memory is to a rung)."""
        return next_interval(self._step(self._take()), self.config.monitoring_interval_sec)

    def _take(self) -> Reading:
        """A reading for the background loop. At rest the process RSS is re-read only every
        few seconds: no decision uses it, and each file read after a sleep costs a cold
        kernel path."""
        sampler = self._sampler
        if isinstance(sampler, MemorySampler):
            now = self._clock()
            fresh_rss = self._level is not Level.NORMAL or now >= self._rss_next
            if fresh_rss:
                self._rss_next = now + REST_PERIOD_S
            return sampler.sample(rss=fresh_rss)
        return sampler.sample()

    def _step(self, reading: Reading) -> int:
        """Observe ``reading``, arm kernel thresholds, act on the level; the headroom to the
        nearest rung, from which the caller paces the next sample."""
        self._observe(reading)
        wakeups = self._wakeups
        if wakeups is not None and reading.source == "cgroup_v1" and reading.cgroup_limit_bytes:
            wakeups.set_usage_thresholds(
                v1_usage_thresholds(reading.cgroup_limit_bytes, self.thresholds)
            )
        try:
            self._act(self._level)
        except Exception as exc:
            self._count_error("action", exc)
        return headroom_bytes(
            reading.total_bytes, reading.used_bytes, reading.available_bytes, self.thresholds
        )

    def _act(self, level: Level) -> None:
        now = self._clock()
        if level < Level.CRITICAL:
            self._next_proactive = 0.0  # the next crossing collects at once
        elif self.config.enable_proactive_gc and now >= self._next_proactive:
            self._next_proactive = now + self.proactive_gc_interval_s
            stats = self._gc().proactive_collect("proactive")
            emit(
                INFO,
                PROACTIVE_GC,
                pressure_level=level.name,
                skipped=bool(stats.get("skipped")),
                collected=stats["collected"],
                duration_s=round(stats["duration_ms"] / 1000, 6),
            )
        if level is Level.EMERGENCY:
            self._start_emergency("level")

    def _count_error(self, where: str, exc: BaseException) -> None:
        with self._lock:
            self._errors[where] += 1
        emit(ERROR, MONITOR_ERROR, where=where, error=type(exc).__name__, exc_info=exc)

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
        if not callable(fn):
            raise TypeError(f"cleanup callback must be callable, got {fn!r}")
        if not isinstance(name, str) or not name:
            raise ValueError("cleanup callback needs a non-empty name")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority must be an integer, got {priority!r}")
        with self._lock:
            if any(cb.name == name for cb in self._callbacks):
                raise ValueError(f"a cleanup callback named {name!r} is already registered")
            seq = len(self._callbacks)
            self._callbacks.append(RegisteredCallback(name, fn, priority, seq))
            self._callbacks.sort(key=lambda cb: (cb.priority, cb.seq))

    def emergency_runs_since(self, since: int) -> tuple[list[EmergencyRun], int]:
        """Runs recorded after the first ``since`` (at most the last RUN_LOG), and the new
        ``since``: exporters that record each run (OpenTelemetry histograms) drain them."""
        with self._lock:
            total, runs = self._runs_total, list(self._runs)
        return runs[max(0, len(runs) - (total - since)) :] if total > since else [], total

    @property
    def cleanup_callback_names(self) -> tuple[str, ...]:
        """Registered callback names, in the order they run."""
        with self._lock:
            return tuple(cb.name for cb in self._callbacks)

    def unregister_cleanup_callback(self, name: str) -> bool:
        with self._lock:
            before = len(self._callbacks)
            self._callbacks = [cb for cb in self._callbacks if cb.name != name]
            return len(self._callbacks) != before

    def _start_emergency(self, reason: str) -> None:
        """Run a cleanup in a worker thread unless one runs or the cooldown holds."""
        now = self._clock()
        with self._lock:
            worker = self._emergency_worker
            if (worker is not None and worker.is_alive()) or now < self._next_emergency:
                return
            self._next_emergency = now + self.emergency_cooldown_s
            worker = threading.Thread(
                target=self.run_emergency_cleanup,
                args=(reason,),
                name="pathoai-emergency-cleanup",
                daemon=True,
            )
            self._emergency_worker = worker
        worker.start()

    def run_emergency_cleanup(self, reason: str = "manual") -> EmergencyRun | None:
        """Run one emergency cleanup now, in this thread; None if one is already running.

        Steps run one at a time with a fresh reading after each, and the run stops as soon
        as available memory is back above the floor plus its margin.
        """
        if not self._emergency_lock.acquire(blocking=False):
            return None
        try:
            return self._emergency(reason)
        finally:
            with self._lock:
                self._next_emergency = max(
                    self._next_emergency, self._clock() + self.emergency_cooldown_s
                )
            self._emergency_lock.release()

    def _emergency(self, reason: str) -> EmergencyRun:
        start = self._clock()
        started_at = time.time()
        target = self.thresholds.restored_bytes
        first = reading = self.sample()
        steps: list[StepResult] = []
        with self._lock:
            callbacks = list(self._callbacks)
        plan: list[tuple[str, Callable[[], tuple[bool, bool, bool]]]] = [
            (cb.name, self._user_step(cb)) for cb in callbacks
        ]
        plan += self._builtin_steps()
        for name, step in plan:
            if reading.available_bytes >= target:
                break
            t0 = self._clock()
            ok, overran, skipped = step()
            after = self.sample()
            steps.append(
                StepResult(
                    name,
                    self._clock() - t0,
                    max(0, after.available_bytes - reading.available_bytes),
                    ok,
                    overran,
                    skipped,
                )
            )
            reading = after
        run = EmergencyRun(
            reason,
            started_at,
            self._clock() - start,
            first.available_bytes,
            reading.available_bytes,
            reading.available_bytes >= target,
            tuple(steps),
        )
        with self._lock:
            self._totals.record(run)
            self._runs = [*self._runs[-(RUN_LOG - 1) :], run]
            self._runs_total += 1
        emit(
            WARNING,
            EMERGENCY_CLEANUP,
            reason=reason,
            restored=run.restored,
            freed_bytes=run.freed_bytes,
            duration_s=round(run.duration_s, 4),
            available_before=run.available_before,
            available_after=run.available_after,
            steps=[
                {"name": s.name, "freed_bytes": s.freed_bytes, "duration_s": round(s.duration_s, 4)}
                | ({"failed": True} if not s.ok and not s.overran and not s.skipped else {})
                | ({"overran": True} if s.overran else {})
                | ({"skipped": True} if s.skipped else {})
                for s in steps
            ],
        )
        return run

    def _user_step(self, cb: RegisteredCallback) -> Callable[[], tuple[bool, bool, bool]]:
        return lambda: run_with_budget(
            cb, self.callback_budget_s, self._totals, self._lock, self._clock
        )

    def _builtin_steps(self) -> list[tuple[str, Callable[[], tuple[bool, bool, bool]]]]:
        steps: list[tuple[str, Callable[[], tuple[bool, bool, bool]]]] = []
        sessions = self.sessions
        if sessions is not None:
            steps.append(("expired_sessions", self._builtin(sessions.cleanup_inactive_sessions)))
        steps.append(("full_collection", self._builtin(self._full_collection)))
        if sessions is not None:
            steps.append(("evict_sessions", self._builtin(self._evict_sessions)))
        return steps

    def _builtin(self, fn: Callable[[], Any]) -> Callable[[], tuple[bool, bool, bool]]:
        """A built-in step: an error is counted and logged, and the run goes on."""

        def step() -> tuple[bool, bool, bool]:
            try:
                fn()
            except Exception as exc:
                self._count_error("emergency_step", exc)
                return False, False, False
            return True, False, False

        return step

    def _full_collection(self) -> None:
        manager = self._gc_manager
        if manager is not None:
            manager.collect_with_stats(2, reason="emergency")
        else:
            gc.collect()

    def _evict_sessions(self) -> None:
        """Evict least-recently-used unpinned sessions, re-measuring after each batch."""
        sessions = self.sessions
        assert sessions is not None
        while True:
            needed = self.thresholds.restored_bytes - self.sample().available_bytes
            if needed <= 0:
                return
            before = sessions.removed_total("emergency")
            freed = sessions.evict_least_recently_used(needed, reason="emergency")
            evicted = sessions.removed_total("emergency") - before
            with self._lock:
                self._totals.evicted_sessions += evicted
            if evicted == 0:
                return  # nothing left that may be evicted (all pinned, or none)
            if freed == 0:
                gc.collect()  # sessions of zero accounted bytes: their memory is in cycles

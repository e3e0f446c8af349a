"""SamplingLoop: the monitor's background thread: pacing, resting, kernel wake-ups, bursts.

Each full step hands a reading to the monitor (``step``: record it, move the level, act)
and gets back the headroom to the nearest rung, from which ``pressure.next_interval``
and ``pressure.rest_pace`` set the pace. While the level is NORMAL the loop rests: it
samples at that pace and only checks each reading against ``pressure.rest_band``, in the
compiled loop of ``rest.py`` where it is built (the only importer of that module), else
in Python. Both rest loops read the same files per sample: /proc/meminfo, every limit
file up the cgroup tree, and usage and memory.stat where a limit applies; never the
process RSS, which no decision uses.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from .forksafe import after_fork_in_child
from .logging import RUNGS_OUT_OF_ORDER, WARNING, emit
from .pressure import (
    Level,
    RestBand,
    Thresholds,
    next_interval,
    rest_band,
    rest_pace,
    rungs_in_order,
    v1_usage_thresholds,
)
from .readers.psi import psi_path
from .readers.system import MemorySampler
from .readers.wakeups import Wakeups
from .reading import Reading
from .rest import EVENT, LEFT, POLL, NativeRest

THREAD_NAME = "pathoai-memory-monitor"
#: At rest (NORMAL), the Python loop re-reads the process RSS at most this often: no
#: decision uses it, and every read after a sleep costs tens of microseconds of cold path.
REST_PERIOD_S = 5.0
#: At rest, the compiled loop hands back to Python for a full step at least this often.
REST_FULL_STEP_S = 60.0
#: After a kernel wake-up, sample every BURST_INTERVAL_S for BURST_S: a v1 usage threshold
#: counts page cache, so it can fire a little before the working set itself crosses.
BURST_S = 1.0
BURST_INTERVAL_S = 0.02


def check_rungs(thresholds: Thresholds, total_bytes: int) -> bool:
    """Warn (``rungs_out_of_order``) where an explicit configuration puts the floor before
    the warning or critical rung at this limit, so those levels can never be seen."""
    if rungs_in_order(thresholds, total_bytes):
        return True
    t = thresholds.for_total(total_bytes)
    emit(
        WARNING,
        RUNGS_OUT_OF_ORDER,
        limit_bytes=total_bytes,
        warning_ratio=t.warning_ratio,
        critical_ratio=t.critical_ratio,
        floor_bytes=t.floor_bytes,
        floor_begins_at_ratio=round(1 - t.floor_bytes / total_bytes, 4) if total_bytes else 0,
    )
    return False


class Sampler(Protocol):
    """Anything that returns a Reading: the real MemorySampler, or one over a fixture tree."""

    def sample(self) -> Reading: ...


class SamplingLoop:
    """The background thread of one monitor. ``step`` observes a reading and acts on it,
    returning the headroom; ``level`` tells the level after it; ``count_error`` reports
    what the loop survived."""

    def __init__(
        self,
        sampler: Sampler,
        *,
        root: str,
        interval_s: float,
        thresholds: Thresholds,
        step: Callable[[Reading], int],
        level: Callable[[], Level],
        count_error: Callable[[str, BaseException], None],
        wakeups: bool = True,
        native: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sampler = sampler
        self._root = root
        self.interval_s = interval_s
        self.thresholds = thresholds
        self._step_fn = step
        self._level = level
        self._count_error = count_error
        self._use_wakeups = wakeups
        self._use_native = native
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wakeups: Wakeups | None = None
        self._wakeup_counts: Counter[str] = Counter()
        self.native: NativeRest | None = None  # the compiled rest loop, made at start()
        self._cpu_seconds = 0.0
        self._rss_next = 0.0
        self._burst_until = 0.0
        #: At most this long at rest before a full step (None: REST_FULL_STEP_S); the
        #: monitor sets its interval while a GPU is read, which the rest band cannot watch.
        self.max_rest_s: float | None = None
        self._pending: Reading | None = None  # a rest reading that left the band: step it next
        self._latest: Reading | None = None  # the Python rest loop's latest look
        # Rest samples not in the compiled loop's own count (the Python loop's, less those the
        # full step recounts); written by the background thread alone.
        self._rest_samples = 0
        self._checked_total = -1
        after_fork_in_child(self._forked)

    def _forked(self) -> None:
        """In a forked child the thread is gone, and its kick pipe and kernel registrations
        are the parent's: drop the child's copies, so ``start()`` here builds its own."""
        self._thread_lock, self._thread, self._stopping = threading.Lock(), None, threading.Event()
        wakeups, self._wakeups, self.native = self._wakeups, None, None
        if wakeups is not None:
            wakeups.close()  # closes this process's copies only

    # -- what the monitor reads -------------------------------------------------------------

    def latest(self) -> Reading | None:
        """The newest reading taken at rest (None when none yet)."""
        native = self.native
        rest = native.latest() if native is not None else None
        python = self._latest
        if rest is None or (python is not None and python.monotonic > rest.monotonic):
            return python
        return rest

    @property
    def rest_samples_total(self) -> int:
        native = self.native
        return self._rest_samples + (native.samples_total if native is not None else 0)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def thread_cpu_seconds(self) -> float:
        """CPU time the thread has used (read from its CPU clock by the caller)."""
        thread = self._thread
        if thread is not None and thread.ident is not None and thread.is_alive():
            try:
                return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except OSError:  # it ended just now
                pass
        return self._cpu_seconds

    @property
    def wakeup_sources(self) -> tuple[str, ...]:
        return self._wakeups.sources if self._wakeups is not None else ()

    @property
    def wakeups_total(self) -> dict[str, int]:
        return dict(self._wakeup_counts)

    # -- thread -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._thread_lock:
            if self.running:
                return
            self._stopping.clear()
            if self._use_wakeups and self._wakeups is None:
                self._wakeups = self._open_wakeups()
            if self.native is None and self._wakeups is not None:  # its kick pipe stops it
                self.native = NativeRest.create(
                    self._sampler, self._clock, enabled=self._use_native
                )
            self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait for it (idempotent)."""
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

    def _open_wakeups(self) -> Wakeups | None:
        sampler = self._sampler
        if not isinstance(sampler, MemorySampler):
            return None  # a synthetic sampler has no kernel to hear from
        location = sampler.cgroup.location if sampler.cgroup is not None else None
        try:
            return Wakeups(location, psi_path(self._root, location))
        except OSError as exc:  # no poll/pipe: sample on the timer alone
            self._count_error("wakeups", exc)
            return None

    def _loop(self) -> None:
        base = self.interval_s
        try:
            while not self._stopping.is_set():
                interval = base
                band: RestBand | None = None
                try:
                    reading, self._pending = self._pending, None
                    reading = reading if reading is not None else self.take()
                    headroom = self.step(reading)
                    interval = next_interval(headroom, base)
                    pace = rest_pace(headroom, base) if self._level() is Level.NORMAL else None
                    if pace is not None:
                        interval = pace
                        t = self.thresholds.for_total(reading.total_bytes)
                        band = rest_band(reading.total_bytes, t, pace)
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

    # -- one step ---------------------------------------------------------------------------

    def take(self) -> Reading:
        """A reading for a full step. At rest the process RSS is re-read only every few
        seconds: no decision uses it, and each file read after a sleep costs a cold path."""
        sampler = self._sampler
        if isinstance(sampler, MemorySampler):
            now = self._clock()
            fresh_rss = self._level() is not Level.NORMAL or now >= self._rss_next
            if fresh_rss:
                self._rss_next = now + REST_PERIOD_S
            return sampler.sample(rss=fresh_rss)
        return sampler.sample()

    def step(self, reading: Reading) -> int:
        """Hand ``reading`` to the monitor and arm the kernel's v1 usage thresholds; the
        headroom to the nearest rung."""
        headroom = self._step_fn(reading)
        if reading.total_bytes != self._checked_total:  # the rungs, once per limit
            self._checked_total = reading.total_bytes
            check_rungs(self.thresholds, reading.total_bytes)
        wakeups = self._wakeups
        if wakeups is not None and reading.source == "cgroup_v1" and reading.cgroup_limit_bytes:
            limit = reading.cgroup_limit_bytes
            t = self.thresholds.for_total(limit)
            wakeups.set_usage_thresholds(v1_usage_thresholds(limit, t))
        return headroom

    def tick(self) -> float:
        """One full step, and how long to sleep before the next."""
        return next_interval(self.step(self.take()), self.interval_s)

    # -- resting ----------------------------------------------------------------------------

    def _rest(self, band: RestBand, pace: float, base: float) -> None:
        """At rest: sample every ``pace`` seconds while readings stay in ``band`` (where
        nothing can change), and return when a full step is needed: a kernel event, a
        reading outside the band (left in ``_pending``), a failed read, or one is due (once
        a minute at the full interval; every few seconds at a faster pace, which a full
        step may slow down again)."""
        native, wakeups = self.native, self._wakeups
        if native is not None and wakeups is not None:
            every = REST_FULL_STEP_S if pace >= base else REST_PERIOD_S
            every = every if self.max_rest_s is None else min(every, self.max_rest_s)
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
        if not isinstance(sampler, MemorySampler):  # a synthetic sampler only waits
            self._sleep(pace)
            return
        due = None if self.max_rest_s is None else self._clock() + self.max_rest_s
        while self._sleep(pace):
            if self._clock() >= self._rss_next or (due is not None and self._clock() >= due):
                return  # the RSS (or the GPU) is due
            reading = sampler.rest_sample()
            if not band.holds(reading.total_bytes, reading.used_bytes, reading.available_bytes):
                self._pending = reading
                return
            self._latest = reading
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

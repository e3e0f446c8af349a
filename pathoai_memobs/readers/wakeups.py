"""Kernel memory events that wake the monitor before its next sample is due.

Where the kernel allows, the monitor sleeps in ``poll()`` on:
- cgroup v1 usage thresholds: an eventfd registered through ``cgroup.event_control``
  against ``memory.usage_in_bytes``, signalled when usage crosses a threshold either way;
- cgroup v2 ``memory.events``: pollable (POLLPRI) whenever a high/max/oom counter moves;
- a PSI trigger on the cgroup's ``memory.pressure`` or ``/proc/pressure/memory``:
  signalled when tasks stall on memory for 150 ms within a 2 s window (unprivileged
  windows must be multiples of 2 s; the trigger text needs a trailing NUL).
Each is optional: where one cannot be set up, it is left out quietly (``sources`` says
which are armed), and the timeout alone paces the monitor.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Iterable

from .cgroup import CgroupLocation

#: PSI trigger: 150 ms of "some" stall within a 2 s window.
PSI_TRIGGER = b"some 150000 2000000\0"

_IN = select.POLLIN
_PRI = select.POLLPRI | select.POLLERR


class Wakeups:
    """A sleep that ends early on a kernel memory event or a ``kick()`` from another thread."""

    def __init__(
        self, location: CgroupLocation | None, psi_file: str | None, *, psi: bool = True
    ) -> None:
        self._poll = select.poll()
        self._names: dict[int, str] = {}
        self._masks: dict[int, int] = {}  # the kernel sources' poll masks, by descriptor
        self._owned: list[int] = []
        self._kick_r, self._kick_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._kick_r, _IN)
        self._v1_dir = location.directory if location and location.source == "cgroup_v1" else None
        self._v1_usage_fd = -1
        self._v1_events: list[int] = []
        self.thresholds: tuple[int, ...] = ()
        self.errors: list[str] = []
        if location is not None and location.source == "cgroup_v2":
            self._watch(os.path.join(location.directory, "memory.events"), "memory.events")
        if psi and psi_file is not None:
            self._psi_trigger(psi_file)

    @property
    def sources(self) -> tuple[str, ...]:
        """The event sources armed now (empty: timeout-paced sampling only)."""
        names = set(self._names.values())
        return tuple(sorted(names))

    # -- set-up -----------------------------------------------------------------------------

    def _watch(self, path: str, name: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.errors.append(f"{name}: {exc.strerror}")
            return
        os.pread(fd, 4096, 0)  # a kernfs file signals changes after the last read
        self._add(fd, name, _PRI)

    def _psi_trigger(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.errors.append(f"psi: {exc.strerror}")
            return
        try:
            os.write(fd, PSI_TRIGGER)
        except OSError as exc:
            os.close(fd)
            self.errors.append(f"psi trigger: {exc.strerror}")
            return
        self._add(fd, "psi", _PRI)

    def _add(self, fd: int, name: str, mask: int) -> None:
        self._owned.append(fd)
        self._names[fd] = name
        self._masks[fd] = mask
        self._poll.register(fd, mask)

    def set_usage_thresholds(self, thresholds: Iterable[int]) -> bool:
        """(Re-)arm cgroup v1 usage thresholds in bytes; True when they are armed.

        Does nothing when they are unchanged, so it can be called after every sample.
        """
        wanted = tuple(sorted({t for t in thresholds if t > 0}))
        if self._v1_dir is None or wanted == self.thresholds:
            return bool(self._v1_events)
        self._drop_v1_events()
        self.thresholds = wanted
        try:
            if self._v1_usage_fd < 0:
                self._v1_usage_fd = os.open(
                    os.path.join(self._v1_dir, "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC
                )
            control = os.open(
                os.path.join(self._v1_dir, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC
            )
        except OSError as exc:
            self.errors.append(f"cgroup.event_control: {exc.strerror}")
            return False
        try:
            for threshold in wanted:
                efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                try:
                    os.write(control, f"{efd} {self._v1_usage_fd} {threshold}".encode())
                except OSError as exc:
                    os.close(efd)
                    self.errors.append(f"usage threshold: {exc.strerror}")
                    break
                self._v1_events.append(efd)
                self._add(efd, "cgroup_v1_threshold", _IN)
        finally:
            os.close(control)
        return bool(self._v1_events)

    def _drop_v1_events(self) -> None:
        for efd in self._v1_events:  # closing the eventfd unregisters the threshold
            self._forget(efd)
        self._v1_events = []

    def _forget(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        self._names.pop(fd, None)
        self._masks.pop(fd, None)
        if fd in self._owned:
            self._owned.remove(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    # -- use --------------------------------------------------------------------------------

    def wait(self, timeout_s: float) -> tuple[str, ...]:
        """Sleep up to ``timeout_s``; the names of the sources that ended it early."""
        events = self._poll.poll(max(0, int(timeout_s * 1000)))
        if not events:  # the usual case: the timeout ran out
            return ()
        return self.dispatch(events)

    def poll_fds(self) -> tuple[tuple[int, int], ...]:
        """(descriptor, poll mask) of every armed source, for a caller that polls them
        itself (the compiled rest loop) and hands what fired to ``dispatch``."""
        return ((self._kick_r, _IN), *self._masks.items())

    def dispatch(self, events: Iterable[tuple[int, int]]) -> tuple[str, ...]:
        """Acknowledge polled ``(fd, revents)`` pairs; the names of the sources that fired."""
        fired = []
        for fd, _mask in events:
            if fd == self._kick_r:
                with contextlib.suppress(OSError):
                    os.read(self._kick_r, 4096)
                fired.append("kick")
                continue
            name = self._names.get(fd, "?")
            with contextlib.suppress(OSError):
                if name == "cgroup_v1_threshold":
                    os.read(fd, 8)  # reset the eventfd counter
                elif name == "memory.events":
                    os.pread(fd, 4096, 0)  # acknowledge the change
            fired.append(name)
        return tuple(fired)

    def kick(self) -> None:
        """End the current (or next) ``wait`` now; safe from any thread."""
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up
            os.write(self._kick_w, b"k")

    def close(self) -> None:
        self._drop_v1_events()
        for fd in list(self._owned):
            self._forget(fd)
        for fd in (self._v1_usage_fd, self._kick_r, self._kick_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._v1_usage_fd = self._kick_r = self._kick_w = -1

"""Per-session accounting: which identities (buffers, containers) a session's keys reach.

A session keeps, per identity, one ``BufferRef``: its bytes, how many of the session's
keys reach it, and whether it lives on a device. A buffer counts while at least one key
reaches it, so views of one image, or one object under two keys, are charged once, and an
update costs the size of what it touches. ``recount`` says what an update would cost
without changing anything; ``apply`` makes it so. Both run under the manager's lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .sizeof import Charges, measure


class BufferRef:
    """One identity a session reaches: its size, the keys reaching it, host or device."""

    __slots__ = ("keys", "nbytes", "on_device")

    def __init__(self, nbytes: int, on_device: bool) -> None:
        self.nbytes = nbytes
        self.keys = 1
        self.on_device = on_device


class SessionRecord:
    """A live session as the manager keeps it (the caller sees a ``SessionData``)."""

    __slots__ = (
        "created_at",
        "data",
        "device",
        "fp",
        "host",
        "keys",
        "last_access",
        "last_mono",
        "pins",
        "refs",
        "sid",
        "spilled",
        "version",
        "waiters",
    )

    def __init__(self, sid: str, fp: str, now_mono: float, now_wall: float) -> None:
        self.sid = sid
        self.fp = fp
        self.created_at = self.last_access = now_wall
        self.last_mono = now_mono
        self.data: dict[str, Any] = {}
        self.keys: dict[str, Charges] = {}  # what each key was charged when it was set
        self.refs: dict[int, BufferRef] = {}  # identity -> its bytes and the keys reaching it
        self.host = 0
        self.device = 0
        self.pins = 0  # requests working on it: never removed or spilled
        self.waiters = 0  # requests waiting for memory for it: never removed, may be spilled
        self.spilled: dict[str, Any] = {}  # key -> its Spilled placeholder, while on disk
        self.version = 0  # bumped by every change of data (a spill in flight checks it)


def recount(session: SessionRecord, measured: Mapping[str, Charges]) -> tuple[int, int]:
    """(host, device) bytes if ``measured`` replaced those keys; changes nothing."""
    delta: dict[int, int] = {}
    sizes: dict[int, tuple[int, bool]] = {}
    host, device = session.host, session.device
    for key, new in measured.items():
        old = session.keys.get(key)
        if old is not None:
            host -= old.inline
            for ident in (*old.tracked, *old.device):
                delta[ident] = delta.get(ident, 0) - 1
        host += new.inline
        for ident, n in new.tracked.items():
            delta[ident] = delta.get(ident, 0) + 1
            sizes[ident] = (n, False)
        for ident, n in new.device.items():
            delta[ident] = delta.get(ident, 0) + 1
            sizes[ident] = (n, True)
    for ident, d in delta.items():
        ref = session.refs.get(ident)
        before = ref.keys if ref is not None else 0
        after = before + d
        if before == 0 and after > 0:
            n, on_device = sizes[ident]
        elif ref is not None and after == 0:
            n, on_device = -ref.nbytes, ref.on_device
        else:
            continue
        if on_device:
            device += n
        else:
            host += n
    return host, device


def apply(session: SessionRecord, data: Mapping[str, Any], measured: Mapping[str, Charges]) -> None:
    """Store ``data`` under its keys and move the references; sizes are set by the caller
    (from ``recount``)."""
    refs = session.refs
    for key, new in measured.items():
        old = session.keys.get(key)
        for ident, n in new.tracked.items():
            _reach(refs, ident, n, on_device=False)
        for ident, n in new.device.items():
            _reach(refs, ident, n, on_device=True)
        if old is not None:
            for ident in (*old.tracked, *old.device):
                ref = refs[ident]
                ref.keys -= 1
                if ref.keys == 0:
                    del refs[ident]
        session.keys[key] = new
        session.data[key] = data[key]
    session.version += 1


def _reach(refs: dict[int, BufferRef], ident: int, nbytes: int, *, on_device: bool) -> None:
    ref = refs.get(ident)
    if ref is None:
        refs[ident] = BufferRef(nbytes, on_device)
    else:
        ref.keys += 1


def measure_from_scratch(session: SessionRecord) -> int:
    """The session's host bytes, re-measured from its stored data (for checks: O(data))."""
    merged: dict[int, int] = {}
    inline = 0
    for value in session.data.values():
        charges = measure(value)
        inline += charges.inline
        merged.update(charges.tracked)
    return inline + sum(merged.values())


def eviction_order(
    sessions: Iterable[SessionRecord], bytes_needed: int, *, now: float, min_idle_s: float = 0.0,
    waiting: bool = False, keep: str | None = None,
) -> list[SessionRecord]:  # fmt: skip
    """Which sessions to remove or spill to free ``bytes_needed``: unpinned ones idle for
    at least ``min_idle_s``, least recently used first, until their bytes cover the need.
    With ``waiting`` (to spill only: it comes back for its request) also those requests
    wait for, after every idle one, the latest to arrive first (its turn is furthest off);
    never ``keep``, the session of the request that frees. Sessions already on disk are left:
    removing them would free almost nothing and lose their data."""
    candidates = sorted(
        (s for s in sessions if s.pins == 0 and (waiting or s.waiters == 0) and not s.spilled
         and now - s.last_mono >= min_idle_s and s.sid != keep),
        key=lambda s: (1, -s.last_mono) if s.waiters else (0, s.last_mono),
    )  # fmt: skip
    chosen, freed = [], 0
    for session in candidates:
        if freed >= bytes_needed:
            break
        freed += session.host
        chosen.append(session)
    return chosen


def device_order(sessions: Iterable[SessionRecord], bytes_needed: int) -> list[SessionRecord]:
    """Which sessions to free GPU memory from: unpinned ones holding device bytes, most
    first, until their device bytes cover ``bytes_needed`` (the GPU ladder's emergency)."""
    candidates = sorted((s for s in sessions if s.pins == 0 and s.device > 0),
                        key=lambda s: -s.device)  # fmt: skip
    chosen, freed = [], 0
    for session in candidates:
        if freed >= bytes_needed:
            break
        freed += session.device
        chosen.append(session)
    return chosen

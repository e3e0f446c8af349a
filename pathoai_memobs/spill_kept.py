"""The files of restored buffers, kept while the buffer lives, so that spilling it again
unchanged writes nothing (``SpillStore.spill`` checks every chunk's seal before it takes
the file back): like a clean page, dropped without a write-back.

A session read back for one request and spilled again before it changes is the common case
under pressure (a result read between two spills), and a spill is the slowest thing admission
waits for. A kept file goes as soon as its buffer does (a weak reference says so, and the store
hands the file to its reaper at once where its lock is free, else at its next look), when
the disk budget needs the room, and at the latest when the process exits.
Only ndarrays are kept: bytes and bytearrays cannot be weakly referenced.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spill_store import SpillRef


class KeptFiles:
    """Restored buffer -> its file's ref, by identity; the store's lock guards every call but
    the weak references' callbacks, which only append to a deque."""

    def __init__(self, on_gone: Callable[[], None] = lambda: None) -> None:
        self._on_gone = on_gone  # told (in the deallocating thread) that a buffer went
        self._by_id: dict[int, tuple[weakref.ref[Any], SpillRef]] = {}
        self._ids: dict[str, tuple[int, SpillRef]] = {}  # file name -> id of its buffer, ref
        self._dead: collections.deque[str] = collections.deque()

    def keep(self, value: Any, ref: SpillRef) -> None:
        """``value`` was read back from ``ref``'s file, which stays while ``value`` lives."""
        dead, name, told = self._dead, ref.name, self._on_gone

        def went(_: weakref.ref[Any]) -> None:  # at the array's deallocation, any thread
            dead.append(name)
            told()

        self._by_id[id(value)] = (weakref.ref(value, went), ref)
        self._ids[ref.name] = (id(value), ref)

    def find(self, value: Any) -> SpillRef | None:
        """The kept file ``value`` was read back from (None: not one, or it went)."""
        found = self._by_id.get(id(value))
        return found[1] if found is not None and found[0]() is value else None

    def forget(self, name: str) -> SpillRef | None:
        """Stop keeping file ``name``; its ref (None: it was not kept)."""
        entry = self._ids.pop(name, None)
        if entry is None:
            return None
        ident, ref = entry
        found = self._by_id.get(ident)
        if found is not None and found[1].name == name:  # not a later buffer at that id
            del self._by_id[ident]
        return ref

    def gone(self) -> list[SpillRef]:
        """Forget the files whose buffers are gone; their refs (to remove)."""
        out = []
        while self._dead:
            ref = self.forget(self._dead.popleft())
            if ref is not None:
                out.append(ref)
        return out

    def pending(self) -> bool:
        """Whether a buffer went since ``gone`` last looked."""
        return bool(self._dead)

    def forget_all(self) -> list[SpillRef]:
        """Stop keeping every file; their refs (to remove)."""
        return [ref for name in list(self._ids) if (ref := self.forget(name)) is not None]

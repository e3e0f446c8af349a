"""What of a session goes to disk, and how it comes back as it was (pure, but for the
store's I/O in ``write`` and ``read_back``).

What goes: large buffers (bytes, bytearray, C-contiguous numpy arrays that own their
memory, CPU torch tensors that are the whole of their storage), at least ``min_bytes``
each. One file per buffer, however many keys or views reach it: keys that held one object
get one object back, and views (numpy slices, ``np.frombuffer``) are rebuilt over the
restored buffer. A spilled key holds a ``Spilled`` placeholder, which accounting charges as
the small object it is, so the session's bytes fall by what went to disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .exceptions import SpillRefusedError
from .session_accounting import BufferRef
from .spill_store import SpillCancelledError, SpillRef, SpillStore


class View(NamedTuple):
    """How to rebuild an array over a spilled buffer: its place in the buffer, shape,
    strides, dtype and writeability (numpy's own terms)."""

    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    writeable: bool


class Views(NamedTuple):
    """How to rebuild a list or tuple of arrays over one spilled buffer (a slide's tiles):
    each item's view, None for the buffer itself."""

    container: str  # "list" or "tuple"
    items: tuple[View | None, ...]


class Spilled:
    """What a spilled key holds until its session is restored (never the data): the file,
    the view over it (None: the buffer itself), and which of the values sharing the file it
    was (``slot``), so that keys that held one object get one object back."""

    __slots__ = ("ref", "slot", "view", "wrap")

    def __init__(self, ref: SpillRef, view: View | Views | None = None, slot: int = 0,
                 wrap: str = "") -> None:  # fmt: skip
        self.ref, self.view, self.slot, self.wrap = ref, view, slot, wrap

    def __repr__(self) -> str:
        return f"<spilled {self.ref.kind} of {self.ref.nbytes} bytes>"


#: One buffer to write, and the values over it: (value, its view or None, wrap) per slot,
#: with the keys holding each.
Group = tuple[Any, list[tuple[Any, "View | Views | None", str, list[str]]]]


def spillable(value: Any, min_bytes: int) -> bool:
    """Whether ``value`` is a buffer worth a file of its own: bytes, a bytearray, or a
    C-contiguous numpy array that owns its memory and holds no objects."""
    if isinstance(value, (bytes, bytearray)):
        return len(value) >= min_bytes
    flags = getattr(value, "flags", None)
    nbytes = getattr(value, "nbytes", 0)
    dtype = getattr(value, "dtype", None)
    if flags is None or dtype is None or not isinstance(nbytes, int) or nbytes < min_bytes:
        return False
    owns = getattr(value, "base", None) is None
    return bool(owns and flags["C_CONTIGUOUS"] and not dtype.hasobject)


def _as_array(value: Any, on_device: bool = False) -> tuple[Any, str]:
    """A torch tensor that is the whole of its storage is spilled as a numpy array: a CPU
    one as the array sharing its memory (``wrap`` "torch": it comes back through
    ``torch.from_numpy``); with ``on_device``, a CUDA one as a host copy (``wrap`` its
    device, "cuda:0": it comes back on that device). Any other value as it is. torch is
    never imported here: only a tensor's own methods run."""
    if type(value).__module__.split(".")[0] != "torch" or not hasattr(value, "numpy"):
        return value, ""
    device = getattr(value, "device", None)
    kind = getattr(device, "type", None)
    if (kind != "cpu") is not on_device or getattr(value, "requires_grad", True):
        return value, ""
    if value.storage_offset() or not value.is_contiguous():
        return value, ""
    if value.untyped_storage().nbytes() != value.nbytes:
        return value, ""
    if on_device:  # the host copy lives only until it is written
        return value.detach().cpu().numpy(), f"{kind}:{getattr(device, 'index', 0) or 0}"
    return value.numpy(), "torch"


def _view_of(value: Any, root: Any) -> View | None:
    """Where the array ``value`` lies in the buffer ``root`` (None for the buffer itself)."""
    if value is root:
        return None
    start = value.__array_interface__["data"][0]
    if hasattr(root, "__array_interface__"):
        base = root.__array_interface__["data"][0]
    else:  # bytes or a bytearray under np.frombuffer
        base = _address(root)
    return View(start - base, tuple(value.shape), tuple(value.strides), value.dtype.str,
                bool(value.flags.writeable))  # fmt: skip


def _address(buffer: bytes | bytearray) -> int:
    import numpy as np  # noqa: PLC0415 -- a view of these is a numpy array: numpy is there

    return int(np.frombuffer(buffer, np.uint8).__array_interface__["data"][0])


def spill_plan(
    data: Mapping[str, Any], min_bytes: int, reach: Mapping[int, BufferRef] | None = None,
    *, device: bool = False,
) -> list[Group]:  # fmt: skip
    """The buffers to write, once each, with every value over it and the keys holding each;
    largest first; with ``device``, the session's CUDA tensors only (the GPU's emergency).
    A buffer shared by several keys or views is one file; views (numpy
    slices, ``np.frombuffer``) are rebuilt over it on restore. Small values stay, and so
    does a buffer that other keys reach too (a list of tile views, say: per ``reach``, the
    session's accounting), since writing it would free nothing and split the sharing."""
    groups: dict[int, Group] = {}  # by the identity accounting charges the buffer under
    slots: dict[int, int] = {}  # id(value) -> its slot in its group
    for key, value in data.items():
        if isinstance(value, Spilled):
            continue
        if isinstance(value, (list, tuple)) and not device:  # tiles: views of one buffer
            found = _views_in(value, min_bytes)
            if found is None:
                continue
            root, ident, views = found
            group = groups.setdefault(ident, (root, []))
            if id(value) not in slots:
                slots[id(value)] = len(group[1])
                group[1].append((value, views, "", []))
            group[1][slots[id(value)]][3].append(key)
            continue
        array, wrap = _as_array(value, device)
        if device and not wrap:
            continue
        if wrap:  # the tensor's whole storage, as an array over it
            root, ident = array, value.untyped_storage().data_ptr()
            ok = array.nbytes >= min_bytes and not array.dtype.hasobject
        else:
            root = _root(array)
            ident, ok = _ident(root), spillable(root, min_bytes)
        if not ok:
            continue
        group = groups.setdefault(ident, (root, []))
        if id(value) not in slots:
            view = _view_of(array, root) if array is not root else None
            slots[id(value)] = len(group[1])
            group[1].append((value, view, wrap, []))
        group[1][slots[id(value)]][3].append(key)
    if reach is not None:  # keep only buffers that no other key reaches
        groups = {
            i: g for i, g in groups.items()
            if (ref := reach.get(i)) is None or ref.keys <= sum(len(v[3]) for v in g[1])
        }  # fmt: skip
    return sorted(groups.values(), key=lambda g: -_size(g[0]))


def _views_in(items: list[Any] | tuple[Any, ...], min_bytes: int) -> tuple[Any, int, Views] | None:
    """The one spillable buffer that every item of ``items`` is an array over, its
    identity, and how to rebuild the items; None where that is not what they are."""
    if not items or not all(
        hasattr(v, "__array_interface__") and hasattr(v, "base") for v in items
    ):
        return None
    roots = {id(_root(v)): _root(v) for v in items}
    if len(roots) != 1:
        return None
    (root,) = roots.values()
    if not spillable(root, min_bytes):
        return None
    kind = "tuple" if isinstance(items, tuple) else "list"
    return root, _ident(root), Views(kind, tuple(_view_of(v, root) for v in items))


def _ident(root: Any) -> int:
    """The identity accounting charges a buffer under (see ``sizeof``)."""
    return id(root) if isinstance(root, (bytes, bytearray)) else id(root) ^ 1


def write(
    store: SpillStore, plan: list[Group], stale: Callable[[], bool] | None = None
) -> dict[str, Spilled]:
    """Write ``plan``; each key's placeholder. Where one write is refused (or given up as
    ``stale``), what was written is discarded and the error raised: a session goes to disk
    whole or not at all."""
    done: list[SpillRef] = []
    marks: dict[str, Spilled] = {}
    try:
        for root, values in plan:
            ref = store.spill(root, stale)
            done.append(ref)
            for slot, (_, view, wrap, keys) in enumerate(values):
                mark = Spilled(ref, view, slot, wrap)
                marks.update(dict.fromkeys(keys, mark))
    except (SpillRefusedError, SpillCancelledError):
        for ref in done:
            store.discard(ref)
        raise
    return marks


def read_back(store: SpillStore, spilled: Mapping[str, Spilled]) -> dict[str, Any]:
    """Every spilled key's value, each file read once: keys that shared an object share one
    again, views are views of the restored buffer again (one object per view geometry, so
    a tile held by a key and by a list is one object again). SpillCorruptError where a file
    is not intact."""
    roots: dict[str, Any] = {}
    for mark in spilled.values():
        if mark.ref.name not in roots:
            roots[mark.ref.name] = store.restore(mark.ref)
    views: dict[tuple[str, View | None], Any] = {}
    made: dict[tuple[str, int], Any] = {}
    out = {}
    for key, mark in spilled.items():
        slot = (mark.ref.name, mark.slot)
        if slot not in made:
            made[slot] = _rebuild(roots[mark.ref.name], mark, views)
        out[key] = made[slot]
    return out


def _rebuild(root: Any, mark: Spilled, views: dict[tuple[str, View | None], Any]) -> Any:
    if isinstance(mark.view, Views):
        items = [_rebuild(root, Spilled(mark.ref, v), views) for v in mark.view.items]
        return tuple(items) if mark.view.container == "tuple" else items
    made = (mark.ref.name, mark.view)
    if made not in views:
        views[made] = _view(root, mark.view)
    value = views[made]
    if mark.wrap:
        import sys  # noqa: PLC0415

        value = sys.modules["torch"].from_numpy(value)  # the app imported it: a tensor was spilled
        if mark.wrap != "torch":
            value = value.to(mark.wrap)  # back on its device
    return value


def _view(root: Any, v: View | None) -> Any:
    """The array ``v`` describes over ``root`` (``root`` itself for None)."""
    if v is None:
        return root
    import numpy as np  # noqa: PLC0415 -- a view was spilled, so numpy is there

    value = np.ndarray(v.shape, np.dtype(v.dtype), buffer=root, offset=v.offset, strides=v.strides)
    if not v.writeable and value.flags.writeable:
        value.flags.writeable = False
    return value


def spilled_files(spilled: Mapping[str, Spilled]) -> dict[str, SpillRef]:
    """The files behind a session's placeholders, once each, by name."""
    return {mark.ref.name: mark.ref for mark in spilled.values()}


def _root(value: Any) -> Any:
    """The buffer a chain of views ends in."""
    while getattr(value, "base", None) is not None:
        value = value.base
    return value


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (bytes, bytearray)) else int(value.nbytes)

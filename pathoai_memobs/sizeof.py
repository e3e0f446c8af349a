"""What an object costs in memory, with each buffer counted once.

A measurement returns ``Charges``: bytes charged to the measured value itself (object
headers, small scalars) and bytes charged *by identity* (containers, array buffers, tensor
storages), so that a session holding one image and 256 numpy views of it, or the same dict
under two keys, is charged for the buffer once. Sizers are registered per type with
``register_sizeof``; numpy, PIL, torch and pandas are recognised without being imported.

Huge containers are sampled: past ``MAX_ITEMS`` elements the first ``MAX_ITEMS`` are
measured and the rest are estimated at their average, so one call stays bounded.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

MAX_ITEMS: Final = 100_000

#: Types whose instances are measured by ``sys.getsizeof`` alone and never deduplicated.
_SCALARS: Final = frozenset({int, float, complex, bool, type(None)})
_SMALL_STR: Final = 512  # shorter strings are charged inline (often interned or unique)


@dataclass
class Charges:
    """Bytes a value costs: ``inline`` is its own, ``tracked`` maps identity -> bytes.

    ``device`` maps identity -> bytes of memory on an accelerator (GPU tensors); those never
    count toward host memory.
    """

    inline: int = 0
    tracked: dict[int, int] = field(default_factory=dict)
    device: dict[int, int] = field(default_factory=dict)

    @property
    def host_bytes(self) -> int:
        return self.inline + sum(self.tracked.values())

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())


SizeFn = Callable[[Any, "Sizer"], None]

_registry: dict[type, SizeFn] = {}
_by_module: dict[str, SizeFn] = {}
_cache: dict[type, SizeFn] = {}
_shared: dict[int, object] = {}
_lock = threading.Lock()


def register_sizeof(cls: type, fn: SizeFn) -> None:
    """Measure instances of ``cls`` (and subclasses) with ``fn(obj, sizer)``.

    ``fn`` calls ``sizer.charge(obj, nbytes)`` for memory it owns, ``sizer.charge_buffer(key,
    nbytes)`` for a buffer that others may share (the key names the buffer), and
    ``sizer.visit(child)`` for objects it references.
    """
    with _lock:
        _registry[cls] = fn
        _cache.clear()


def mark_shared(obj: object) -> None:
    """Never charge ``obj`` (a model, a lookup table) or anything reached only through it."""
    with _lock:
        _shared[id(obj)] = obj


def unmark_shared(obj: object) -> None:
    with _lock:
        _shared.pop(id(obj), None)


class Sizer:
    """One measurement: walks values, deduplicating by identity, bounded per container."""

    __slots__ = ("charges",)

    def __init__(self) -> None:
        self.charges = Charges()

    def charge(self, obj: object, nbytes: int) -> None:
        """Charge ``obj``'s own memory, once however often it is reached."""
        self.charges.tracked[id(obj)] = nbytes

    def charge_buffer(self, key: int, nbytes: int, *, device: bool = False) -> None:
        """Charge a buffer identified by ``key`` (e.g. the id of the array that owns it)."""
        (self.charges.device if device else self.charges.tracked)[key] = nbytes

    def visit(self, obj: object) -> None:
        """Measure ``obj`` and what it references."""
        t = type(obj)
        if t in _SCALARS or (t is str and len(obj) < _SMALL_STR):  # type: ignore[arg-type]
            self.charges.inline += sys.getsizeof(obj)
            return
        if id(obj) in self.charges.tracked or id(obj) in _shared:
            return
        fn = _cache.get(t)
        if fn is None:
            fn = _resolve(t)
        fn(obj, self)

    def visit_items(self, items: Any, length: int) -> None:
        """Visit up to MAX_ITEMS children; estimate the rest at the measured average."""
        if length <= MAX_ITEMS:
            for item in items:
                self.visit(item)
            return
        before = self.charges.host_bytes
        for n, item in enumerate(items):
            if n >= MAX_ITEMS:
                break
            self.visit(item)
        measured = self.charges.host_bytes - before
        self.charges.inline += measured * (length - MAX_ITEMS) // MAX_ITEMS


def measure(value: object) -> Charges:
    """The charges of one value (a fresh measurement, nothing remembered)."""
    sizer = Sizer()
    sizer.visit(value)
    return sizer.charges


def sizeof(value: object) -> int:
    """Host bytes of ``value`` with shared buffers counted once."""
    return measure(value).host_bytes


# -- built-in sizers -----------------------------------------------------------------------


def _flat(obj: Any, sizer: Sizer) -> None:
    sizer.charge(obj, sys.getsizeof(obj))


def _sequence(obj: Any, sizer: Sizer) -> None:
    sizer.charge(obj, sys.getsizeof(obj))
    sizer.visit_items(obj, len(obj))


def _mapping(obj: Any, sizer: Sizer) -> None:
    sizer.charge(obj, sys.getsizeof(obj))
    length = len(obj)
    if length <= MAX_ITEMS:
        for k, v in obj.items():
            sizer.visit(k)
            sizer.visit(v)
    else:
        sizer.visit_items((x for kv in obj.items() for x in kv), 2 * length)


def _memoryview(obj: memoryview, sizer: Sizer) -> None:
    sizer.charge(obj, sys.getsizeof(obj))
    if obj.obj is not None:
        sizer.visit(obj.obj)


def _object(obj: Any, sizer: Sizer) -> None:
    """Plain objects: the instance, its ``__dict__`` and its slots."""
    sizer.charge(obj, sys.getsizeof(obj))
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        sizer.visit(d)
    for klass in type(obj).__mro__:
        for name in klass.__dict__.get("__slots__", ()):
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                sizer.visit(getattr(obj, name))


def _ndarray(arr: Any, sizer: Sizer) -> None:
    """numpy: the header is the array's own; its data is the owner's buffer, counted once."""
    if arr.flags.owndata:
        size = sys.getsizeof(arr)
        sizer.charge(arr, size - arr.nbytes)
        sizer.charge_buffer(id(arr) ^ 1, arr.nbytes)
    else:
        sizer.charge(arr, sys.getsizeof(arr))
        if arr.base is not None:
            sizer.visit(arr.base)


def _pil_image(im: Any, sizer: Sizer) -> None:
    bands = len(im.getbands())
    per_band = (
        4 if im.mode in ("I", "F", "I;32", "RGBX") else (2 if im.mode.startswith("I;16") else 1)
    )
    core = getattr(im, "im", None)
    sizer.charge(im, sys.getsizeof(im))
    key = id(core) if core is not None else id(im) ^ 1
    sizer.charge_buffer(key, im.width * im.height * bands * per_band)


def _torch_tensor(t: Any, sizer: Sizer) -> None:
    """torch: storage bytes once per storage; CUDA (or other device) storage is device memory."""
    sizer.charge(t, sys.getsizeof(t))
    storage = t.untyped_storage()
    sizer.charge_buffer(
        storage.data_ptr() or id(storage), storage.nbytes(), device=t.device.type != "cpu"
    )


def _pandas(obj: Any, sizer: Sizer) -> None:
    usage = obj.memory_usage(deep=True)
    total = int(usage.sum()) if hasattr(usage, "sum") else int(usage)
    sizer.charge(obj, total)


for _flat_type in (bytes, bytearray, str, range):
    register_sizeof(_flat_type, _flat)
for _seq_type in (list, tuple, set, frozenset):
    register_sizeof(_seq_type, _sequence)
register_sizeof(dict, _mapping)
register_sizeof(memoryview, _memoryview)
register_sizeof(object, _object)

_by_module.update(
    {
        "numpy.ndarray": _ndarray,
        "PIL.Image.Image": _pil_image,
        "torch.Tensor": _torch_tensor,
        "torch.nn.parameter.Parameter": _torch_tensor,
        "pandas.core.frame.DataFrame": _pandas,
        "pandas.core.series.Series": _pandas,
    }
)


def _resolve(t: type) -> SizeFn:
    """The sizer for ``t``: an exact registration, a known third-party type, else the MRO."""
    with _lock:
        for klass in t.__mro__:
            if klass in _registry and klass is not object:
                fn = _registry[klass]
                break
            known = _by_module.get(f"{klass.__module__}.{klass.__qualname__}")
            if known is not None:
                fn = known
                break
        else:
            fn = _registry[object]
        _cache[t] = fn
        return fn

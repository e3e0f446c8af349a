"""What an object costs in memory, with each buffer counted once.

A measurement returns ``Charges``: bytes charged to the measured value itself (object
headers, small scalars) and bytes charged *by identity* (containers, array buffers, tensor
storages), so that a session holding one image and 256 numpy views of it, or the same dict
under two keys, is charged for the buffer once. Sizers are registered per type with
``register_sizeof``; numpy, PIL, torch and pandas are recognised without being imported.

Large containers are sampled, so one call stays bounded: past ``SAMPLE_ABOVE`` elements,
``SAMPLE_SIZE`` of them, evenly spaced, are measured one by one, and the others are charged
at the sampled items' average *own* bytes. What two or more sampled items reach (the image
that tile views share, a common lookup table) is a shared buffer: it is charged once, at
its true size, and never extrapolated.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final

#: Containers with more elements than this are sampled (see the module docstring).
SAMPLE_ABOVE: Final = 1_024
#: How many evenly spaced elements of a sampled container are measured.
SAMPLE_SIZE: Final = 256

#: Types whose instances are measured by ``sys.getsizeof`` alone and never deduplicated.
_SCALARS: Final = frozenset({int, float, complex, bool, type(None)})
_SMALL_STR: Final = 512  # shorter strings are charged inline (often interned or unique)


@dataclass
class Charges:
    """Bytes a value costs: ``inline`` is its own, ``tracked`` maps identity -> bytes.

    ``device`` maps identity -> bytes of memory on an accelerator (GPU tensors); those never
    count toward host memory. ``estimated`` says how many of the host bytes were
    extrapolated from samples of large containers (0 when everything was measured).
    """

    inline: int = 0
    tracked: dict[int, int] = field(default_factory=dict)
    device: dict[int, int] = field(default_factory=dict)
    estimated: int = 0

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
    ``sizer.visit(child)`` for objects it references, or ``sizer.visit_items(obj, elements,
    count)`` for a collection of them (sampled past ``SAMPLE_ABOVE`` elements).
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


_NOTHING: Container[int] = frozenset()


class _SampleScope:
    """What the measurement of one sampled element skips: identities paid before sampling
    began, and those an earlier sampled element was charged for. Reaching one of the latter
    is counted, with everything it charged (host and device): a key reached by two sampled
    elements is shared, not their own."""

    __slots__ = (
        "before",
        "groups",
        "outer",
        "reached",
        "reached_device",
        "sampled",
        "sampled_device",
    )

    def __init__(self, before: Mapping[int, int], outer: Container[int]) -> None:
        self.before = before
        self.outer = outer
        self.sampled: dict[int, int] = {}  # identity -> bytes, for every sampled element
        self.sampled_device: dict[int, int] = {}
        self.reached: dict[int, int] = {}  # identity -> how many sampled elements reach it
        self.reached_device: dict[int, int] = {}
        # object -> the host and device keys charged while visiting it
        self.groups: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def __contains__(self, ident: object) -> bool:
        if ident in self.sampled:
            host, device = self.groups.get(ident, ((ident,), ()))
            for key in host:  # reaching an image reaches its buffer too
                self.reached[key] += 1
            for key in device:
                self.reached_device[key] += 1
            return True
        return ident in self.before or ident in self.outer

    def add(self, part: Charges) -> None:
        """Take in one sampled element's charges, counting the elements reaching each key
        (a buffer charged by key may come from two elements)."""
        for reached, keys in ((self.reached, part.tracked), (self.reached_device, part.device)):
            for key in keys:
                reached[key] = reached.get(key, 0) + 1
        self.sampled.update(part.tracked)
        self.sampled_device.update(part.device)

    def own_bytes(self) -> tuple[int, int]:
        """Host and device bytes reached by one sampled element alone."""
        return (
            sum(n for key, n in self.sampled.items() if self.reached[key] == 1),
            sum(n for key, n in self.sampled_device.items() if self.reached_device[key] == 1),
        )


class Sizer:
    """One measurement: walks values, deduplicating by identity, bounded per container.

    ``paid`` holds identities charged elsewhere (a sampled container measures each sampled
    element in its own Sizer, which skips what the container's measurement already has).
    """

    __slots__ = ("_paid", "charges")

    def __init__(self, paid: Container[int] = _NOTHING) -> None:
        self.charges = Charges()
        self._paid = paid

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
        ident = id(obj)
        if ident in self.charges.tracked or ident in _shared or ident in self._paid:
            return
        fn = _cache.get(t)
        if fn is None:
            fn = _resolve(t)
        scope = self._paid
        if type(scope) is not _SampleScope:
            fn(obj, self)
            return
        tracked, device = self.charges.tracked, self.charges.device
        start, device_start = len(tracked), len(device)
        fn(obj, self)
        if len(tracked) > start + 1 or len(device) > device_start:
            # Remember what reaching ``obj`` again also reaches (beyond ``obj`` itself).
            scope.groups[ident] = (
                tuple(islice(tracked, start, None)),
                tuple(islice(device, device_start, None)),
            )

    def visit_items(
        self, owner: object, items: Iterable[Any], length: int, *, pairs: bool = False
    ) -> None:
        """Visit the ``length`` elements of ``items`` (those of the container ``owner``),
        sampling past ``SAMPLE_ABOVE``.

        The estimate for the unmeasured elements is charged by ``owner``'s identity, so the
        same container reached twice is not estimated twice. With ``pairs`` each element is
        a (key, value) pair whose two parts are visited (a dict's items).
        """
        if length <= SAMPLE_ABOVE:
            if pairs:
                for k, v in items:
                    self.visit(k)
                    self.visit(v)
            else:
                for item in items:
                    self.visit(item)
            return
        stride = length // SAMPLE_SIZE
        charges = self.charges
        scope = _SampleScope(charges.tracked, self._paid)
        own_inline = 0  # scalar bytes of the sampled elements, all their own
        count = 0
        for item in islice(items, 0, None, stride):
            count += 1
            sub = Sizer(scope)
            if pairs:
                sub.visit(item[0])
                sub.visit(item[1])
            else:
                sub.visit(item)
            own_inline += sub.charges.inline
            charges.estimated += sub.charges.estimated
            scope.add(sub.charges)
        charges.inline += own_inline
        charges.tracked.update(scope.sampled)
        charges.device.update(scope.sampled_device)
        own_host, own_device = scope.own_bytes()
        unmeasured = length - count
        estimate = (own_inline + own_host) * unmeasured // count
        charges.estimated += estimate
        # Charged by the container's identity (ids are 16-byte aligned: no clash).
        charges.tracked[id(owner) ^ 2] = estimate
        if own_device:
            charges.device[id(owner) ^ 2] = own_device * unmeasured // count


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


def _fold_inline(obj: object, sizer: Sizer, before: int) -> None:
    """Move the inline bytes of ``obj``'s scalar children into ``obj``'s own entry, so the
    same container reached twice (under two keys) is charged for them once."""
    charges = sizer.charges
    charges.tracked[id(obj)] += charges.inline - before
    charges.inline = before


def _sequence(obj: Any, sizer: Sizer) -> None:
    sizer.charge(obj, sys.getsizeof(obj))  # first: a child that refers back finds it
    before = sizer.charges.inline
    sizer.visit_items(obj, obj, len(obj))
    _fold_inline(obj, sizer, before)


def _mapping(obj: Any, sizer: Sizer) -> None:
    sizer.charge(obj, sys.getsizeof(obj))
    before = sizer.charges.inline
    sizer.visit_items(obj, obj.items(), len(obj), pairs=True)
    _fold_inline(obj, sizer, before)


def _memoryview(obj: memoryview, sizer: Sizer) -> None:
    sizer.charge(obj, sys.getsizeof(obj))
    if obj.obj is not None:
        sizer.visit(obj.obj)


def _object(obj: Any, sizer: Sizer) -> None:
    """Plain objects: the instance, its ``__dict__`` and its slots."""
    sizer.charge(obj, sys.getsizeof(obj))
    before = sizer.charges.inline
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        sizer.visit(d)
    for klass in type(obj).__mro__:
        for name in klass.__dict__.get("__slots__", ()):
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                sizer.visit(getattr(obj, name))
    _fold_inline(obj, sizer, before)


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

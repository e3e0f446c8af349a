"""sizeof: the dispatch, deduplication, cycles, sampling, shared objects; property tests."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pathoai_memobs import SessionManager, mark_shared, register_sizeof, unmark_shared
from pathoai_memobs.sizeof import SAMPLE_ABOVE, SAMPLE_SIZE, measure, sizeof


def test_builtins() -> None:
    assert sizeof(b"x" * 1000) == sys.getsizeof(b"x" * 1000)
    assert sizeof(bytearray(5000)) == sys.getsizeof(bytearray(5000))
    lst = [1.5, 2.5]
    assert sizeof(lst) == sys.getsizeof(lst) + 2 * sys.getsizeof(1.5)
    mv = memoryview(bytearray(4096))
    assert sizeof(mv) == sys.getsizeof(mv) + sys.getsizeof(mv.obj)


def test_numpy_views_count_their_buffer_once() -> None:
    img = np.zeros((1024, 1024, 3), np.uint8)
    tiles = [img[i : i + 64, j : j + 64] for i in range(0, 1024, 64) for j in range(0, 1024, 64)]
    alone = sizeof(img)
    together = sizeof({"image": img, "tiles": tiles})
    assert alone >= img.nbytes
    assert together - alone < 200 * len(tiles) + sys.getsizeof(tiles) + 1000
    # A view alone still costs its base buffer.
    assert sizeof(tiles[0]) >= img.nbytes


def test_same_object_under_two_keys_counts_once() -> None:
    m = SessionManager()
    sid = m.create_session()
    arr = np.ones(1 << 20, np.uint8)
    m.update_session(sid, a=arr)
    one = m.get_session(sid).memory_bytes  # type: ignore[union-attr]
    m.update_session(sid, b=arr)
    assert m.get_session(sid).memory_bytes == one  # type: ignore[union-attr]
    m.update_session(sid, a=None)
    assert m.get_session(sid).memory_bytes >= arr.nbytes  # type: ignore[union-attr]
    m.update_session(sid, b=None)
    assert m.get_session(sid).memory_bytes < 1000  # type: ignore[union-attr]


def test_cycles_terminate() -> None:
    a: list[Any] = []
    a.append(a)
    d: dict[str, Any] = {}
    d["self"] = d
    assert sizeof(a) == sys.getsizeof(a)
    assert sizeof(d) > 0


def test_small_containers_are_measured_exactly() -> None:
    items = [float(i) for i in range(SAMPLE_ABOVE)]
    charges = measure(items)
    assert charges.estimated == 0
    assert charges.host_bytes == sys.getsizeof(items) + len(items) * sys.getsizeof(1.0)


def test_large_containers_are_sampled_within_bounds() -> None:
    big = [float(i) for i in range(300_000)]
    exact = sys.getsizeof(big) + len(big) * sys.getsizeof(1.0)
    charges = measure(big)
    items = len(big) * sys.getsizeof(1.0)
    assert charges.estimated > 0.9 * items  # most of the items were extrapolated...
    assert abs(charges.host_bytes - exact) <= 0.01 * exact  # ...and it is right

    table = {f"key-{i:06d}": [i, i + 1] for i in range(50_000)}
    one = sys.getsizeof("key-000000") + sys.getsizeof([0, 1]) + 2 * sys.getsizeof(1)
    exact = sys.getsizeof(table) + len(table) * one
    assert abs(sizeof(table) - exact) <= 0.01 * exact


def test_sampling_never_extrapolates_a_shared_buffer() -> None:
    """5,000 views of one 8 MiB image: the image is reached by every sampled view, so it is
    charged once, and only the views' own headers are extrapolated."""
    image = np.zeros((2048, 4096), np.uint8)
    views = [image[i % 2000 : i % 2000 + 16] for i in range(5_000)]
    header = sys.getsizeof(views[0])
    expected = image.nbytes + sys.getsizeof(views) + len(views) * header
    charges = measure(views)
    assert charges.estimated > 0
    assert abs(charges.host_bytes - expected) <= 0.01 * expected


def test_a_sampled_container_under_two_keys_is_estimated_once() -> None:
    m = SessionManager()
    sid = m.create_session()
    big = [{"score": i / 7} for i in range(20_000)]
    m.update_session(sid, a=big)
    one = m.get_session(sid).memory_bytes  # type: ignore[union-attr]
    assert measure(big).estimated > 0
    m.update_session(sid, b=big)
    assert m.get_session(sid).memory_bytes == one  # type: ignore[union-attr]


class FakeDeviceTensor:
    """Stands in for a GPU tensor: device bytes under its storage's key."""

    def __init__(self, storage: object, nbytes: int) -> None:
        self.storage = storage
        self.nbytes = nbytes


def test_sampling_extrapolates_device_bytes_only_per_element() -> None:
    def fake_tensor(t: FakeDeviceTensor, sizer: Any) -> None:  # as the torch sizer does
        sizer.charge(t, sys.getsizeof(t))
        sizer.charge_buffer(id(t.storage), t.nbytes, device=True)

    register_sizeof(FakeDeviceTensor, fake_tensor)
    distinct = [FakeDeviceTensor(object(), 1 << 20) for _ in range(5_000)]
    assert abs(measure(distinct).device_bytes - 5_000 * (1 << 20)) <= 0.01 * 5_000 * (1 << 20)
    storage = object()
    views = [FakeDeviceTensor(storage, 1 << 30) for _ in range(5_000)]
    assert measure(views).device_bytes == 1 << 30
    assert measure(views).host_bytes < 1 << 20  # device memory is never host memory
    one = FakeDeviceTensor(object(), 1 << 30)
    assert measure([one] * 5_000).device_bytes == 1 << 30  # one tensor, reached 5,000 times


def test_sampling_measures_evenly_spaced_elements() -> None:
    """Small items first and large ones last: taking the first elements would miss them."""
    items = [b"" for _ in range(5_000)] + [b"x" * 10_000 for _ in range(5_000)]
    exact = sys.getsizeof(items) + sum(sys.getsizeof(b) for b in items)
    assert abs(sizeof(items) - exact) <= 0.02 * exact
    assert len(items) // (len(items) // SAMPLE_SIZE) <= 2 * SAMPLE_SIZE


def test_objects_with_dict_and_slots() -> None:
    class WithDict:
        def __init__(self) -> None:
            self.payload = np.ones(10_000, np.uint8)

    class WithSlots:
        __slots__ = ("payload",)

        def __init__(self) -> None:
            self.payload = np.ones(10_000, np.uint8)

    assert sizeof(WithDict()) > 10_000
    assert sizeof(WithSlots()) > 10_000


def test_register_sizeof_and_mark_shared() -> None:
    class Model:
        pass

    register_sizeof(Model, lambda obj, sizer: sizer.charge(obj, 123_456))
    model = Model()
    assert sizeof(model) == 123_456
    assert sizeof({"m": model}) > 123_456
    mark_shared(model)
    try:
        assert sizeof({"m": model}) < 1000
    finally:
        unmark_shared(model)


def test_pil_images_when_available() -> None:
    try:
        from PIL import Image
    except ImportError:
        return  # PIL is optional; the dispatch is keyed by name and never imports it
    im = Image.new("RGB", (512, 256))
    assert sizeof(im) >= 512 * 256 * 3


_BASES = [np.ones(n * 512, np.uint8) for n in range(1, 6)]


@st.composite
def values(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 4))
    base = draw(st.sampled_from(_BASES))
    if kind == 0:
        return base
    if kind == 1:
        return base[: draw(st.integers(1, len(base)))]
    if kind == 2:
        return [base[:10], base]
    if kind == 3:
        return {"s": draw(st.text(max_size=20)), "f": draw(st.floats(allow_nan=False))}
    return None


ops = st.lists(
    st.tuples(
        st.sampled_from(["update", "delete", "create"]),
        st.integers(0, 3),
        st.sampled_from("abc"),
        values(),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_accounting_matches_a_recount_under_random_sequences(sequence: list[Any]) -> None:
    m = SessionManager()
    ids = [m.create_session() for _ in range(4)]
    for op, which, key, value in sequence:
        sid = ids[which]
        if op == "update":
            if m.get_session(sid) is not None:
                m.update_session(sid, **{key: value})
        elif op == "delete":
            m.delete_session(sid)
        else:
            ids[which] = m.create_session()
    agg = m.aggregates()
    assert agg.total_bytes == m.recount_from_scratch()
    for sid in ids:
        s = m.get_session(sid)
        if s is not None:
            fresh = measure(dict(s.data))
            # the session's own total equals measuring all its values together, minus the
            # dict that holds them and its key strings (a session charges values only)
            holder = sys.getsizeof(dict(s.data)) + sum(sys.getsizeof(k) for k in s.data)
            assert s.memory_bytes == fresh.host_bytes - holder

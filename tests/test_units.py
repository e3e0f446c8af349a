"""MiB amounts and positive numbers from the public API: converted, or refused with ValueError."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pathoai_memobs.units import MAX_BYTES, MIB, non_negative, positive, to_bytes_mb


def test_mib_amounts_round_up_to_bytes() -> None:
    assert to_bytes_mb(0) == 0
    assert to_bytes_mb(1) == MIB
    assert to_bytes_mb(0.5) == MIB // 2
    assert to_bytes_mb(1e-9) == 1


@pytest.mark.parametrize(
    "bad", [None, "1", True, -1, -0.1, math.nan, math.inf, 2**2000, 1e303, [1]]
)
def test_bad_amounts_are_value_errors_naming_the_argument(bad: object) -> None:
    with pytest.raises(ValueError, match="required_mb"):
        to_bytes_mb(bad)


@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(), st.text()))
def test_any_value_converts_within_bounds_or_is_refused(value: object) -> None:
    try:
        nbytes = to_bytes_mb(value)
    except ValueError:
        return
    assert 0 <= nbytes <= MAX_BYTES


def test_positive_and_non_negative() -> None:
    assert positive("t", 2) == 2.0
    assert non_negative("t", 0) == 0.0
    for bad in (0, -1, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match="t must"):
            positive("t", bad)
    with pytest.raises(ValueError, match="at most"):
        positive("t", 11, maximum=10)
    with pytest.raises(ValueError):
        non_negative("t", -0.5)

"""Units and argument checks shared by the public API: MiB amounts, positive durations.

The Python API speaks the reference's units (MB meaning MiB, minutes, GiB); everything
inside works in bytes and seconds. Each helper validates one argument and converts it,
raising ``ValueError`` naming the argument, so a bad value never reaches a lock, a
thread or an exported series.
"""

from __future__ import annotations

import math
from typing import Final

MIB: Final = 1 << 20
GIB: Final = 1 << 30
#: The largest byte amount any argument may name (4 EiB): beyond it, sums of amounts
#: could overflow the C and exporter side, and no machine has that much memory anyway.
MAX_BYTES: Final = 1 << 62


def _number(name: str, value: object) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return value


def to_bytes_mb(required_mb: object, name: str = "required_mb") -> int:
    """Validate a MiB amount from the public API and convert it to bytes (rounded up).

    Raises ValueError for a non-number (bools included), NaN, infinity, a negative, or
    more than ``MAX_BYTES``.
    """
    if isinstance(required_mb, bool) or not isinstance(required_mb, (int, float)):
        raise ValueError(f"{name} must be a number of MB, got {required_mb!r}")
    if isinstance(required_mb, float) and not math.isfinite(required_mb):
        raise ValueError(f"{name} must be a finite number >= 0, got {required_mb!r}")
    if required_mb < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {required_mb!r}")
    if required_mb > MAX_BYTES // MIB:
        raise ValueError(f"{name} must be at most {MAX_BYTES // MIB} MB, got {required_mb!r}")
    return math.ceil(required_mb * MIB)


def positive(name: str, value: object, *, maximum: float = float(MAX_BYTES)) -> float:
    """A finite number > 0 and <= ``maximum`` (a duration, a size in GiB), as a float."""
    number = _number(name, value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if number > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {value!r}")
    return float(number)


def non_negative(name: str, value: object, *, maximum: float = float(MAX_BYTES)) -> float:
    """A finite number >= 0 and <= ``maximum``, as a float."""
    number = _number(name, value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if number > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {value!r}")
    return float(number)

# The compiled rest loop (_rest.c); see pathoai_memobs/rest.py for how the monitor uses it.
from array import array
from collections.abc import Sequence
from typing import Final

DUE: Final[int]
EVENT: Final[int]
LEFT: Final[int]
ERROR: Final[int]
POLL: Final[int]
SLOTS: Final[int]

def watch(
    pollfds: Sequence[tuple[int, int]],
    timeout_ms: int,
    samples: int,
    files: tuple[int, int, int, bytes, Sequence[int]],
    band: tuple[int, int, int],
    slots: array[int] | bytearray,
    /,
) -> tuple[int, int, list[tuple[int, int]] | int]: ...
def snapshot(slots: array[int] | bytearray, /) -> tuple[int, int, int, int, int, int, int]: ...

class GcTimer:
    """A gc.callbacks timer that runs no bytecode (see gc_pauses.py for the layout)."""

    def __init__(self, slots: array[int], bounds_ns: Sequence[int], ring: int, /) -> None: ...
    def __call__(self, phase: str, info: dict[str, int], /) -> None: ...

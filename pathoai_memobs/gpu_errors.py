"""CUDA out-of-memory errors escaping a handler: told apart without importing torch,
counted by device, answered 503 by the error mapping, and handed to whoever listens (the
monitor's GPU part starts a GPU cleanup: the OOM left cached blocks and fragments).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from typing import Final

from .logging import GPU_OOM_CAUGHT, WARNING, emit, raised_at

_DEVICE: Final = re.compile(r"GPU (\d+)")


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's CUDA out-of-memory error: ``torch.OutOfMemoryError``
    (``torch.cuda.OutOfMemoryError``), or the RuntimeError older torch raised for it."""
    kind = type(exc)
    if kind.__name__ == "OutOfMemoryError" and kind.__module__.split(".")[0] == "torch":
        return True
    return isinstance(exc, RuntimeError) and str(exc).startswith("CUDA out of memory")


def oom_device(exc: BaseException) -> str:
    """The device an OOM names ("GPU 0 has a total capacity..."), or "unknown"."""
    found = _DEVICE.search(str(exc))
    return found.group(1) if found else "unknown"


class CaughtOoms:
    """CUDA OOMs the error mapping answered, by device (as a label value: "0", "unknown")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_device: Counter[str] = Counter()
        self.listeners: list[Callable[[str], None]] = []

    def caught(self, exc: BaseException) -> None:
        """Count one, log it (type and place, never the message's tensors), tell listeners."""
        device = oom_device(exc)
        with self._lock:
            self.by_device[device] += 1
            listeners = list(self.listeners)
        emit(WARNING, GPU_OOM_CAUGHT, gpu=device, error=type(exc).__name__, where=raised_at(exc))
        for listener in listeners:
            try:
                listener(device)
            except Exception:  # a listener never turns the answer into a 500
                continue

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_device)


#: This process's count (the error middlewares have no monitor to hand it to).
CAUGHT: Final = CaughtOoms()

"""The reference document's examples run as written, with core.memory -> pathoai_memobs.

Each ```python block of shared/spec/memory-management.md is executed; the names it needs
from the application (an image, an inference function) are given as small stand-ins.
A block that uses a class not yet in the package is skipped, saying which.
"""

from __future__ import annotations

import contextlib
import re
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pathoai_memobs

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "memory-management.md"
BLOCKS = re.findall(r"```python\n(.*?)```", SPEC.read_text(), re.S) if SPEC.exists() else []
# Blocks that show signatures or the defaults list rather than runnable code.
NOT_CODE = ("def ", "@classmethod", "session_timeout_minutes = 30")


def _runnable(block: str) -> bool:
    return not any(block.lstrip().startswith(p) for p in NOT_CODE)


def _assigned(block: str) -> set[str]:
    return set(re.findall(r"^(\w+)\s*=", block, re.M))


class _OnePass:
    """Stands in for ``time.sleep`` in the monitoring loop: ends the loop after one pass."""

    def __call__(self, _seconds: float) -> None:
        raise StopIteration


def _app_namespace() -> dict[str, Any]:
    """What the examples take from the application: an image and an inference function."""
    fake_time = types.SimpleNamespace(
        **{k: getattr(time, k) for k in dir(time) if not k.startswith("__")}
    )
    fake_time.sleep = _OnePass()
    return {
        "run_inference": lambda img: {"label": "tumor", "shape": getattr(img, "shape", None)},
        "img": np.zeros((512, 512, 3), dtype=np.uint8),
        "results": {"score": 0.5},
        "__fake_time__": fake_time,
    }


@pytest.mark.skipif(not SPEC.exists(), reason=f"reference not found at {SPEC}")
def test_reference_examples_run_in_document_order(capsys: pytest.CaptureFixture[str]) -> None:
    """Run every example in one namespace, as a reader pasting them in order would."""
    ns = _app_namespace()
    ran, skipped = [], []
    unavailable: set[str] = set()  # names defined by skipped blocks
    for index, block in enumerate(BLOCKS):
        if not _runnable(block):
            continue
        code = block.replace("core.memory", "pathoai_memobs")
        needs = {
            n for n in re.findall(r"\b([A-Z]\w+Manager)\b", code) if not hasattr(pathoai_memobs, n)
        }
        uses = set(re.findall(r"\b(\w+)\b", code)) - _assigned(code)
        if needs or uses & unavailable:
            skipped.append((index, sorted(needs) or sorted(uses & unavailable)))
            unavailable |= _assigned(code)
            continue
        code = code.replace("import time\n", "time = __fake_time__\n")
        with contextlib.suppress(StopIteration):  # the monitoring loop ran one pass
            exec(compile(code, f"reference-block-{index}", "exec"), ns)
        ran.append(index)
    out = capsys.readouterr().out
    # The monitor and config examples need nothing beyond the foundation: they must run.
    assert {1, 3, 5, 7} <= set(ran), (ran, skipped)
    assert "Memory usage:" in out and "Memory threshold: 85.0%" in out
    for index, why in skipped:
        print(f"reference block {index} skipped: needs {', '.join(why)}")

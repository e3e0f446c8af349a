"""The bench's hand-written workaround caps live sessions over every worker, not per worker
(a cap per worker adds up and was OOM-killed with four): the oldest session anywhere is
dropped, by its own worker, before the new slide is made."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .apps.workaround import HandStore


def _slide() -> np.ndarray[Any, Any]:
    return np.zeros(8, np.uint8)


def test_the_cap_spans_the_workers_and_the_oldest_anywhere_goes(tmp_path: Path) -> None:
    # flock locks belong to each open file, so two stores in one process act as two workers
    a, b = HandStore(2, str(tmp_path)), HandStore(2, str(tmp_path))
    first = a.create(_slide)
    time.sleep(0.002)
    second = b.create(_slide)
    made: list[int] = []

    def slide() -> np.ndarray[Any, Any]:
        made.append(len(a.data) + len(b.data))  # live sessions when the slide is made
        return _slide()

    third = b.create(slide)
    assert made == [1], "the oldest was dropped before the new slide was made"
    assert a.get(first) is None and b.get(second) is not None and b.get(third) is not None


def test_a_deleted_session_frees_its_slot(tmp_path: Path) -> None:
    a, b = HandStore(1, str(tmp_path)), HandStore(1, str(tmp_path))
    sid = a.create(_slide)
    a.delete(sid)
    kept = a.create(_slide)
    other = b.create(_slide)  # the cap is 1: a's session is dropped for b's
    assert a.get(kept) is None and b.get(other) is not None


def test_one_process_keeps_the_oldest_dropped_cap() -> None:
    store = HandStore(2)
    sids = [store.create(_slide) for _ in range(3)]
    assert store.get(sids[0]) is None and all(store.get(s) is not None for s in sids[1:])

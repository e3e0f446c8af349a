"""Sessions: accounting vs pympler and dask, bookkeeping per session, latency vs count."""

from __future__ import annotations

import functools
import tracemalloc
from typing import Any

import numpy as np
from dask.sizeof import sizeof as dask_sizeof
from pympler.asizeof import asizeof

from pathoai_memobs import SessionManager
from pathoai_memobs.sizeof import measure, sizeof

from .harness import Row, interleaved, progress

TITLE = "Sessions: accounting accuracy and speed, bookkeeping, latency"


def _session_data() -> tuple[dict[str, Any], int]:
    """A slide session: a 4096x4096x3 image, 256 tile views, 10,000 small results."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    image = np.random.default_rng(0).integers(0, 255, (4096, 4096, 3), dtype=np.uint8)
    tiles = [
        image[y : y + 256, x : x + 256] for y in range(0, 4096, 256) for x in range(0, 4096, 256)
    ]
    results = [{"tile": i, "score": i / 7, "label": f"class-{i % 5}"} for i in range(10_000)]
    truth = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"image": image, "tiles": tiles, "results": results}, truth


def _accounting_rows() -> tuple[list[Row], str]:
    progress("building the session data (tracemalloc truth)")
    data, truth = _session_data()

    progress("timing ours vs pympler.asizeof")
    t_ours, t_pympler = interleaved(lambda: sizeof(data), lambda: asizeof(data), number=5, rounds=9)
    progress("timing dask.sizeof")
    t_dask, _ = interleaved(lambda: dask_sizeof(data), None, number=5, rounds=9)
    assert t_pympler is not None
    reports = {"ours": sizeof(data), "pympler": asizeof(data), "dask": dask_sizeof(data)}
    ratio = {k: v / truth for k, v in reports.items()}
    rows = [
        Row(
            "account the session (time)",
            t_ours * 1e3,
            t_pympler * 1e3,
            "ms",
            ">= 20x faster",
            t_pympler / t_ours >= 20,
            "pympler.asizeof",
        ),
        Row(
            "account the session (time)",
            t_ours * 1e3,
            t_dask * 1e3,
            "ms",
            "informative",
            None,
            "dask.sizeof",
        ),
        Row(
            "reported / true bytes",
            ratio["ours"],
            ratio["pympler"],
            "x",
            "within 2 % of 1.0",
            abs(ratio["ours"] - 1) <= 0.02,
            "pympler.asizeof",
        ),
        Row(
            "reported / true bytes",
            ratio["ours"],
            ratio["dask"],
            "x",
            "within 2 % of 1.0",
            abs(ratio["ours"] - 1) <= 0.02,
            "dask.sizeof",
        ),
    ]
    notes = (
        f"True bytes (tracemalloc growth while building the data): {truth:,}. Reported: "
        + ", ".join(f"{k} {v:,} ({ratio[k]:.3f}x)" for k, v in reports.items())
        + f". Of ours, {measure(data).estimated:,} bytes are extrapolated: the 10,000 results "
        "are sampled (256 evenly spaced dicts measured, the rest charged at their average own "
        "bytes); the image and its 256 views are measured exactly. dask.sizeof is fast "
        "because it samples too, but it charges every view for the whole image."
    )
    return rows, notes


def _bookkeeping_row() -> Row:
    progress("bookkeeping per empty session")
    m = SessionManager()
    m.create_session()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ids = [m.create_session() for _ in range(10_000)]
    per = (tracemalloc.get_traced_memory()[0] - before) / len(ids)
    tracemalloc.stop()
    return Row(
        "bookkeeping per empty session (incl. its id)",
        per / 1024,
        1024.0,
        "KiB",
        "<= 2 KiB",
        per <= 2048,
        "reference: 1-5 MB",
    )


def _latency_rows() -> list[Row]:
    rows = []
    small = {"score": 0.5, "label": "tumor"}
    medians = {}
    for count in (1, 10_000):
        progress(f"get/update latency with {count:,} live sessions")
        m = SessionManager()
        ids = [m.create_session() for _ in range(count)]
        target = ids[len(ids) // 2]
        get = functools.partial(m.get_session, target)
        update = functools.partial(m.update_session, target, result=small)
        get_t, _ = interleaved(get, None, number=2000, rounds=15)
        upd_t, _ = interleaved(update, None, number=2000, rounds=15)
        medians[count] = (get_t * 1e6, upd_t * 1e6)
    for i, op in enumerate(("get_session", "small update_session")):
        one, many = medians[1][i], medians[10_000][i]
        rows.append(
            Row(
                f"{op}, 10,000 live sessions",
                many,
                one,
                "us",
                "equal within noise (<= 1.25x)",
                many <= one * 1.25,
                "1 live session",
            )
        )
    return rows


def run() -> tuple[list[Row], str]:
    rows, notes = _accounting_rows()
    rows.append(_bookkeeping_row())
    rows += _latency_rows()
    return rows, notes

"""Structured events as a person or a log pipeline receives them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pathoai_memobs import MemoryConfig, MemoryMonitor

from .fstree import MIB
from .scripted import Scripted


def test_logs_render_as_json_lines(tmp_path: Path) -> None:
    import io

    from pathoai_memobs.logging import configure_logging

    buf = io.StringIO()
    handler = configure_logging("json", stream=buf)
    try:
        s = Scripted(450 * MIB)
        m = MemoryMonitor(MemoryConfig(), sampler=s)
        m.sample()
        logging.getLogger("other.library").warning("plain %s", "record")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    ours = next(x for x in lines if x["event"] == "memory_level_changed")
    assert ours["pressure_level"] == "EMERGENCY" and ours["level"] == "warning"
    assert ours["logger"] == "pathoai_memobs" and "timestamp" in ours
    assert any(x["event"] == "plain record" for x in lines)

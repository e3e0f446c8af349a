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


def test_every_event_and_error_place_is_emitted_and_documented() -> None:
    """logging.py names the events; each is emitted somewhere and in docs/logging.md, and
    every ``where`` a monitor error can carry is documented too."""
    import re

    from pathoai_memobs import logging as events_module

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "logging.md").read_text()
    code = "\n".join(
        p.read_text() for p in (root / "pathoai_memobs").rglob("*.py") if p.name != "logging.py"
    )
    names = {
        attr: value
        for attr, value in vars(events_module).items()
        if attr.isupper() and isinstance(value, str) and attr not in {"LOGGER_NAME"}
    }
    assert names
    for attr, value in names.items():
        assert re.search(rf"\b{attr}\b", code), f"{attr} is never emitted"
        assert f"| `{value}` |" in doc, f"{value} is not in docs/logging.md"
    row = next(line for line in doc.splitlines() if line.startswith("| `monitor_error` |"))
    places = set(re.findall(r'(?:where=|count\(|_count_error\()"([a-z_]+)"', code))
    places |= set(re.findall(r'where="([a-z_]+)"', code))
    assert places >= {"sample", "action", "scrape"}
    for place in places:
        assert place in row, f"monitor_error where={place} is not documented"

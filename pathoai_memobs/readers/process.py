"""Resident set size of one process from ``/proc/<pid>/statm``."""

from __future__ import annotations

import os

from ._files import KeptOpenFile

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def parse_statm_rss(data: bytes) -> int:
    """Resident bytes from a ``statm`` text (second field, in pages); ValueError when the
    text has no second field or it is not a number."""
    fields = data.split(None, 2)
    if len(fields) < 2:
        raise ValueError(f"statm has no resident field: {data[:64]!r}")
    return int(fields[1]) * PAGE_SIZE


class ProcessReader:
    """Reads ``<root>/proc/<pid>/statm`` (this process by default) and returns RSS bytes."""

    def __init__(self, root: str = "/", pid: int | str = "self") -> None:
        self._statm = KeptOpenFile(os.path.join(root, f"proc/{pid}/statm"))

    def rss_bytes(self) -> int:
        return parse_statm_rss(self._statm.read())

    @property
    def file(self) -> KeptOpenFile:
        return self._statm

    def close(self) -> None:
        self._statm.close()

"""Writing the rendered assets (``pathoai_memobs.assets.render``) into a folder: the edge
where the pure rendering meets the file system.

Everything is rendered, and the options checked, before the first file is written; each
file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..assets import AssetOptions, Assets, render


def write(out: Path, options: AssetOptions | None = None) -> tuple[list[Path], Assets]:
    """Render for ``options`` and write into ``out`` (created if missing); the written paths
    and what was rendered. NotADirectoryError for an ``out`` that is a file;
    AssetOptionsError, before anything is written, for options that cannot be rendered."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    assets = render(options)
    written = []
    for rel, text in assets.files.items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
        written.append(target)
    return written, assets

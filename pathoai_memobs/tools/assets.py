"""The shipped operations assets: alert and recording rules with their promtool tests, the
Alertmanager routing, the Grafana dashboards and provisioning.

They live in the repository's top-level ``alerts/`` and ``grafana/`` folders; a built wheel
carries a copy under ``pathoai_memobs/_assets/`` (see setup.py), so an installed package
finds them without a checkout. ``write`` copies them to a folder the user names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: The asset folders, as in the repository, and which files of theirs are assets.
FOLDERS = ("alerts", "grafana")
PATTERNS = ("*.yml", "*.yaml", "*.json")
_PACKAGE = Path(__file__).resolve().parent.parent


class AssetsNotFoundError(FileNotFoundError):
    """Neither a wheel's packaged copy nor a source checkout's folders are there."""


def root() -> Path:
    """The folder holding ``alerts/`` and ``grafana/``: the packaged copy, or the checkout."""
    for candidate in (_PACKAGE / "_assets", _PACKAGE.parent):
        if all((candidate / name).is_dir() for name in FOLDERS):
            return candidate
    raise AssetsNotFoundError(
        f"no alerts/ and grafana/ under {_PACKAGE / '_assets'} or {_PACKAGE.parent}: "
        "this installation was built without its assets"
    )


def path(*parts: str) -> Path:
    """One asset, e.g. ``path("alerts", "alertmanager.yml")``."""
    found = root().joinpath(*parts)
    if not found.exists():
        raise AssetsNotFoundError(f"no asset {'/'.join(parts)} under {root()}")
    return found


def files() -> list[Path]:
    """Every asset, relative to ``root()``, in a stable order."""
    base = root()
    found = {
        p.relative_to(base)
        for name in FOLDERS
        for pattern in PATTERNS
        for p in (base / name).rglob(pattern)
        if p.is_file()
    }
    return sorted(found)


def write(out: Path) -> list[Path]:
    """Copy every asset into ``out`` (created if missing), keeping the folder layout;
    the written paths. Refuses an ``out`` that is a file."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    base = root()
    written = []
    for rel in files():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / rel, target)
        written.append(target)
    return written

"""A wheel built from this repository works outside the checkout: its assets and its stack."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from .promstack import check_stack_command

ROOT = Path(__file__).resolve().parent.parent
#: What a checkout holds that no clean clone has.
LOCAL = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
LOCAL += ("*.so", "_assets")


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_an_installed_wheel_writes_its_assets_and_runs_its_stack(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # As a user would build it: pip's isolated build environment, from a copy of the source
    # tree (setuptools builds in place, and a stale build/ could hide a missing file).
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*LOCAL))
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        tmp_path,
    )
    (wheel,) = dist.glob("pathoai_memobs-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        tmp_path,
    )
    # The dependencies come from this environment's site-packages, appended after the fresh
    # venv's own (a plain path line: this environment's editable finder is not loaded).
    purelib = Path(sysconfig.get_paths()["purelib"])
    fresh = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            tmp_path,
        ).strip()
    )
    (fresh / "zz-deps.pth").write_text(f"{purelib}\n")

    where = _run(
        [str(python), "-c", "import pathoai_memobs; print(pathoai_memobs.__file__)"], tmp_path
    )
    assert where.startswith(str(fresh)), where  # the wheel's copy, not the checkout

    out = tmp_path / "assets-out"
    cli = str(venv / "bin" / "pathoai-memobs")
    listed = _run([cli, "assets", "--out", str(out)], tmp_path).split()
    expected = sorted(
        p.relative_to(ROOT)
        for folder in ("alerts", "grafana")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and p.suffix in {".yml", ".yaml", ".json"}
    )
    assert sorted(Path(p).relative_to(out) for p in listed) == expected
    for rel in expected:
        assert filecmp.cmp(ROOT / rel, out / rel, shallow=False), rel

    check_stack_command([cli], cwd=str(tmp_path))

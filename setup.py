"""Build hooks pyproject.toml cannot express: the wheel carries the top-level asset folders.

alerts/ and grafana/ stay where operators look for them in the repository; a wheel gets a
copy under pathoai_memobs/_assets/, which pathoai_memobs.tools.assets finds when there is
no checkout. Everything else is configured in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ASSET_FOLDERS = ("alerts", "grafana")


class BuildWithAssets(build_py):
    """build_py, then copy the asset folders' YAML and JSON files into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's folders directly
        target = Path(self.build_lib) / "pathoai_memobs" / "_assets"
        for name in ASSET_FOLDERS:
            shutil.copytree(
                HERE / name,
                target / name,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("*.py", "__pycache__"),
            )


setup(cmdclass={"build_py": BuildWithAssets})

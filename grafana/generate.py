"""Write the dashboards from code: ``python grafana/generate.py`` rewrites
``grafana/dashboards/*.json`` with the shipped options; ``--check`` exits 1 if the committed
JSON differs. The panels live in ``pathoai_memobs.assets.dashboard`` (the ``assets`` command
renders them for other selectors).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pathoai_memobs.assets import AssetOptions, dashboard

OUT = Path(__file__).resolve().parent / "dashboards"


def main(argv: list[str]) -> int:
    rendered = dashboard.render(AssetOptions())
    if "--check" in argv:
        stale = [n for n, text in rendered.items()
                 if not (OUT / n).exists() or (OUT / n).read_text() != text]  # fmt: skip
        if stale:
            print("out of date (run python grafana/generate.py):", ", ".join(stale))
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run in a small memory cgroup: the monitor's process starts a sibling that allocates past
the limit and is OOM-killed; prints the OOM count the monitor reads before and after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pathoai_memobs import MemoryConfig, MemoryMonitor

HOG = "import numpy as np\nx = []\nwhile True:\n    x.append(np.ones(16 << 20, np.uint8))\n"


def main() -> None:
    monitor = MemoryMonitor(MemoryConfig(enable_background_monitoring=False))
    before = monitor.oom_kills()
    sibling = subprocess.run([sys.executable, "-c", HOG], check=False)
    after = monitor.oom_kills()
    print(json.dumps({"before": before, "after": after, "sibling": sibling.returncode,
                      "source": monitor.sample().source}))  # fmt: skip


if __name__ == "__main__":
    main()

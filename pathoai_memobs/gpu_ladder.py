"""The GPU ladder: per device, the host ladder's rules (``pressure.classify``) over NVML's
used ratio and free bytes, with their own thresholds (``gpu_warning_percent``,
``gpu_critical_percent``, ``gpu_floor_mb``) and level changes logged.

With the default percents the rungs are fitted below the floor on small devices, as the
host's are in small containers (``Thresholds.for_total``); an explicit configuration that
puts the floor first is reported once per device (``rungs_out_of_order``, with ``gpu``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .logging import GPU_LEVEL_CHANGED, INFO, RUNGS_OUT_OF_ORDER, WARNING, emit
from .pressure import Level, Thresholds, classify, rungs_in_order
from .units import MIB

if TYPE_CHECKING:
    from .config import MemoryConfig
    from .readers.gpu import GpuDevice


def gpu_thresholds(config: MemoryConfig) -> Thresholds:
    """The GPU rungs of a validated config (percent and MiB in, ratios and bytes out)."""
    floor = math.ceil(config.gpu_floor_mb * MIB)
    names = ("gpu_warning_percent", "gpu_critical_percent")
    return Thresholds(
        warning_ratio=config.gpu_warning_percent / 100.0,
        critical_ratio=config.gpu_critical_percent / 100.0,
        floor_bytes=floor,
        floor_margin_bytes=floor // 10,
        fit_to_floor={config.source_of(n) for n in names} == {"default"},
    )


class GpuLadder:
    """The level of each device seen, moved by each reading of it."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.levels: dict[int, Level] = {}
        self.in_order: dict[int, bool] = {}  # per device: rungs in order at its size

    def observe(self, devices: tuple[GpuDevice, ...]) -> list[tuple[GpuDevice, Level]]:
        """Move each device's level; the devices whose level changed, with the level before."""
        changed = []
        for d in devices:
            if d.index not in self.in_order:
                self.in_order[d.index] = self._check(d)
            previous = self.levels.get(d.index, Level.NORMAL)
            t = self.thresholds.for_total(d.total)
            level = classify(d.used_ratio, d.free, t, previous)
            self.levels[d.index] = level
            if level is not previous:
                changed.append((d, previous))
                emit(
                    WARNING if level > previous else INFO,
                    GPU_LEVEL_CHANGED,
                    gpu=d.index,
                    uuid=d.uuid,
                    pressure_level=level.name,
                    previous_level=previous.name,
                    used_ratio=round(d.used_ratio, 4),
                    free_bytes=d.free,
                    total_bytes=d.total,
                    process_bytes=d.process,
                    torch_reserved_bytes=d.torch.reserved if d.torch else None,
                )
        return changed

    def level(self, index: int) -> Level:
        return self.levels.get(index, Level.NORMAL)

    def floor_bytes(self, total: int) -> int:
        return self.thresholds.for_total(total).floor_bytes

    def _check(self, d: GpuDevice) -> bool:
        if rungs_in_order(self.thresholds, d.total):
            return True
        t = self.thresholds.for_total(d.total)
        begins = round(1 - t.floor_bytes / d.total, 4) if d.total else 0
        emit(WARNING, RUNGS_OUT_OF_ORDER, gpu=d.index, uuid=d.uuid, limit_bytes=d.total,
             warning_ratio=t.warning_ratio, critical_ratio=t.critical_ratio,
             floor_bytes=t.floor_bytes, floor_begins_at_ratio=begins)  # fmt: skip
        return False

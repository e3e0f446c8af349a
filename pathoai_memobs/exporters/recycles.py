"""``pathoai_worker_recycles_total`` for Prometheus: the count ``WorkerRecycler`` keeps in
its lock folder, read at scrape time (register it where the metrics are served, e.g. in
gunicorn's master, so the count outlives the workers it counts)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..recycling import recycles
from .catalogue import BY_NAME

NAME = "pathoai_worker_recycles_total"


class RecycleCollector(Collector):
    """Workers recycled for memory with the ``WorkerRecycler`` whose ``lock_dir`` this is."""

    def __init__(self, lock_dir: str | os.PathLike[str]) -> None:
        self.lock_dir = lock_dir

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(NAME.removesuffix("_total"), BY_NAME[NAME].help)
        family.add_metric([], recycles(self.lock_dir))
        yield family

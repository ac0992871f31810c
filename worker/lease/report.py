"""The lease's part of /healthz (role, holder, lease) and its metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from worker.lease.keeper import ACTIVE, LeaseKeeper
from worker.reporting import PREFIX, gauge


class LeaseReport:
    def __init__(self, lease: LeaseKeeper) -> None:
        self._lease = lease

    async def health(self) -> dict[str, Any]:
        return {"role": self._lease.role, "lease_holder": self._lease.holder, "lease": self._lease.health()}

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        # Several workers on one CHT: the sum over them should be 1 (0 for longer than the lease
        # TTL means nobody sends).
        yield gauge("lease_active", "1 while this worker holds the lease (the active worker).",
                    1 if part.get("role") == ACTIVE else 0)
        yield CounterMetricFamily(PREFIX + "lease_acquisitions", "Times this process took the lease.",
                                  value=float(self._lease.acquired))

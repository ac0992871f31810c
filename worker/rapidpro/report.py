"""RapidPro calls and the shared budget, as metrics (no part of /healthz of their own yet)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from worker.rapidpro.budget import RateBudget
from worker.rapidpro.client import RapidProClient
from worker.reporting import PREFIX, gauge


class RapidProReport:
    def __init__(self, client: RapidProClient, budget: RateBudget) -> None:
        self._client = client
        self._budget = budget

    async def health(self) -> dict[str, Any]:
        return {}

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        requests = CounterMetricFamily(PREFIX + "rapidpro_requests", "RapidPro API calls by endpoint "
                                       "and HTTP status (error: no answer).", labels=["endpoint", "status"])
        for (endpoint, status), count in sorted(self._client.requests.items()):
            requests.add_metric([endpoint, status], float(count))
        yield requests
        yield gauge("rate_budget_remaining", "Calls left in the shared RapidPro budget now.",
                    self._budget.tokens())
        yield gauge("rate_budget_waiting", "Calls waiting for the RapidPro budget.", self._budget.waiting)

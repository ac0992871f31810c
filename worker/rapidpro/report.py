"""RapidPro calls and the shared budget as metrics; the workspace's channels (the channel watcher,
worker/rapidpro/channels.py) in /healthz `rapidpro.channels` and as metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from worker.rapidpro.budget import RateBudget
from worker.rapidpro.channels import ChannelWatcher
from worker.rapidpro.client import RapidProClient
from worker.reporting import PREFIX, gauge


class RapidProReport:
    def __init__(self, client: RapidProClient, budget: RateBudget,
                 channels: ChannelWatcher | None = None) -> None:
        self._client = client
        self._budget = budget
        self._channels = channels

    async def health(self) -> dict[str, Any]:
        if self._channels is None:
            return {}
        return {"rapidpro": {"channels": self._channels.health()}}

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        requests = CounterMetricFamily(PREFIX + "rapidpro_requests", "RapidPro API calls by endpoint "
                                       "and HTTP status (error: no answer).", labels=["endpoint", "status"])
        for (endpoint, status), count in sorted(self._client.requests.items()):
            requests.add_metric([endpoint, status], float(count))
        yield requests
        yield gauge("rate_budget_remaining", "Calls left in the shared RapidPro budget now.",
                    self._budget.tokens())
        yield gauge("rate_budget_waiting", "Calls waiting for the RapidPro budget.", self._budget.waiting)
        yield from channel_families((part.get("rapidpro") or {}).get("channels") or {})


def channel_families(channels: Mapping[str, Any]) -> Iterable[Metric]:
    """Per channel, while this worker watches them (the active one) and has read them once; the
    families are listed (without samples) otherwise."""
    age = GaugeMetricFamily(PREFIX + "channel_last_seen_age_seconds", "Seconds since RapidPro last heard "
                            "from the channel (Android relayers sync every few minutes; absent for channel "
                            "types RapidPro does not report).", labels=["channel", "channel_name"])
    power = GaugeMetricFamily(PREFIX + "channel_power_level", "The Android relayer's battery, in percent "
                              "(absent before its first sync).", labels=["channel", "channel_name"])
    active = GaugeMetricFamily(PREFIX + "channels_active", "The workspace's channels able to carry SMS "
                               "now (an Android relayer seen in the last 30 minutes, or a channel of another "
                               "type).")
    items = channels.get("items")
    if channels.get("watching") and items is not None:
        for item in items:
            labels = [str(item.get("uuid")), str(item.get("name"))]
            if item.get("last_seen_age_s") is not None:
                age.add_metric(labels, float(item["last_seen_age_s"]))
            if item.get("power_level") is not None:
                power.add_metric(labels, float(item["power_level"]))
        active.add_metric([], float(channels.get("active") or 0))
    yield age
    yield power
    yield active

"""RapidPro calls and the shared budget as metrics; the workspace's channels (the channel watcher,
worker/rapidpro/channels.py) in /healthz `rapidpro.channels` and as metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from worker.rapidpro.budget import RateBudget, ScopedBudget
from worker.rapidpro.channels import ChannelWatcher
from worker.rapidpro.client import RapidProClient
from worker.reporting import PREFIX


class RapidProReport:
    def __init__(self, client: RapidProClient, budget: RateBudget | ScopedBudget,
                 channels: ChannelWatcher | None = None) -> None:
        self._client = client
        self._budget = budget
        self._channels = channels

    async def health(self) -> dict[str, Any]:
        part: dict[str, Any] = {}
        if isinstance(self._budget, ScopedBudget):
            part["budget"] = self._budget.health()  # per RapidPro throttle scope
        if self._channels is not None:
            part["channels"] = self._channels.health()
        return {"rapidpro": part} if part else {}

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        requests = CounterMetricFamily(PREFIX + "rapidpro_requests", "RapidPro API calls by endpoint "
                                       "and HTTP status (error: no answer).", labels=["endpoint", "status"])
        for (endpoint, status), count in sorted(self._client.requests.items()):
            requests.add_metric([endpoint, status], float(count))
        yield requests
        yield from budget_families(self._budget)
        yield from channel_families((part.get("rapidpro") or {}).get("channels") or {})


def budget_families(budget: RateBudget | ScopedBudget) -> Iterable[Metric]:
    """The budget of each RapidPro throttle scope the worker's calls are counted in (label
    `scope`: v2.broadcasts, v2.messages, v2), under the names the single budget had."""
    scoped = budget if isinstance(budget, ScopedBudget) else None
    scopes = scoped.active_scopes() if scoped else [budget.scope]  # type: ignore[union-attr]

    def of(scope: str) -> RateBudget:
        return scoped.scope(scope) if scoped else budget  # type: ignore[return-value]

    families = {
        "rate_budget_remaining": ("Calls left in the RapidPro budget of the scope now.",
                                  lambda b: b.tokens()),
        "rate_budget_waiting": ("Calls waiting for the RapidPro budget of the scope.", lambda b: b.waiting),
        "rate_budget_calls_per_hour": ("The scope's rate: the server version's or the configured one.",
                                       lambda b: b.calls_per_hour),
        "rate_budget_paused_seconds": ("Seconds left in the scope's pause after a 429 (0: not paused).",
                                       lambda b: b.paused_for()),
        "rate_budget_used_last_hour": ("Calls the scope's sliding hour counts (RapidPro's count, as far "
                                       "as the worker knows it).", lambda b: b.window_count() or 0),
    }
    for name, (doc, value) in families.items():
        family = GaugeMetricFamily(PREFIX + name, doc, labels=["scope"])
        for scope in scopes:
            family.add_metric([scope], float(value(of(scope))))
        yield family


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

"""Prometheus metrics at GET /metrics, and readiness at GET /readyz.

Most metrics are read at scrape time from what /healthz shows (one source of truth, nothing to
keep in step): each scrape first takes every capability's part of the health document, then asks
each for its metric families (worker/reporting.py). Only the two histograms need observation
points: webhook durations (an aiohttp middleware, so the webhook module is untouched) and status
freshness (a callback the status tracker calls when it learns a new state).

Every Worker has its own registry, so several workers in one process (tests) do not mix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from worker.incoming.webhook import V1_PATH, V2_PATH
from worker.logs import get_logger
from worker.reporting import PREFIX, Reporter, gauge

log = get_logger(__name__)

Readiness = Callable[[], Awaitable[list[str]]]


def merged(families: Iterable[Metric]) -> list[Metric]:
    """Families of one name from several reporters (e.g. `stalled` per part) as one family."""
    by_name: dict[str, Metric] = {}
    for family in families:
        if family.name in by_name:
            by_name[family.name].samples.extend(family.samples)
        else:
            by_name[family.name] = family
    return list(by_name.values())


class _ReportsCollector(Collector):
    """Metric families from the last snapshot of every reporter's part (taken before each scrape)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        snapshot = self._metrics.snapshot
        if snapshot is None:
            return []
        families: list[Metric] = []
        for reporter, part in snapshot:
            families.extend(reporter.metrics(part))
        families.append(gauge("ready", "1 when CouchDB answers and the settings are loaded.",
                              1 if self._metrics.last_ready else 0))
        return merged(families)


class Metrics:
    def __init__(self, reporters: Sequence[Reporter], readiness: Readiness) -> None:
        self._reporters = reporters
        self._readiness = readiness
        self.registry = CollectorRegistry(auto_describe=False)
        self.snapshot: list[tuple[Reporter, dict[str, Any]]] | None = None
        self.last_ready = False
        self._scrape_lock = asyncio.Lock()
        self.webhook_duration = Histogram(
            PREFIX + "webhook_duration_seconds", "Time to answer an incoming-SMS webhook request.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15), registry=self.registry)
        self.status_freshness = Histogram(
            PREFIX + "status_freshness_seconds", "How long after RapidPro changed a message's status "
            "the worker learned it.",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400), registry=self.registry)
        self.registry.register(_ReportsCollector(self))

    def observe_status_freshness(self, seconds: float) -> None:
        self.status_freshness.observe(max(0.0, seconds))

    def register(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/readyz", self.handle_readyz)
        app.middlewares.append(self._time_webhook)

    def observe_webhook_on(self, app: web.Application) -> None:
        """Time the webhook on another listener too (the public door)."""
        app.middlewares.append(self._time_webhook)

    @web.middleware
    async def _time_webhook(self, request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
        if request.path not in (V1_PATH, V2_PATH):
            return await handler(request)
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            self.webhook_duration.observe(time.perf_counter() - started)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        async with self._scrape_lock:  # two scrapes at once share nothing mutable half-way
            self.snapshot = [(reporter, await reporter.health()) for reporter in self._reporters]
            self.last_ready = not await self._readiness()
            body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_readyz(self, request: web.Request) -> web.Response:
        problems = await self._readiness()
        self.last_ready = not problems
        return web.json_response({"ready": not problems, "problems": problems},
                                 status=503 if problems else 200)

"""Prometheus metrics at GET /metrics, and readiness at GET /readyz.

Most metrics are read at scrape time from the counters the daemon already keeps for /healthz
(one source of truth, nothing to keep in step): each scrape first takes the health document,
then a custom collector turns it into metric families. Only the two histograms need observation
points: webhook durations (an aiohttp middleware, so the webhook module is untouched) and status
freshness (a callback the status tracker calls when it learns a new state).

Every Worker has its own registry, so several workers in one process (tests) do not mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.couch.client import CouchError
from worker.incoming.webhook import V1_PATH, V2_PATH
from worker.logs import get_logger

if TYPE_CHECKING:
    from worker.app import Worker

log = get_logger(__name__)

PREFIX = "cht_rapidpro_"
CHANGE_RESULTS = {"processed": "processed", "skipped": "skipped", "failures": "failed", "parked": "parked"}
MESSAGE_OUTCOMES = ("sent", "rejected", "denied", "in_doubt", "resent", "reprojected")
# Bounded label values for why the worker is not sending (the health document has free text).
PAUSE_REASONS = ("not_started", "settings_not_loaded", "other_gateway", "no_rapidpro_url", "no_token",
                 "unauthorized", "workspace_blocked", "wrong_url", "rapidpro_server_error",
                 "rate_limited", "rapidpro_unreachable", "other")
_PAUSE_TYPES = {"RapidProUnauthorized": "unauthorized", "WorkspaceBlocked": "workspace_blocked",
                "WrongUrl": "wrong_url", "RapidProServerError": "rapidpro_server_error",
                "RateLimited": "rate_limited", "RapidProUnreachable": "rapidpro_unreachable"}


def pause_reason_label(outgoing: dict[str, Any]) -> str | None:
    """The `reason` label for the health document's `outgoing` part; None while sending."""
    if outgoing.get("sending"):
        return None
    paused = outgoing.get("paused_reason")
    if paused:
        return _PAUSE_TYPES.get(str(paused).split(":", 1)[0], "other")
    reason = str(outgoing.get("not_sending_reason") or "")
    if reason == "not started":
        return "not_started"
    if "settings are not loaded" in reason:
        return "settings_not_loaded"
    if "outgoing_service" in reason:
        return "other_gateway"
    if "rapidpro.url" in reason:
        return "no_rapidpro_url"
    if "token" in reason:
        return "no_token"
    return "other"


class _HealthCollector(Collector):
    """Metric families from the last health snapshot (taken just before each scrape)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        health = self._metrics.snapshot
        worker = self._metrics.worker
        if health is None:
            return
        changes = CounterMetricFamily(PREFIX + "changes", "Changes of the medic feed by result "
                                      "(failed counts attempts that failed).", labels=["result"])
        for key, label in CHANGE_RESULTS.items():
            changes.add_metric([label], float((health.get("changes") or {}).get(key, 0)))
        yield changes

        backlog = health.get("backlog")
        yield _gauge("feed_backlog", "Changes after the checkpoint (-1: CouchDB did not say).",
                     -1 if backlog is None else backlog)
        yield _gauge("feed_connected", "1 while the changes feed is connected.",
                     1 if (health.get("feed") or {}).get("connected") else 0)
        age = 0.0
        saved_at = worker.checkpoints.saved_at
        if backlog and saved_at is not None:
            age = max(0.0, time.time() - saved_at)
        yield _gauge("checkpoint_age_seconds", "Seconds since the checkpoint last moved while there "
                     "are changes after it (0 when there is nothing to process).", age)
        parked = health.get("parked_total")
        yield _gauge("parked_changes", "Parked changes waiting for an operator (-1: unknown).",
                     -1 if parked is None else parked)

        outgoing = health.get("outgoing") or {}
        messages = CounterMetricFamily(PREFIX + "messages", "Outgoing messages by outcome.",
                                       labels=["outcome"])
        stats = worker.sender.stats
        # `resent`: in-doubt claims the resolver proved never reached RapidPro and sent again.
        resolved = worker.in_doubt.totals if worker.in_doubt is not None else {}
        for outcome in MESSAGE_OUTCOMES:
            value = resolved.get("resent", 0) if outcome == "resent" else getattr(stats, outcome, 0)
            messages.add_metric([outcome], float(value))
        yield messages
        waiting = outgoing.get("in_doubt_waiting_operator")
        yield _gauge("in_doubt_waiting_operator", "In-doubt sends RapidPro cannot settle: an operator "
                     "decides with `cht-rapidpro-worker in-doubt` (-1: not counted yet).",
                     -1 if waiting is None else waiting)
        paused = GaugeMetricFamily(PREFIX + "sending_paused", "1 for the reason the worker is not "
                                   "sending now; 0 for every other reason.", labels=["reason"])
        current = pause_reason_label(outgoing)
        for reason in PAUSE_REASONS:
            paused.add_metric([reason], 1.0 if reason == current else 0.0)
        yield paused
        yield _gauge("double_sender_risk", "1 when CHT's built-in RapidPro sender may also send.",
                     1 if outgoing.get("double_sender_risk") else 0)

        requests = CounterMetricFamily(PREFIX + "rapidpro_requests", "RapidPro API calls by endpoint "
                                       "and HTTP status (error: no answer).", labels=["endpoint", "status"])
        for (endpoint, status), count in sorted(worker.rapidpro.requests.items()):
            requests.add_metric([endpoint, status], float(count))
        yield requests
        yield _gauge("rate_budget_remaining", "Calls left in the shared RapidPro budget now.",
                     worker.budget.tokens())
        yield _gauge("rate_budget_waiting", "Calls waiting for the RapidPro budget.", worker.budget.waiting)

        tracking = health.get("status_tracking") or {}
        yield _gauge("status_tracked", "Sent messages followed until a final state.",
                     tracking.get("tracked", 0))
        yield _gauge("status_due", "Tracked messages due to be asked about.", tracking.get("due", 0))
        # A job that keeps retrying without getting through (429s, a short budget) logs no error.
        progress = {"status_tracking": tracking.get("progress") or {},
                    "in_doubt": outgoing.get("in_doubt_lookups") or {}}
        age = GaugeMetricFamily(PREFIX + "progress_age_seconds", "Seconds since the periodic job last "
                                "completed a run (status tracking: a round; in_doubt: a round that looked "
                                "up every due send). Absent while the job does not run (a standby).",
                                labels=["part"])
        stalled = GaugeMetricFamily(PREFIX + "stalled", "1 when the job has not completed a run for a few "
                                    "of its intervals (see /healthz stall_after_s).", labels=["part"])
        for part, state in progress.items():
            if state.get("age_s") is not None:
                age.add_metric([part], float(state["age_s"]))
            stalled.add_metric([part], 1.0 if state.get("stalled") else 0.0)
        yield age
        yield stalled

        webhook = CounterMetricFamily(PREFIX + "webhook_requests", "Incoming-SMS webhook requests by "
                                      "outcome.", labels=["outcome"])
        for outcome, count in ((health.get("incoming") or {}).get("requests") or {}).items():
            webhook.add_metric([outcome], float(count))
        yield webhook
        reconciler = worker.incoming_reconciler
        yield CounterMetricFamily(PREFIX + "incoming_reconciled", "Incoming messages stored by the "
                                  "reconciliation (the webhook had missed them).",
                                  value=float(reconciler.reconciled_total if reconciler else 0))
        yield _gauge("ready", "1 when CouchDB answers and the settings are loaded.",
                     1 if self._metrics.last_ready else 0)
        # Several workers on one CHT: the sum over them should be 1 (0 for longer than the lease
        # TTL means nobody sends).
        yield _gauge("lease_active", "1 while this worker holds the lease (the active worker).",
                     1 if worker.lease.role == "active" else 0)
        yield CounterMetricFamily(PREFIX + "lease_acquisitions", "Times this process took the lease.",
                                  value=float(worker.lease.acquired))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=float(value))


class Metrics:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = CollectorRegistry(auto_describe=False)
        self.snapshot: dict[str, Any] | None = None
        self.last_ready = False
        self._scrape_lock = asyncio.Lock()
        self.webhook_duration = Histogram(
            PREFIX + "webhook_duration_seconds", "Time to answer an incoming-SMS webhook request.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15), registry=self.registry)
        self.status_freshness = Histogram(
            PREFIX + "status_freshness_seconds", "How long after RapidPro changed a message's status "
            "the worker learned it.",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400), registry=self.registry)
        self.registry.register(_HealthCollector(self))

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
            self.snapshot = await self.worker.health()
            self.last_ready = not await readiness_problems(self.worker)
            body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_readyz(self, request: web.Request) -> web.Response:
        problems = await readiness_problems(self.worker)
        self.last_ready = not problems
        return web.json_response({"ready": not problems, "problems": problems},
                                 status=503 if problems else 200)


async def readiness_problems(worker: Worker, timeout: float = 3.0) -> list[str]:
    """Why the worker is not ready: CouchDB does not answer, or the settings are not loaded."""
    problems: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            await worker.medic.server.request_json("GET", quote(worker.medic.name, safe=""), timeout=timeout)
    except (CouchError, TimeoutError) as exc:
        problems.append(f"CouchDB does not answer: {str(exc)[:200] or type(exc).__name__}")
    if worker.settings.current is None:
        problems.append("the app settings are not loaded")
    with contextlib.suppress(Exception):
        if worker.follower is None and worker.lease.role == "active":  # a standby has no feed
            problems.append("the changes feed has not started")
    return problems

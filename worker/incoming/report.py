"""Incoming SMS's part of /healthz (webhook outcomes, reconciliation) and its metrics (the
webhook's duration histogram is observed in worker/http/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from worker.incoming.reconcile import IncomingReconciler
from worker.incoming.webhook import IncomingWebhook
from worker.rapidpro.credentials import Credential
from worker.reporting import PREFIX


class IncomingReport:
    def __init__(self, webhook: IncomingWebhook, key: Credential,
                 reconciler: IncomingReconciler | None) -> None:
        self._webhook = webhook
        self._key = key
        self._reconciler = reconciler

    async def health(self) -> dict[str, Any]:
        reconciler = self._reconciler
        return {"incoming": {
            "key_source": self._key.source,
            "requests": dict(self._webhook.counters),
            "reconcile": None if reconciler is None else {
                "last_round": vars(reconciler.last_round) if reconciler.last_round else None,
                "last_error": reconciler.last_error,
            },
        }}

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        webhook = CounterMetricFamily(PREFIX + "webhook_requests", "Incoming-SMS webhook requests by "
                                      "outcome.", labels=["outcome"])
        for outcome, count in ((part.get("incoming") or {}).get("requests") or {}).items():
            webhook.add_metric([outcome], float(count))
        yield webhook
        reconciler = self._reconciler
        yield CounterMetricFamily(PREFIX + "incoming_reconciled", "Incoming messages stored by the "
                                  "reconciliation (the webhook had missed them).",
                                  value=float(reconciler.reconciled_total if reconciler else 0))

"""The feed's part of /healthz (connection, checkpoint, backlog, changes, parked) and its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from transitions.cht.timestamps import cht_time
from worker.couch.client import CouchError, Database
from worker.feed.checkpoint import CheckpointStore
from worker.feed.dispatcher import Dispatcher
from worker.feed.follower import ChangesFollower
from worker.feed.parking import ParkedChanges
from worker.reporting import PREFIX, gauge

CHANGE_RESULTS = {"processed": "processed", "skipped": "skipped", "failures": "failed", "parked": "parked"}
COUCH_ASK_TIMEOUT = 3.0  # /healthz must answer while CouchDB does not


class FeedReport:
    def __init__(self, medic: Database, checkpoints: CheckpointStore, parked: ParkedChanges, *,
                 follower: Callable[[], ChangesFollower | None],
                 dispatcher: Callable[[], Dispatcher | None]) -> None:
        """`follower`, `dispatcher`: the active session's (None on a standby, or before the start)."""
        self._medic = medic
        self._checkpoints = checkpoints
        self._parked = parked
        self._follower = follower
        self._dispatcher = dispatcher

    async def health(self) -> dict[str, Any]:
        follower, dispatcher = self._follower(), self._dispatcher()
        feed = follower.status if follower else None
        stats = dispatcher.stats if dispatcher else None
        checkpoint = self._checkpoints.saved_seq
        backlog: int | None = None
        parked_total: int | None = None
        if checkpoint is not None:
            with contextlib.suppress(CouchError, TimeoutError):
                async with asyncio.timeout(COUCH_ASK_TIMEOUT):
                    page = await self._medic.changes(checkpoint, limit=0, include_docs=False)
                backlog = page.pending
        with contextlib.suppress(CouchError, TimeoutError):
            async with asyncio.timeout(COUCH_ASK_TIMEOUT):
                parked_total = await self._parked.count()
        return {
            "feed": {
                "connected": feed.connected if feed else False,
                "since": feed.since if feed else None,
                "caught_up": feed.caught_up if feed else False,
                "last_error": feed.last_error if feed else None,
            },
            "checkpoint": checkpoint,
            "backlog": backlog,
            "last_progress": cht_time(stats.last_progress) if stats and stats.last_progress else None,
            "in_flight": dispatcher.in_flight if dispatcher else 0,
            "changes": {
                "processed": stats.processed if stats else 0,
                "skipped": stats.skipped if stats else 0,
                "failures": stats.failures if stats else 0,
                "parked": stats.parked if stats else 0,
            },
            "parked_total": parked_total,
        }

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        changes = CounterMetricFamily(PREFIX + "changes", "Changes of the medic feed by result "
                                      "(failed counts attempts that failed).", labels=["result"])
        for key, label in CHANGE_RESULTS.items():
            changes.add_metric([label], float((part.get("changes") or {}).get(key, 0)))
        yield changes
        backlog = part.get("backlog")
        yield gauge("feed_backlog", "Changes after the checkpoint (-1: CouchDB did not say).",
                    -1 if backlog is None else backlog)
        yield gauge("feed_connected", "1 while the changes feed is connected.",
                    1 if (part.get("feed") or {}).get("connected") else 0)
        age = 0.0
        saved_at = self._checkpoints.saved_at
        if backlog and saved_at is not None:
            age = max(0.0, time.time() - saved_at)
        yield gauge("checkpoint_age_seconds", "Seconds since the checkpoint last moved while there "
                    "are changes after it (0 when there is nothing to process).", age)
        parked = part.get("parked_total")
        yield gauge("parked_changes", "Parked changes waiting for an operator (-1: unknown).",
                    -1 if parked is None else parked)

"""Status tracking's part of /healthz and its metrics (the freshness histogram is observed in
worker/http/metrics.py, through `StatusTracker.on_state_learned`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from worker.reporting import PREFIX, gauge, progress_families
from worker.status.tracker import StatusTracker


class StatusReport:
    def __init__(self, tracker: StatusTracker) -> None:
        self._tracker = tracker

    async def health(self) -> dict[str, Any]:
        return {"status_tracking": self._tracker.health()}

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        tracking = part.get("status_tracking") or {}
        yield gauge("status_tracked", "Sent messages followed until a final state.",
                    tracking.get("tracked", 0))
        yield gauge("status_due", "Tracked messages due to be asked about.", tracking.get("due", 0))
        # How tracking ended: a final state (delivered, read, failed), or not: a message still
        # `sent` at STATUS_TRACKING_HORIZON stays so, counted apart (docs/status-tracking.md).
        ended = CounterMetricFamily(PREFIX + "status_tracking_ended", "Messages no longer followed, by "
                                    "how tracking ended.", labels=["how"])
        for how, key in (("final", "final"), ("past_horizon", "expired"),
                         ("unknown_to_rapidpro", "missing_gave_up")):
            ended.add_metric([how], float(tracking.get(key) or 0))
        yield ended
        yield from progress_families({"status_tracking": tracking.get("progress") or {}})

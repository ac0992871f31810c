"""How a capability shows its state: its part of /healthz and its Prometheus metric families.

Each capability package has a `report.py` with one small object meeting `Reporter`; the HTTP
layer (worker/http/) composes them into the /healthz document and the /metrics page, and knows
nothing else of them. A part is a dict of top-level keys of the health document; `metrics` is
given back the part its own `health` returned (one snapshot per scrape, so /metrics and /healthz
say the same thing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

PREFIX = "cht_rapidpro_"


class Reporter(Protocol):
    async def health(self) -> dict[str, Any]: ...

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]: ...


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=float(value))


def progress_families(parts: Mapping[str, Mapping[str, Any]]) -> Iterable[Metric]:
    """`progress_age_seconds` and `stalled` for periodic jobs ({part label: Progress.health()});
    several reporters yield them for their own jobs and the HTTP layer merges them by name."""
    age = GaugeMetricFamily(PREFIX + "progress_age_seconds", "Seconds since the periodic job last "
                            "completed a run (status tracking: a round; in_doubt: a round that looked "
                            "up every due send). Absent while the job does not run (a standby).",
                            labels=["part"])
    stalled = GaugeMetricFamily(PREFIX + "stalled", "1 when the job has not completed a run for a few "
                                "of its intervals (see /healthz stall_after_s).", labels=["part"])
    for part, state in parts.items():
        if state.get("age_s") is not None:
            age.add_metric([part], float(state["age_s"]))
        stalled.add_metric([part], 1.0 if state.get("stalled") else 0.0)
    yield age
    yield stalled

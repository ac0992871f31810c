"""Sending's part of /healthz (in charge or why not, paused or not, counts, in-doubt resolution,
the sweep) and its metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from worker.outgoing.cht_sender import ChtSenderWatch
from worker.outgoing.in_doubt import InDoubtResolver
from worker.outgoing.sender import OutgoingSender
from worker.outgoing.sweep import PendingSweep
from worker.rapidpro.credentials import Credential
from worker.reporting import PREFIX, gauge, progress_families

MESSAGE_OUTCOMES = ("sent", "rejected", "denied", "in_doubt", "resent", "reprojected")
# Bounded label values for why the worker is not sending (the health document has free text).
PAUSE_REASONS = ("not_started", "settings_not_loaded", "cht_sender_on", "other_gateway", "no_rapidpro_url",
                 "no_token", "unauthorized", "workspace_blocked", "wrong_url", "rapidpro_server_error",
                 "rate_limited", "rapidpro_unreachable", "other")
_PAUSE_TYPES = {"RapidProUnauthorized": "unauthorized", "WorkspaceBlocked": "workspace_blocked",
                "WrongUrl": "wrong_url", "RapidProServerError": "rapidpro_server_error",
                "RateLimited": "rate_limited", "RapidProUnreachable": "rapidpro_unreachable"}


def pause_reason_label(outgoing: Mapping[str, Any]) -> str | None:
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
    if reason.startswith("CHT's own RapidPro sender is on"):
        return "cht_sender_on"
    if "outgoing_service" in reason:
        return "other_gateway"
    if "rapidpro.url" in reason:
        return "no_rapidpro_url"
    if "token" in reason:
        return "no_token"
    return "other"


class OutgoingReport:
    def __init__(self, sender: OutgoingSender, token: Credential, *,
                 cht_sender: ChtSenderWatch,
                 in_doubt: Callable[[], InDoubtResolver | None],
                 sweep: Callable[[], PendingSweep | None]) -> None:
        """`in_doubt`, `sweep`: the active session's (None on a standby, or before the start)."""
        self._sender = sender
        self._token = token
        self._cht_sender = cht_sender
        self._in_doubt = in_doubt
        self._sweep = sweep

    async def health(self) -> dict[str, Any]:
        gate = self._sender.gate
        stats = self._sender.stats
        in_doubt, sweep = self._in_doubt(), self._sweep()
        last_in_doubt = in_doubt.last if in_doubt else None
        paused = gate.remaining_pause() > 0
        return {"outgoing": {
            "sending": gate.not_in_charge is None and not paused,
            "not_sending_reason": gate.not_in_charge,
            "paused_reason": gate.pause_reason if paused else None,
            # CHT's own RapidPro sender runs: the worker stands down (worker/outgoing/cht_sender.py).
            "cht_sender_on": self._cht_sender.on,
            "cht_sender_unknown": self._cht_sender.vault_error,
            "token_source": self._token.source,
            "sent": stats.sent,
            "rejected": stats.rejected,
            "denied": stats.denied,
            "in_doubt": stats.in_doubt,
            "in_doubt_unresolved": last_in_doubt.unresolved if last_in_doubt else None,
            "in_doubt_waiting_operator": last_in_doubt.waiting_operator if last_in_doubt else None,
            "in_doubt_found": in_doubt.totals["found"] if in_doubt else 0,
            "in_doubt_resent": in_doubt.totals["resent"] if in_doubt else 0,
            "in_doubt_lookups": in_doubt.health() if in_doubt else None,
            # A failing round (e.g. the ledger's views refused): claims in doubt go unseen.
            "in_doubt_error": in_doubt.last_error if in_doubt else None,
            "reprojected": stats.reprojected,
            "send_errors": stats.send_errors,
            "last_sweep_docs": sweep.last_count if sweep else None,
        }}

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        outgoing = part.get("outgoing") or {}
        messages = CounterMetricFamily(PREFIX + "messages", "Outgoing messages by outcome.",
                                       labels=["outcome"])
        for outcome in MESSAGE_OUTCOMES:
            # `resent`: in-doubt claims the resolver proved never reached RapidPro and sent again.
            key = "in_doubt_resent" if outcome == "resent" else outcome
            messages.add_metric([outcome], float(outgoing.get(key) or 0))
        yield messages
        waiting = outgoing.get("in_doubt_waiting_operator")
        yield gauge("in_doubt_waiting_operator", "In-doubt sends RapidPro cannot settle: an operator "
                    "decides with `cht-rapidpro-worker in-doubt` (-1: not counted yet).",
                    -1 if waiting is None else waiting)
        paused = GaugeMetricFamily(PREFIX + "sending_paused", "1 for the reason the worker is not "
                                   "sending now; 0 for every other reason.", labels=["reason"])
        current = pause_reason_label(outgoing)
        for reason in PAUSE_REASONS:
            paused.add_metric([reason], 1.0 if reason == current else 0.0)
        yield paused
        yield gauge("cht_sender_on", "1 while CHT's own RapidPro sender runs: the worker stands down "
                    "from sending (README, 'Exactly one sender').", 1 if outgoing.get("cht_sender_on") else 0)
        yield from progress_families({"in_doubt": outgoing.get("in_doubt_lookups") or {}})

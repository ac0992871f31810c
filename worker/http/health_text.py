"""The /healthz document in words: one line for systemd's STATUS=, a summary for `status`.

Pure functions of the health document, so the daemon and the command line say the same thing.
"""

from __future__ import annotations

from typing import Any


def _feed(health: dict[str, Any]) -> str:
    feed = health.get("feed") or {}
    backlog = health.get("backlog")
    if not feed.get("connected"):
        error = feed.get("last_error")
        return "feed not connected" + (f" ({error})" if error else "")
    if feed.get("caught_up") and not backlog:
        return "feed caught up"
    return f"feed backlog {backlog}" if backlog is not None else "feed catching up"


def _sending(health: dict[str, Any]) -> str:
    outgoing = health.get("outgoing") or {}
    if outgoing.get("sending"):
        text = "sending"
    elif outgoing.get("paused_reason"):
        text = f"sending paused: {outgoing['paused_reason']}"
    else:
        text = f"not sending: {outgoing.get('not_sending_reason') or 'unknown'}"
    if outgoing.get("cht_sender_on"):
        text += " (CHT'S OWN SENDER IS ON: STANDING DOWN)"
    return text


STALL_TEXT = {
    "status_tracking": ("status tracking", "CHT shows stale message states"),
    "in_doubt": ("in-doubt lookups", "sends in doubt stay in doubt"),
}


def _progress_parts(health: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"status_tracking": (health.get("status_tracking") or {}).get("progress") or {},
            "in_doubt": (health.get("outgoing") or {}).get("in_doubt_lookups") or {}}


def stalls(health: dict[str, Any]) -> dict[str, str]:
    """{part: a sentence} for each periodic job that has not completed a run for too long."""
    found = {}
    for part, progress in _progress_parts(health).items():
        if progress.get("stalled"):
            name, effect = STALL_TEXT[part]
            found[part] = (f"{name}: no run completed for {progress.get('age_s')} s (more than "
                           f"{progress.get('stall_after_s')} s): {effect}")
    return found


def status_line(health: dict[str, Any]) -> str:
    """e.g. `feed caught up; sending; 3 parked` (systemd shows it in `systemctl status`)."""
    if health.get("role") == "standby":  # another worker is active (see the lease)
        return f"standby (active: {health.get('lease_holder') or 'nobody yet'})"[:200]
    parts = [_feed(health), _sending(health)]
    parked = health.get("parked_total")
    if parked:
        parts.append(f"{parked} parked")
    parts.extend(f"{STALL_TEXT[part][0]} stalled" for part in stalls(health))
    return "; ".join(parts)[:200]


def summary(health: dict[str, Any]) -> str:
    """Several lines for a person at a terminal."""
    outgoing = health.get("outgoing") or {}
    changes = health.get("changes") or {}
    tracking = health.get("status_tracking") or {}
    incoming = (health.get("incoming") or {}).get("requests") or {}
    settings = health.get("settings") or {}
    lines = [
        f"status:      {status_line(health)}",
        f"started:     {health.get('started_at')}",
        f"checkpoint:  {health.get('checkpoint')}  (backlog {health.get('backlog')}, "
        f"last progress {health.get('last_progress')}, in flight {health.get('in_flight')})",
        "changes:     " + ", ".join(f"{k} {v}" for k, v in changes.items()),
        f"parked:      {health.get('parked_total')}",
        f"settings:    {'loaded' if settings else 'NOT LOADED'}"
        + (f" (last error: {health['settings_error']})" if health.get("settings_error") else ""),
        "outgoing:    " + ", ".join(f"{k} {outgoing.get(k)}" for k in
                                    ("sent", "rejected", "denied", "in_doubt", "send_errors")
                                    if k in outgoing)
        + f"; token from {outgoing.get('token_source')}",
        f"tracking:    {tracking.get('tracked')} tracked, {tracking.get('final')} final, "
        f"last round {tracking.get('last_round_at')}"
        + (f", last error: {tracking['last_error']}" if tracking.get("last_error") else ""),
        "incoming:    " + (", ".join(f"{k} {v}" for k, v in incoming.items() if v) or "none yet"),
    ]
    lines.extend(f"STALLED:     {sentence}" for sentence in stalls(health).values())
    return "\n".join(lines)

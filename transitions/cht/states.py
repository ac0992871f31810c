"""CHT task states, CHT's rule for changing a task's state, and RapidPro status mapping.

Pure logic: no I/O. The rule in `set_task_state` mirrors CHT Core's shared `task-utils`
`setTaskState` (checked against its source), so docs written by the worker look exactly like
docs written by CHT's own gateways.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# --- CHT task states (CHT Core 4.x), in the order a message normally moves through them ---
SCHEDULED = "scheduled"
PENDING = "pending"
FORWARDED_TO_GATEWAY = "forwarded-to-gateway"
RECEIVED_BY_GATEWAY = "received-by-gateway"
FORWARDED_BY_GATEWAY = "forwarded-by-gateway"
SENT = "sent"
DELIVERED = "delivered"
FAILED = "failed"
DENIED = "denied"
CLEARED = "cleared"
MUTED = "muted"
DUPLICATE = "duplicate"

ALL_STATES: tuple[str, ...] = (
    SCHEDULED,
    PENDING,
    FORWARDED_TO_GATEWAY,
    RECEIVED_BY_GATEWAY,
    FORWARDED_BY_GATEWAY,
    SENT,
    DELIVERED,
    FAILED,
    DENIED,
    CLEARED,
    MUTED,
    DUPLICATE,
)

# States the worker never moves a message out of. `muted` and `duplicate` are included because
# they are never sent (a user may unmute, but that is CHT's move, not the gateway's).
FINAL_STATES: frozenset[str] = frozenset({DELIVERED, FAILED, DENIED, CLEARED, MUTED, DUPLICATE})

# States of messages that RapidPro holds and whose status is still worth polling. Same set as
# CHT's own RapidPro poller (the non-final states of its status map).
GATEWAY_TRACKED_STATES: frozenset[str] = frozenset({RECEIVED_BY_GATEWAY, FORWARDED_BY_GATEWAY, SENT})

# A message is sent when its task is in one of these (CHT's RapidPro/Africa's Talking senders
# treat `forwarded-to-gateway` as still unsent).
SENDABLE_STATES: frozenset[str] = frozenset({PENDING, FORWARDED_TO_GATEWAY})

# RapidPro message status -> (CHT state, state_details). `read` and `initializing` are not in
# CHT's table: CHT would poll `read` messages for ever and map unknown statuses to Queued.
_MESSAGE_STATUS_MAP: dict[str, tuple[str, str]] = {
    "initializing": (RECEIVED_BY_GATEWAY, "Initializing"),  # RapidPro before Nov 2022
    "queued": (RECEIVED_BY_GATEWAY, "Queued"),
    "errored": (RECEIVED_BY_GATEWAY, "Errored"),  # RapidPro retries it by itself
    "wired": (FORWARDED_BY_GATEWAY, "Wired"),
    "sent": (SENT, "Sent"),
    "resent": (SENT, "Resent"),  # RapidPro before Nov 2022
    "delivered": (DELIVERED, "Delivered"),
    "read": (DELIVERED, "Read"),  # RapidPro since Apr 2024; reading implies delivery
    "failed": (FAILED, "Failed"),
}

# Only these broadcast statuses say something definite about its messages: none will go out.
_BROADCAST_STATUS_MAP: dict[str, tuple[str, str]] = {
    "failed": (FAILED, "Broadcast failed"),
    "interrupted": (FAILED, "Broadcast interrupted"),
}


def format_timestamp(now: datetime) -> str:
    """`now` as JavaScript's `Date.toISOString()` writes it: UTC, milliseconds, `Z`."""
    if now.tzinfo is None or now.utcoffset() is None:
        # A naive datetime is ambiguous (local or UTC?); refuse rather than write a wrong time.
        raise ValueError("now must be timezone-aware")
    utc = now.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _last_history_state(task: dict[str, Any]) -> Any:
    history = task.get("state_history")
    if not isinstance(history, list) or not history:
        return None
    last = history[-1]
    return last.get("state") if isinstance(last, dict) else None


def set_task_state(
    task: dict[str, Any],
    state: str,
    details: str | None = None,
    gateway_ref: str | int | None = None,
    *,
    now: datetime,
) -> bool:
    """Change a task's state the way CHT does; return whether the task was changed.

    Nothing is touched (False) when the task is already in `state`, the last `state_history`
    entry has that state, and `details` / `gateway_ref` are empty or equal to the task's
    current `state_details` / `gateway_ref`. Like CHT, an empty `details` or `gateway_ref`
    never forces a change, and equality is strict (`"123"` is not `123`).

    Otherwise sets `state`, `state_details` and `gateway_ref` (a None value REMOVES the key,
    as CHT's `undefined` does once saved — pass the existing gateway_ref to keep it) and
    appends `{state, state_details, timestamp}` to `state_history` (no gateway_ref there).
    CHT stores RapidPro's integer broadcast `id` as gateway_ref, so pass it as an int.
    """
    if (
        task.get("state") == state
        and _last_history_state(task) == state
        and (not details or task.get("state_details") == details)
        and (not gateway_ref or task.get("gateway_ref") == gateway_ref)
    ):
        return False

    timestamp = format_timestamp(now)  # validate before mutating anything
    task["state"] = state
    if details is None:
        task.pop("state_details", None)
    else:
        task["state_details"] = details
    if gateway_ref is None:
        task.pop("gateway_ref", None)
    else:
        task["gateway_ref"] = gateway_ref

    entry: dict[str, Any] = {"state": state}
    if details is not None:
        entry["state_details"] = details
    entry["timestamp"] = timestamp
    history = task.get("state_history")
    if not isinstance(history, list):
        history = []  # malformed or missing history: start a fresh one
        task["state_history"] = history
    history.append(entry)
    return True


def map_rapidpro_status(status: str | None) -> tuple[str, str] | None:
    """RapidPro message status -> (CHT state, state_details); None for unknown/missing/incoming."""
    if not isinstance(status, str):
        return None
    return _MESSAGE_STATUS_MAP.get(status.strip().lower())


def map_broadcast_status(status: str | None) -> tuple[str, str] | None:
    """("failed", reason) for a `failed`/`interrupted` broadcast; None for any other status."""
    if not isinstance(status, str):
        return None
    return _BROADCAST_STATUS_MAP.get(status.strip().lower())

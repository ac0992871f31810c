"""The outgoing-dispatch transition's decisions (pure): when the worker sends, what a message's
ledger entry means, and what a recorded outcome looks like on the CHT task.

Exactly-once rests on the dispatch ledger (one doc per message uuid in the worker's own db):
a message is sent only by whoever created its claim; a claim with no outcome is *in doubt* and
never re-sent blindly (transitions/outgoing/in_doubt.py asks RapidPro first); a recorded outcome is
re-projected onto the task whenever the task shows the message as sendable again (an old
revision from a phone, a re-pended schedule).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from transitions.cht.states import (
    DENIED,
    FAILED,
    FORWARDED_TO_GATEWAY,
    RECEIVED_BY_GATEWAY,
    map_broadcast_status,
)
from transitions.outgoing.broadcasts import ledger_ref

# Ledger states
CLAIMED = "claimed"  # someone is sending (or crashed while sending)
SENT = "sent"  # RapidPro answered 201: the broadcast exists
REJECTED = "rejected"  # RapidPro refused this message (400 about it): final, never retried
IN_DOUBT = "in-doubt"  # the request may have reached RapidPro; looked up there before anything else
RELEASED = "released"  # nothing was created (an error answer, or RapidPro's listing): may be claimed again

IN_DOUBT_DETAILS = ("In doubt: the request to RapidPro may have been sent but no answer came; "
                    "checking with RapidPro before sending again")
OPERATOR_HINT = "waiting for an operator (cht-rapidpro-worker in-doubt)"


def in_doubt_details(entry: Mapping[str, Any]) -> str:
    waiting = entry.get("needs_operator")
    if isinstance(waiting, Mapping) and waiting.get("reason"):
        return f"In doubt: {waiting['reason']}; {OPERATOR_HINT}"
    return IN_DOUBT_DETAILS


class Action(enum.Enum):
    SEND = "send"  # claim (create or take over a released claim), then send
    REPROJECT = "reproject"  # an outcome is recorded: write it onto the task
    MARK_IN_DOUBT = "mark_in_doubt"  # a stale claim without outcome
    WAIT = "wait"  # a fresh claim: its owner is sending right now


@dataclass(frozen=True)
class TaskUpdate:
    uuid: str
    state: str
    details: str | None
    gateway_ref: int | str | None = None


CHT_SENDER_ON = ("CHT's own RapidPro sender is on (sms.outgoing_service is 'rapidpro' and "
                 "rapidpro:outgoing is in CHT's vault): the worker stands down so no message goes out "
                 "twice, and takes over once CHT's sender is off (README, 'Exactly one sender')")
CHT_SENDER_UNKNOWN = ("sms.outgoing_service is 'rapidpro' and the worker's CouchDB user may not read CHT's "
                      "vault, so CHT's own RapidPro sender cannot be ruled out: the worker stands down. Use "
                      "the service name rapidpro-worker (README, 'Exactly one sender')")


def not_sending_reason(settings: Settings | None, service_name: str, token_available: bool,
                       cht_sender: str | None = None) -> str | None:
    """Why the worker must not send now, or None when it is in charge (one sender only: see the README).
    `cht_sender`: why CHT's own sender may be sending (CHT_SENDER_ON or _UNKNOWN), else None."""
    if settings is None:
        return "the app settings are not loaded"
    if cht_sender:
        return cht_sender
    if settings.outgoing_service != service_name:
        return (f"sms.outgoing_service is {settings.outgoing_service!r}, not {service_name!r}: "
                "another gateway owns sending")
    if not settings.rapidpro_url:
        return "sms.rapidpro.url is not set"
    if not token_available:
        return ("no RapidPro API token: set RAPIDPRO_API_TOKEN(_FILE) or store rapidpro:outgoing "
                "in CHT's vault")
    return None


def cht_sender_runs(settings: Settings | None, vault_has_outgoing_token: bool) -> bool:
    """Whether CHT's own RapidPro sender sends: api's minute tick picks the service named by
    `sms.outgoing_service` ('rapidpro'), which sends when `sms.rapidpro.url` is set and the vault
    holds `rapidpro:outgoing` (cht-core 4.22 api/src/services/messaging.js, rapidpro.js)."""
    return bool(settings and settings.outgoing_service == "rapidpro" and settings.rapidpro_url
                and vault_has_outgoing_token)


def ledger_action(entry: Mapping[str, Any] | None, now: float, claim_timeout: float,
                  owner_dead: bool = False, ours_unsent: bool = False) -> Action:
    """What to do with a sendable message, given its ledger entry.

    A claim without outcome is someone sending right now, unless it is older than any send can
    take (`claim_timeout`) or its owner is known to be dead: then it is in doubt. A claim this
    process wrote but was never told it won (`ours_unsent`: stored on too few copies of a
    clustered CouchDB) sent nothing: it is taken over like a released one.
    """
    if entry is None:
        return Action.SEND
    state = entry.get("state")
    if state == RELEASED or (ours_unsent and state in (CLAIMED, IN_DOUBT)):
        return Action.SEND
    if state == CLAIMED:
        claimed_at = entry.get("claimed_at_epoch")
        if not owner_dead and isinstance(claimed_at, int | float) and now - claimed_at < claim_timeout:
            return Action.WAIT
        return Action.MARK_IN_DOUBT
    # sent, rejected, in-doubt, or anything unknown: never send; show what is known
    return Action.REPROJECT


def projection(entry: Mapping[str, Any]) -> TaskUpdate | None:
    """The task state a ledger entry stands for (None when it stands for nothing yet)."""
    uuid = str(entry.get("uuid"))
    state = entry.get("state")
    if state == SENT:
        tracked = entry.get("task_state")
        ref = ledger_ref(entry)  # the id, as CHT stores it; the uuid from a server without ids
        if isinstance(tracked, str):  # status tracking recorded a later state
            return TaskUpdate(uuid, tracked, entry.get("task_state_details"), ref)
        failed = map_broadcast_status(entry.get("broadcast_status"))
        if failed is not None:
            return TaskUpdate(uuid, failed[0], failed[1], ref)
        return TaskUpdate(uuid, RECEIVED_BY_GATEWAY, "Queued", ref)
    if state == REJECTED:
        return TaskUpdate(uuid, FAILED, str(entry.get("error") or "Rejected by RapidPro"))
    if state == IN_DOUBT:
        return TaskUpdate(uuid, FORWARDED_TO_GATEWAY, in_doubt_details(entry))
    return None


def denied_update(uuid: str) -> TaskUpdate:
    return TaskUpdate(uuid, DENIED, "Recipient denied by the outgoing deny settings")

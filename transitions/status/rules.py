"""Status tracking's decisions (pure): which messages to follow, when to ask about each, how to ask
(one query per broadcast or a bulk folder sync) and what an answer changes on the CHT task.

No I/O and no clock of its own: every time is an argument (epoch seconds), so the schedule can be
tested hour by hour without waiting.

Freshness is the promise, cost the constraint (RapidPro's API docs: one workspace budget of 3,600 calls an
hour for everything). A message's *tier* is its age since the worker first saw it with a
gateway_ref (its own sends, another sender's), or since it was sent when found at start or on a
rescan (asked at once, then by its age):

- **fresh** (first 15 minutes): asked every `interval` (STATUS_POLL_INTERVAL), the first time one
  interval after sending;
- **warm** (up to an hour): every 5 intervals, on a grid shared by all warm messages;
- **old**: hourly, on a shared grid, until `horizon` (RapidPro archives messages; many channels
  never report delivery, so `sent` can be for ever).

Grids make the messages of a tier due in the same rounds, so one bulk sync
(`messages.json?folder=…&after=…&before=…`, 250 a page, newest first) answers for all of them. A
round splits the due messages into windows of `created_on` wherever the gap between them would
cost a page of its own, and answers each window the cheaper way: its expected pages, or one call
per broadcast (transitions/status/plan.py).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from transitions.cht.states import (
    DELIVERED,
    FAILED,
    FORWARDED_BY_GATEWAY,
    GATEWAY_TRACKED_STATES,
    RECEIVED_BY_GATEWAY,
    SENT,
    map_broadcast_status,
    map_rapidpro_status,
    set_task_state,
)
from transitions.cht.timestamps import parse_time
from transitions.outgoing.broadcasts import BroadcastKey, as_uuid, broadcast_key
from transitions.outgoing.dispatch import TaskUpdate
from transitions.outgoing.sendable import TASK_KINDS, find_task_message

PAGE_SIZE = 250  # RapidPro's messages.json page
OUTBOX, SENT_FOLDER, FAILED_FOLDER = "outbox", "sent", "failed"
FOLDERS: tuple[str, ...] = (OUTBOX, SENT_FOLDER, FAILED_FOLDER)

ERRORED_DETAILS = "Errored"
INITIALIZING_DETAILS = "Initializing"


@dataclass(frozen=True)
class Policy:
    interval: float = 60.0  # STATUS_POLL_INTERVAL: a fresh message is asked about this often
    fresh_age: float = 15 * 60.0  # fresh for this long after sending / first seen
    warm_age: float = 3600.0  # then warm up to this age
    warm_every: int = 5  # a warm message is asked about every this many intervals
    old_every: float = 3600.0  # an older one at least this often
    horizon: float = 7 * 86400.0  # stop tracking this long after sending; the state stays as it is
    max_missing: int = 3  # "no such message" answers (e.g. after a host change) before giving up
    visibility_grace: float = 120.0  # messages appear a few seconds after the broadcast POST
    created_margin: float = 120.0  # clock skew allowance for `after=` when created_on is unknown
    page_size: int = PAGE_SIZE

    @property
    def due_tolerance(self) -> float:
        """Rounds start on the interval grid, a little late: a check due this much later is due."""
        return min(0.25 * self.interval, 10.0)


class Tier(Enum):
    FRESH = "fresh"
    WARM = "warm"
    OLD = "old"


def tier_of(age: float, policy: Policy) -> Tier:
    if age < policy.fresh_age:
        return Tier.FRESH
    if age < policy.warm_age:
        return Tier.WARM
    return Tier.OLD


def period(tier: Tier, policy: Policy) -> float:
    """Longest time between two checks of a message in this tier. The old tier's grid is one
    interval shorter than `old_every`, so with the round's lag a change shows within it."""
    if tier is Tier.FRESH:
        return policy.interval
    old = max(policy.interval, policy.old_every - policy.interval)
    if tier is Tier.WARM:
        return min(policy.warm_every * policy.interval, old)
    return old


# ---------------------------------------------------------------------------- small helpers


def _rank(state: Any, details: Any) -> int:
    """Progress order of a tracked or final state. `Initializing` (old RapidPro) precedes Queued."""
    if state == RECEIVED_BY_GATEWAY:
        return 0 if details == INITIALIZING_DETAILS else 1
    if state == FORWARDED_BY_GATEWAY:
        return 2
    if state == SENT:
        return 3
    if state in (DELIVERED, FAILED):
        return 4
    return -1


def is_forward(current_state: Any, current_details: Any, new_state: str, new_details: str | None) -> bool:
    """Whether a RapidPro answer may move a task from (current_state, current_details).

    Only tasks in a tracked non-final state move; never out of a final state, never to a state
    that is not RapidPro's to give. A later step moves it; the same step does nothing. One step
    back is real and is recorded: `errored` (RapidPro failed an attempt and will retry), and from
    there any step again (queued, wired, sent, …). Staleness of an answer is the caller's
    concern (compare `modified_on`).
    """
    if current_state not in GATEWAY_TRACKED_STATES:
        return False
    new_rank = _rank(new_state, new_details)
    if new_rank < 0:
        return False
    if current_state == new_state and (not new_details or current_details == new_details):
        return False
    if new_details == ERRORED_DETAILS:
        return True
    current_rank = _rank(current_state, current_details)
    if new_rank > current_rank:
        return True
    # Same rank, other details: Errored → Queued (re-queued for a retry), Sent → Resent.
    return new_rank == current_rank and new_details != INITIALIZING_DETAILS


def folder_of(state: str, details: str | None) -> str:
    """The messages.json folder a message in this CHT state sits in (RapidPro's messages.json docs)."""
    if state == RECEIVED_BY_GATEWAY:
        return OUTBOX
    if state == FAILED:
        return FAILED_FOLDER
    return SENT_FOLDER


# ---------------------------------------------------------------------------- which tasks


@dataclass(frozen=True)
class Candidate:
    """A message whose task RapidPro can tell us more about."""

    uuid: str
    doc_id: str
    broadcast: BroadcastKey  # the gateway_ref: a broadcast id, or uuid (transitions/outgoing/broadcasts.py)
    state: str
    details: str | None
    sent_at: float | None  # when the task first reached RapidPro (history), epoch s
    state_since: float | None  # when the task entered its current state (history)
    to: str | None = None  # the recipient and the text, to recognise the message on a server whose
    text: str | None = None  # messages do not name their broadcast


def _history_times(task: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(first reached RapidPro, entered the current state) from `state_history`."""
    history = [entry for entry in task.get("state_history") or [] if isinstance(entry, dict)] \
        if isinstance(task.get("state_history"), list) else []
    sent_at = next((when for entry in history
                    if entry.get("state") in GATEWAY_TRACKED_STATES | {DELIVERED, FAILED}
                    and (when := parse_time(entry.get("timestamp"))) is not None), None)
    since: float | None = None
    for entry in reversed(history):  # the last run of entries in the current state
        if entry.get("state") != task.get("state"):
            break
        since = parse_time(entry.get("timestamp")) or since
    if since is None and history:
        since = parse_time(history[-1].get("timestamp"))
    return sent_at, since


def trackable_messages(doc: Mapping[str, Any]) -> list[Candidate]:
    """The doc's messages worth asking RapidPro about: task in received-by-gateway,
    forwarded-by-gateway or sent, with a RapidPro gateway_ref (a broadcast id, or a broadcast uuid
    from a server without ids), message with a uuid. Never pending,
    scheduled, muted, duplicate, cleared, final states, or a task without gateway_ref."""
    found: list[Candidate] = []
    doc_id = doc.get("_id")
    if not isinstance(doc_id, str):
        return found
    seen: set[str] = set()
    for kind in TASK_KINDS:
        tasks = doc.get(kind)
        if not isinstance(tasks, list):
            continue
        for task in tasks:
            if not isinstance(task, dict) or task.get("state") not in GATEWAY_TRACKED_STATES:
                continue
            broadcast = broadcast_key(task.get("gateway_ref"))
            if broadcast is None:
                continue
            sent_at, since = _history_times(task)
            details = task.get("state_details")
            for message in task.get("messages") or []:
                uuid = message.get("uuid") if isinstance(message, dict) else None
                if not isinstance(uuid, str) or not uuid or uuid in seen:
                    continue
                seen.add(uuid)
                to, text = message.get("to"), message.get("message")
                found.append(Candidate(uuid, doc_id, broadcast, task["state"],
                                       details if isinstance(details, str) else None, sent_at, since,
                                       to if isinstance(to, str) else None,
                                       text if isinstance(text, str) else None))
    return found


# ---------------------------------------------------------------------------- the schedule


@dataclass(slots=True)
class Tracked:
    """One followed message. Slots and interned state strings: a national deployment follows
    10⁵–10⁶ of these at once (worker/status/book.py states the footprint)."""

    uuid: str
    doc_id: str
    broadcast: BroadcastKey
    state: str
    details: str | None
    sent_at: float
    state_since: float
    next_check: float
    fresh_since: float  # tiers count from here: when the worker first saw it (≈ sent, for its own)
    created_on: float | None = None  # RapidPro's created_on, once seen
    modified_on: float | None = None  # RapidPro's modified_on of the last answer applied
    missing: int = 0  # consecutive "no such message" answers
    checks: int = 0
    own: bool = False  # the worker sent it (the ledger knows when): else another sender's
    broadcast_uuid: str | None = None  # known from the ledger, or the gateway_ref itself
    message_uuid: str | None = None  # RapidPro's message uuid, once seen (servers since v10.3.79)
    urn: str | None = None  # the recipient's URN and the text: what recognises the message on a
    text: str | None = None  # server whose messages do not name their broadcast
    channel: str | None = None  # RapidPro's channel uuid, once seen
    parked: bool = False  # `sent` on a channel that never reports delivery: only failures are looked for

    def created_estimate(self, policy: Policy) -> float:
        """Lower bound for `after=`: the known created_on, else the send time minus skew."""
        if self.created_on is not None:
            return self.created_on
        return self.sent_at - policy.created_margin

    def created_upper(self, policy: Policy) -> float:
        """Upper bound for `before=`: the known created_on, else the send time plus skew."""
        if self.created_on is not None:
            return self.created_on
        return self.sent_at + policy.created_margin

    def tier(self, now: float, policy: Policy) -> Tier:
        return tier_of(now - self.fresh_since, policy)


class Ending(Enum):
    FINAL = "final"
    EXPIRED = "expired"  # past the tracking horizon: the state stays as it is
    MISSING = "missing"  # RapidPro kept answering "no such message"


@dataclass(frozen=True)
class Observation:
    update: TaskUpdate | None = None
    unknown_status: bool = False
    ended: Ending | None = None


def schedule(item: Tracked, now: float, policy: Policy) -> None:
    """The next check after one at `now`: one interval on for a fresh message; the next point of
    the tier's shared grid for the others (so they are due together and share a sync)."""
    every = period(item.tier(now, policy), policy)
    if every <= policy.interval:
        item.next_check = now + policy.interval
    else:
        # The first grid point after this round (a round starts a little after its grid point).
        item.next_check = (math.floor((now + policy.due_tolerance) / every) + 1) * every


def is_due(item: Tracked, now: float, policy: Policy) -> bool:
    return item.next_check <= now + policy.due_tolerance


def start_tracking(candidate: Candidate, now: float, policy: Policy, *, at_start: bool = False,
                   own: bool = False) -> Tracked:
    """A message seen for the first time: asked at once — but the worker's own send never before
    one interval after sending (an empty answer is normal then, and costs a call). Another
    sender's message is asked about at once: when it was sent is not the worker's to know.

    Its tiers count from now (new in the view while running: another sender's, or our own just
    sent), or — found at start or on a rescan — from when it was sent, when its history says so:
    asked at once like a fresh one, it then goes on by its age, so a restart costs one round, not
    15 minutes of fresh checks for a week of messages that never report delivery."""
    sent_at = candidate.sent_at if candidate.sent_at is not None else now
    since = candidate.state_since if candidate.state_since is not None else sent_at
    sent_at = min(sent_at, now)
    first = max(now, sent_at + policy.interval) if own and candidate.sent_at is not None else now
    fresh_since = sent_at if at_start else now
    details = sys.intern(candidate.details) if candidate.details is not None else None
    return Tracked(candidate.uuid, candidate.doc_id, candidate.broadcast, sys.intern(candidate.state),
                   details, sent_at, min(max(since, sent_at), now), first, fresh_since,
                   own=own, broadcast_uuid=as_uuid(candidate.broadcast), text=candidate.text)


def expired(item: Tracked, now: float, policy: Policy) -> bool:
    return now - item.sent_at > policy.horizon


def observe(item: Tracked, result: Mapping[str, Any], now: float, policy: Policy) -> Observation:
    """A messages.json result for this message's broadcast: the task update it brings (if any),
    and the message's next check. `item` is updated as if the update were recorded."""
    item.checks += 1
    item.missing = 0
    created = parse_time(result.get("created_on"))
    if created is not None:
        item.created_on = created
    message_uuid = as_uuid(result.get("uuid"))
    if message_uuid is not None:
        item.message_uuid = message_uuid
    channel = result.get("channel")
    if isinstance(channel, Mapping) and isinstance(channel.get("uuid"), str):
        item.channel = sys.intern(channel["uuid"])
    modified = parse_time(result.get("modified_on"))
    if modified is not None and item.modified_on is not None and modified < item.modified_on:
        schedule(item, now, policy)  # an older answer than one already applied
        return Observation()
    mapped = map_rapidpro_status(result.get("status"))
    if mapped is None:
        schedule(item, now, policy)
        return Observation(unknown_status=True)
    state, details = mapped
    if not is_forward(item.state, item.details, state, details):
        schedule(item, now, policy)
        return Observation()
    item.state, item.details = sys.intern(state), sys.intern(details)
    # When it changed: RapidPro's modified_on, kept within what we know (its clock may differ).
    item.state_since = min(now, max(modified if modified is not None else now, item.state_since))
    if modified is not None:
        item.modified_on = modified
    update = TaskUpdate(item.uuid, state, details, item.broadcast)
    if state not in GATEWAY_TRACKED_STATES:
        return Observation(update, ended=Ending.FINAL)
    schedule(item, now, policy)
    return Observation(update)


def observe_unchanged(item: Tracked, now: float, policy: Policy) -> None:
    """Asked, and nothing new (e.g. the broadcast is still being sent)."""
    item.checks += 1
    schedule(item, now, policy)


def observe_broadcast(item: Tracked, broadcast: Mapping[str, Any] | None, now: float,
                      policy: Policy) -> Observation:
    """`broadcasts.json?id=` for a broadcast that listed no message.

    None (no such broadcast — typically the host changed) counts towards giving up; a `failed` or
    `interrupted` broadcast never produced a message: the task fails; anything else is still
    being sent: ask again later."""
    item.checks += 1
    if broadcast is None:
        item.missing += 1
        if item.missing >= policy.max_missing:
            return Observation(ended=Ending.MISSING)
        schedule(item, now, policy)
        return Observation()
    item.missing = 0
    failed = map_broadcast_status(broadcast.get("status"))
    if failed is None or not is_forward(item.state, item.details, failed[0], failed[1]):
        schedule(item, now, policy)
        return Observation()
    item.state, item.details = failed
    return Observation(TaskUpdate(item.uuid, failed[0], failed[1], item.broadcast), ended=Ending.FINAL)


def visible_yet(item: Tracked, now: float, policy: Policy) -> bool:
    """An empty answer right after the worker's own send is normal: messages appear a few seconds
    after the broadcast POST. Another sender's message (CHT's own sender before a switch, another
    tool, a restored doc) was sent at a time the worker does not know: RapidPro is asked about it
    at once the first time, so its created_on is learnt in its first round."""
    if not item.own and item.created_on is None and item.checks == 0:
        return True
    return now - item.sent_at >= policy.visibility_grace


# ---------------------------------------------------------------------------- the task applier


class Applied(Enum):
    APPLIED = "applied"  # the task changed
    UNCHANGED = "unchanged"  # already in that state
    NOT_TRACKED = "not-tracked"  # final, not sent (pending…), another broadcast, or gone
    STALE = "stale"  # the task is already further on


def apply_status_updates(doc: dict[str, Any], updates: Sequence[TaskUpdate],
                         now: datetime) -> dict[str, Applied]:
    """Pure: apply status tracking's updates to `doc` (in place), CHT's way.

    An update applies only to a task that is still in a tracked non-final state under the same
    broadcast, and only when it moves the task on (`is_forward`): never backwards, never out of
    a final state, never a task another writer moved elsewhere (pending again, cleared, …)."""
    outcomes: dict[str, Applied] = {}
    for update in updates:
        found = find_task_message(doc, update.uuid)
        if found is None:
            outcomes[update.uuid] = Applied.NOT_TRACKED
            continue
        task = found[2]
        state = task.get("state")
        if (state not in GATEWAY_TRACKED_STATES
                or broadcast_key(task.get("gateway_ref")) != broadcast_key(update.gateway_ref)):
            outcomes[update.uuid] = Applied.NOT_TRACKED
            continue
        if not is_forward(state, task.get("state_details"), update.state, update.details):
            same = state == update.state and task.get("state_details") == update.details
            outcomes[update.uuid] = Applied.UNCHANGED if same else Applied.STALE
            continue
        # Keep gateway_ref exactly as stored (CHT compares strictly: "123" is not 123).
        changed = set_task_state(task, update.state, update.details, task.get("gateway_ref"), now=now)
        outcomes[update.uuid] = Applied.APPLIED if changed else Applied.UNCHANGED
    return outcomes

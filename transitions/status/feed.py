"""Which messages status tracking follows, read incrementally (pure).

At start and on a rescan the whole of CHT's view `medic-sms/gateway_messages_by_state` is read,
paged by key (`startkey`/`startkey_docid`, never `skip`, whose cost grows with the offset); after
that, the `medic` `_changes` feed tells every doc that changed, and each changed doc says which of
its messages became tracked, changed state or left (`doc_messages`). No round reads the view.

Most tracked messages are the worker's own sends: its ledger already knows when each went out,
its recipient and the task state it last wrote, so a row of the view plus the ledger's compact
view of the entry (`ledger_candidate`) make a message trackable without reading CHT's doc. A
message the ledger cannot vouch for (another sender's, a state someone else wrote, a broadcast
known only by uuid, whose rows name no broadcast and are recognised by text) is read from its doc.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transitions.cht.states import FORWARDED_BY_GATEWAY, RECEIVED_BY_GATEWAY, SENT
from transitions.cht.timestamps import parse_time
from transitions.outgoing.broadcasts import BroadcastKey, broadcast_key, ledger_ref
from transitions.outgoing.dispatch import SENT as LEDGER_SENT
from transitions.outgoing.dispatch import projection
from transitions.outgoing.sendable import TASK_KINDS
from transitions.status.rules import Candidate, trackable_messages

# The view's keys, fresher states first: they change soonest, so they are asked about first.
LOAD_ORDER: tuple[str, ...] = (RECEIVED_BY_GATEWAY, FORWARDED_BY_GATEWAY, SENT)

# The fields of a sent ledger entry status tracking needs: the ledger's `tracking` view emits
# them as an array in this order (`outcome_at` falling back to `claimed_at`); `ledger_facts` reads it.
LEDGER_FIELDS: tuple[str, ...] = ("outcome_at", "broadcast_id", "broadcast_uuid", "broadcast_status",
                                  "task_state", "task_state_details", "task_state_at")


def ledger_facts(value: Any) -> dict[str, Any] | None:
    """A row value of the ledger's `tracking` view → the entry's fields (state `sent`)."""
    if not isinstance(value, list) or len(value) != len(LEDGER_FIELDS):
        return None
    return {"state": LEDGER_SENT, **dict(zip(LEDGER_FIELDS, value, strict=True))}


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the view: a message CHT shows with a gateway_ref in a tracked state."""

    uuid: str
    doc_id: str
    state: str
    gateway_ref: Any

    @property
    def broadcast(self) -> BroadcastKey | None:
        return broadcast_key(self.gateway_ref)


def view_rows(rows: Iterable[Any]) -> list[Row]:
    """A page of the view → its well-formed rows (malformed ones are skipped)."""
    found: list[Row] = []
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        value, key, doc_id = row.get("value"), row.get("key"), row.get("id")
        uuid = value.get("id") if isinstance(value, Mapping) else None
        if isinstance(uuid, str) and uuid and isinstance(key, str) and isinstance(doc_id, str):
            found.append(Row(uuid, doc_id, key, value.get("gateway_ref")))
    return found


@dataclass(frozen=True, slots=True)
class PageStart:
    """Where the next page of one key starts: after `doc_id`, whose first `seen` rows were read
    (a doc can hold several messages; CouchDB orders a key's rows by doc id)."""

    doc_id: str | None = None
    seen: int = 0


def next_start(start: PageStart, rows: Sequence[Row]) -> PageStart:
    """The start of the page after `rows` (read from `start`). The next page asks from the last
    row's doc again (its other rows may follow); `seen` counts that doc's rows already read, and
    is what the next page passes over — only ever within one doc, never an offset into the key."""
    if not rows:
        return start
    last = rows[-1].doc_id
    same = 0
    for row in reversed(rows):
        if row.doc_id != last:
            break
        same += 1
    if last == start.doc_id:
        same += start.seen  # the whole page was that doc's
    return PageStart(last, same)


def ledger_candidate(row: Row, facts: Mapping[str, Any] | None) -> Candidate | None:
    """The message as the worker's own ledger knows it, when that is enough to follow it: the
    worker sent it, to the broadcast the task names, and the task shows the state the ledger last
    projected onto it (so its details are the ledger's). None: read the doc."""
    broadcast = row.broadcast
    if facts is None or facts.get("state") != LEDGER_SENT or broadcast is None:
        return None
    if not isinstance(broadcast, int):
        return None  # a server without ids: its rows are recognised by text, which is in the doc
    if ledger_ref(facts) != broadcast:
        return None
    projected = projection({**facts, "uuid": row.uuid})
    if projected is None or projected.state != row.state:
        return None
    sent_at = parse_time(facts.get("outcome_at")) or parse_time(facts.get("claimed_at"))
    since = parse_time(facts.get("task_state_at")) if facts.get("task_state") == row.state else None
    return Candidate(row.uuid, row.doc_id, broadcast, row.state, projected.details, sent_at,
                     since if since is not None else sent_at)


def doc_messages(doc: Mapping[str, Any]) -> tuple[list[str], list[Candidate]]:
    """A changed doc: (every message uuid it holds, its messages worth tracking now)."""
    uuids: list[str] = []
    for kind in TASK_KINDS:
        tasks = doc.get(kind)
        if not isinstance(tasks, list):
            continue
        for task in tasks:
            messages = task.get("messages") if isinstance(task, dict) else None
            for message in messages if isinstance(messages, list) else ():
                uuid = message.get("uuid") if isinstance(message, dict) else None
                if isinstance(uuid, str) and uuid:
                    uuids.append(uuid)
    return uuids, (trackable_messages(doc) if uuids else [])

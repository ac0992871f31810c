"""How status tracking asks RapidPro about one message, what the server it talks to offers, and
which tracked message a `messages.json` row is about (pure).

RapidPro's API changed under the worker: messages and broadcasts carry a `uuid` since v10.3.79
(Oct 2025), `messages.json?uuid=` came with it and `broadcasts.json?uuid=` with v10.3.81; the
integer ids, `messages.json?broadcast=` and `broadcasts.json?id=` are deprecated since then and a
later server may drop them (RapidPro main: `temba/api/v2/views.py`, `serializers.py`). Nothing
needs configuring: the worker uses the uuid-based lookups where it has a uuid to ask for, the ids
where it does not, and learns from the answers what the server does not read. RapidPro reads only
the query parameters it knows and ignores the others without an error — the unfiltered list comes
back with 200 — so an answer proves a filter missing when an item in it is not what was asked
for; that lookup is not used on that server again (until a rescan or another host).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transitions.cht.timestamps import parse_time
from transitions.outgoing.broadcasts import as_id, as_uuid
from transitions.outgoing.in_doubt import normalise_urn
from transitions.outgoing.rapidpro_forms import rapidpro_text
from transitions.status.rules import Policy, Tracked

# The lookups whose support is learnt (name: the endpoint and its query parameter).
MESSAGES_BY_UUID = "messages.json?uuid"  # v10.3.79+
MESSAGES_BY_BROADCAST = "messages.json?broadcast"  # every version so far; deprecated since v10.3.79
BROADCASTS_BY_UUID = "broadcasts.json?uuid"  # v10.3.81+
BROADCASTS_BY_ID = "broadcasts.json?id"  # deprecated since v10.3.79
LOOKUPS = (MESSAGES_BY_UUID, MESSAGES_BY_BROADCAST, BROADCASTS_BY_UUID, BROADCASTS_BY_ID)

# How long after its send a message without a broadcast in its rows may still be created
# (mailroom queues a broadcast's messages; under load that takes a while).
RECIPIENT_MATCH_SLACK = 3600.0


@dataclass
class ServerApi:
    """What one RapidPro server has shown it reads, learnt from its answers: True (an answer
    matched what was asked), False (it ignored the filter). Unknown lookups are tried."""

    learnt: dict[str, bool] = field(default_factory=dict)
    message_uuids: bool | None = None  # its messages carry a uuid

    def usable(self, lookup: str) -> bool:
        return self.learnt.get(lookup, True)

    def learn(self, lookup: str, honoured: bool | None) -> bool:
        """Record a verdict; True when it changed what is known (worth a log line)."""
        if honoured is None or self.learnt.get(lookup) is honoured:
            return False
        self.learnt[lookup] = honoured
        return True

    def saw_messages(self, results: Iterable[Mapping[str, Any]]) -> None:
        for result in results:
            if "uuid" in result or "id" in result:
                self.message_uuids = as_uuid(result.get("uuid")) is not None
                return

    def forget(self) -> None:
        self.learnt.clear()
        self.message_uuids = None

    def health(self) -> dict[str, Any]:
        return {"lookups": {name: self.learnt.get(name) for name in LOOKUPS},
                "message_uuids": self.message_uuids}


def filter_honoured(field_name: str, asked: Any, results: Sequence[Mapping[str, Any]]) -> bool | None:
    """Did the server read the filter `field_name=asked`? True when every item matches it, False
    when one does not (or lacks the field: a server without it), None when there is nothing to
    judge by (an empty answer, which a server reading the filter gives too)."""
    if not results:
        return None
    wanted = _normal(field_name, asked)
    return all(_normal(field_name, result.get(field_name)) == wanted and wanted is not None
               for result in results)


def _normal(field_name: str, value: Any) -> Any:
    if field_name == "uuid":
        return as_uuid(value)
    if field_name == "broadcast" and isinstance(value, Mapping):
        return as_id(value.get("id"))
    return as_id(value)


@dataclass(frozen=True)
class Ask:
    """One call about one message: `messages.json?{param}={value}` (param `uuid` or
    `broadcast`), or `broadcasts.json?{param}={value}` (`uuid` or `id`) for a broadcast lookup."""

    param: str
    value: int | str

    @property
    def lookup(self) -> str:
        return {"uuid": MESSAGES_BY_UUID, "broadcast": MESSAGES_BY_BROADCAST}[self.param]

    @property
    def broadcast_lookup(self) -> str:
        return {"uuid": BROADCASTS_BY_UUID, "id": BROADCASTS_BY_ID}[self.param]


def message_ask(item: Tracked, api: ServerApi) -> Ask | None:
    """The one call that answers for `item` alone: by its message uuid once known (uuid-based,
    where the server offers it), else by its broadcast id; None when the server offers neither
    (a server without ids, before the message was first seen): only a sync finds it then."""
    if item.message_uuid is not None and api.usable(MESSAGES_BY_UUID):
        return Ask("uuid", item.message_uuid)
    if isinstance(item.broadcast, int) and api.usable(MESSAGES_BY_BROADCAST):
        return Ask("broadcast", item.broadcast)
    return None


def broadcast_ask(item: Tracked, api: ServerApi) -> Ask | None:
    """`broadcasts.json` by the broadcast's uuid where known and read, else by its id."""
    if item.broadcast_uuid is not None and api.usable(BROADCASTS_BY_UUID):
        return Ask("uuid", item.broadcast_uuid)
    if isinstance(item.broadcast, int) and api.usable(BROADCASTS_BY_ID):
        return Ask("id", item.broadcast)
    return None


def recipient(urn: Any, text: Any) -> tuple[str, str] | None:
    """What recognises a message whose row does not name its broadcast: its URN and its text."""
    normal = normalise_urn(urn)
    # RapidPro lists the text trimmed (transitions/outgoing/rapidpro_forms.py).
    return (normal, rapidpro_text(text)) if normal is not None and isinstance(text, str) else None


def could_be(item: Tracked, result: Mapping[str, Any], policy: Policy) -> bool:
    """Whether a row that names no broadcast may be `item`'s message: to its recipient with its
    text, created from a little before its send (clock skew) to a while after (mailroom's queue)."""
    if item.message_uuid is not None or recipient(item.urn, item.text) is None:
        return False
    if recipient(result.get("urn"), result.get("text")) != recipient(item.urn, item.text):
        return False
    created = parse_time(result.get("created_on"))
    if created is None:
        return False
    low = item.created_on if item.created_on is not None else item.sent_at - policy.created_margin
    return low - 1.0 <= created <= item.sent_at + RECIPIENT_MATCH_SLACK


"""How the worker names a RapidPro broadcast (pure): its integer id while the server gives one, its
uuid where it does not.

RapidPro's broadcasts had only an integer `id` until v10.3.79 (Oct 2025, commit 0297d2eb43:
"Add UUID to Broadcast and Message API representations and depublicize ID"); current servers send
both, the id as a deprecated field; a server that drops it sends the uuid alone. CHT stores the
integer id as the task's `gateway_ref` (its own sender and CHT's status poller compare it
strictly), so the worker keeps doing so whenever there is an id, and stores the broadcast's uuid
only when the server gave none. A *key* is that value: an int, or a lower-case uuid string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

BroadcastKey = int | str

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def as_uuid(value: Any) -> str | None:
    """A canonical uuid string (lower case), or None."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return text if _UUID.match(text) else None


def as_id(value: Any) -> int | None:
    """A positive integer id (an int, or digits in a string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
        return number if number > 0 else None
    return None


def broadcast_key(gateway_ref: Any) -> BroadcastKey | None:
    """The broadcast a gateway_ref names: RapidPro's integer id (an int, or digits in a string, as
    CHT may store it), or a broadcast uuid (a server without ids). Anything else is another
    gateway's reference: never asked about."""
    number = as_id(gateway_ref)
    return number if number is not None else as_uuid(gateway_ref)


def gateway_ref(broadcast_id: Any, broadcast_uuid: Any) -> BroadcastKey | None:
    """What the task stores for a broadcast: its id (as CHT does), else its uuid."""
    number = as_id(broadcast_id)
    return number if number is not None else as_uuid(broadcast_uuid)


def ledger_ref(entry: Mapping[str, Any]) -> BroadcastKey | None:
    """The key of the broadcast a ledger entry records as its outcome."""
    return gateway_ref(entry.get("broadcast_id"), entry.get("broadcast_uuid"))


def refs_of(broadcast: Mapping[str, Any]) -> list[BroadcastKey]:
    """Every key a broadcast of `broadcasts.json` can be known by (its id and its uuid)."""
    keys: list[BroadcastKey] = []
    for key in (as_id(broadcast.get("id")), as_uuid(broadcast.get("uuid"))):
        if key is not None:
            keys.append(key)
    return keys


def key_of(broadcast: Mapping[str, Any]) -> BroadcastKey | None:
    """A `broadcasts.json` item's key: its id, else its uuid."""
    return gateway_ref(broadcast.get("id"), broadcast.get("uuid"))


def message_broadcast(result: Mapping[str, Any]) -> BroadcastKey | None:
    """The broadcast a `messages.json` result names: the integer `broadcast` (every version that
    has it), or a uuid should a server name it so ({"uuid": …} or the bare uuid)."""
    value = result.get("broadcast")
    if isinstance(value, Mapping):
        return as_uuid(value.get("uuid")) or as_id(value.get("id"))
    return broadcast_key(value)


def log_fields(key: BroadcastKey | None) -> dict[str, Any]:
    """`broadcast_id` (as logged since the first release) or `broadcast_uuid` for a key."""
    if isinstance(key, str):
        return {"broadcast_uuid": key}
    return {"broadcast_id": key}

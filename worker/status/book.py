"""The schedule of status tracking: every message followed, by uuid and by broadcast, and the
messages remembered as not worth asking about; plus reading what CHT shows as tracked.

The schedule lives in memory. CHT's view `medic-sms/gateway_messages_by_state` (keys
received-by-gateway, forwarded-by-gateway, sent) lists every message with a gateway_ref,
whoever sent it; `tracked_rows` reads it, `candidates` the docs (and ledger entries) behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transitions.broadcasts import BroadcastKey, as_uuid, message_broadcast
from transitions.states import GATEWAY_TRACKED_STATES
from transitions.status import Candidate, Policy, Tier, Tracked, expired, period, trackable_messages
from transitions.status_api import could_be, recipient
from transitions.timestamps import parse_time
from worker.couch.client import Database
from worker.status.round import chunks

VIEW_DDOC, VIEW_NAME = "medic-sms", "gateway_messages_by_state"
DOC_BATCH = 200  # docs per all_docs request
# Messages remembered as past the horizon or unknown to RapidPro (so the view's rows for them are
# not re-read every round). Pruned to what the view still lists; this caps it beyond that.
MAX_REMEMBERED = 100_000

Rows = dict[str, tuple[str, str, Any]]  # uuid -> (doc_id, state, gateway_ref)


class Book:
    def __init__(self) -> None:
        self.items: dict[str, Tracked] = {}
        self.by_broadcast: dict[BroadcastKey, set[str]] = {}
        self.by_message: dict[str, str] = {}  # RapidPro's message uuid → the tracked message
        # Messages not seen yet, by (URN, text): what finds them on a server whose rows name no
        # broadcast (transitions/status_api.py).
        self.by_recipient: dict[tuple[str, str], set[str]] = {}
        # RapidPro messages already found to be a tracked message's (also after it ended): never
        # taken for another by recipient.
        self.known_rows: dict[str, None] = {}
        self.expired: dict[str, None] = {}  # past the horizon: never asked again
        self.missing: dict[str, None] = {}  # gave up on this host; asked again after a rescan

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Tracked) -> None:
        self.items[item.uuid] = item
        self.by_broadcast.setdefault(item.broadcast, set()).add(item.uuid)
        self._index(item)

    def _index(self, item: Tracked) -> None:
        if item.message_uuid is not None:
            self.by_message[item.message_uuid] = item.uuid
            self.remember(self.known_rows, item.message_uuid)
        elif (known := recipient(item.urn, item.text)) is not None:
            self.by_recipient.setdefault(known, set()).add(item.uuid)

    def _unindex(self, item: Tracked, message_uuid: str | None) -> None:
        if message_uuid is not None and self.by_message.get(message_uuid) == item.uuid:
            del self.by_message[message_uuid]
        known = recipient(item.urn, item.text)
        if known is not None and (uuids := self.by_recipient.get(known)) is not None:
            uuids.discard(item.uuid)
            if not uuids:
                del self.by_recipient[known]

    def seen(self, item: Tracked, message_uuid_before: str | None) -> None:
        """An answer told the item's message uuid: index it by that from now on."""
        if item.message_uuid != message_uuid_before and item.uuid in self.items:
            self._unindex(item, message_uuid_before)
            self._index(item)

    def drop(self, uuid: str) -> Tracked | None:
        item = self.items.pop(uuid, None)
        if item is not None:
            uuids = self.by_broadcast.get(item.broadcast)
            if uuids is not None:
                uuids.discard(uuid)
                if not uuids:
                    del self.by_broadcast[item.broadcast]
            self._unindex(item, item.message_uuid)
        return item

    def clear(self) -> None:
        self.known_rows.clear()
        self.items.clear()
        self.by_broadcast.clear()
        self.by_message.clear()
        self.by_recipient.clear()

    def match(self, results: Sequence[Mapping[str, Any]],
              policy: Policy) -> list[tuple[Tracked, dict[str, Any]]]:
        """Which tracked message each outgoing row is about: by RapidPro's message uuid once known,
        by the broadcast the row names, and — only for rows that name no broadcast at all (a
        server without ids) — by recipient and text near the send, to the send closest in time.
        The newest row of a message wins (rows come newest first)."""
        matched: dict[str, dict[str, Any]] = {}
        unnamed: list[dict[str, Any]] = []
        for row in results:
            if row.get("direction", "out") != "out":
                continue
            message_uuid = as_uuid(row.get("uuid"))
            if message_uuid is not None and message_uuid in self.by_message:
                matched.setdefault(self.by_message[message_uuid], dict(row))
                continue
            key = message_broadcast(row)
            if key is not None:
                for uuid in self.by_broadcast.get(key, ()):
                    matched.setdefault(uuid, dict(row))
            elif "broadcast" not in row and message_uuid not in self.known_rows:
                unnamed.append(dict(row))
        for row in reversed(unnamed):
            known = recipient(row.get("urn"), row.get("text"))
            candidates = self.by_recipient.get(known, set()) if known is not None else set()
            found = [item for uuid in candidates
                     if uuid not in matched and could_be(item := self.items[uuid], row, policy)]
            created = parse_time(row.get("created_on")) or 0.0
            if found:  # the send closest before it (the same text to the same number twice)
                matched[min(found, key=lambda item: (abs(created - item.sent_at), item.uuid)).uuid] = row
        return [(self.items[uuid], row) for uuid, row in matched.items() if uuid in self.items]

    def parked_by_channel(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items.values():
            if item.parked and item.channel is not None:
                counts[item.channel] = counts.get(item.channel, 0) + 1
        return counts

    @staticmethod
    def remember(memory: dict[str, None], uuid: str) -> None:
        memory[uuid] = None
        while len(memory) > MAX_REMEMBERED:
            del memory[next(iter(memory))]  # the oldest; re-read (and re-judged) if the view has it

    def forget_unlisted(self, rows: Rows) -> None:
        """What the view no longer lists (moved on, cleared, deleted) need not be remembered."""
        for memory in (self.expired, self.missing):
            for uuid in [u for u in memory if u not in rows]:
                del memory[uuid]

    def past_horizon(self, now: float, policy: Policy) -> list[Tracked]:
        """Drops (and remembers) the messages past the tracking horizon; returns them."""
        gone = [item for item in self.items.values() if expired(item, now, policy)]
        for item in gone:
            self.drop(item.uuid)
            self.remember(self.expired, item.uuid)
        return gone

    def due_count(self, now: float) -> int:
        return sum(1 for item in self.items.values() if item.next_check <= now)

    def tiers(self, now: float, policy: Policy) -> dict[str, dict[str, Any]]:
        """Per tier: messages followed, and those whose check is late by more than the tier's
        period (the budget could not pay for it)."""
        tiers: dict[str, dict[str, Any]] = {t.value: {"tracked": 0, "late": 0, "max_late_s": 0.0}
                                            for t in Tier}
        for item in self.items.values():
            tier = item.tier(now, policy)
            entry = tiers[tier.value]
            entry["tracked"] += 1
            late = now - item.next_check
            if late > period(tier, policy) + policy.due_tolerance:
                entry["late"] += 1
                entry["max_late_s"] = max(entry["max_late_s"], round(late, 1))
        return tiers


async def tracked_rows(medic: Database, page_size: int) -> Rows:
    """Every message CHT's view shows as tracked."""
    rows: Rows = {}
    for state in sorted(GATEWAY_TRACKED_STATES):
        skip = 0
        while True:
            page = await medic.view(VIEW_DDOC, VIEW_NAME, key=state, limit=page_size, skip=skip)
            found = page.get("rows", [])
            for row in found:
                value = row.get("value") or {}
                uuid = value.get("id") if isinstance(value, dict) else None
                if isinstance(uuid, str):
                    rows.setdefault(uuid, (row["id"], state, value.get("gateway_ref")))
            if len(found) < page_size:
                break
            skip += len(found)
    return rows


async def candidates(medic: Database, rows: Rows) -> dict[str, Candidate]:
    """The trackable messages of the rows' docs, by uuid (only those the rows name)."""
    found: dict[str, Candidate] = {}
    for batch in chunks(sorted({row[0] for row in rows.values()}), DOC_BATCH):
        result = await medic.all_docs(keys=batch, include_docs=True)
        for row in result.get("rows", []):
            doc = row.get("doc")
            if isinstance(doc, dict):
                for candidate in trackable_messages(doc):
                    if candidate.uuid in rows:
                        found[candidate.uuid] = candidate
    return found

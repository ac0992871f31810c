"""The schedule of status tracking: every message followed, by uuid and by broadcast, and the
messages remembered as not worth asking about; plus reading the docs behind CHT's view.

The schedule lives in memory, one compact record per followed message (`Tracked`: slots,
interned state strings, no recipient unless the message is recognised by text): about 0.6 KB
each with its indexes, so 10⁵ messages take some 60 MB and 4·10⁵ some 240 MB above an idle worker
(bench/scale.py measures it). A broadcast of one message (nearly all) is indexed by the message's
uuid itself, not a set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transitions.cht.timestamps import parse_time
from transitions.outgoing.broadcasts import BroadcastKey, as_uuid, message_broadcast
from transitions.status.api import could_be, recipient
from transitions.status.rules import Candidate, Policy, Tier, Tracked, period, trackable_messages
from worker.couch.client import Database
from worker.status.round import chunks

DOC_BATCH = 200  # docs per all_docs request
# Messages remembered as past the horizon or unknown to RapidPro (so the view's rows for them are
# not re-read every round). Pruned to what the view still lists; this caps it beyond that.
MAX_REMEMBERED = 100_000



class Book:
    def __init__(self) -> None:
        self.items: dict[str, Tracked] = {}
        # The message's uuid, or a set of them for a broadcast to several recipients.
        self.by_broadcast: dict[BroadcastKey, str | set[str]] = {}
        self.by_message: dict[str, str] = {}  # RapidPro's message uuid → the tracked message
        # Messages not seen yet, by (URN, text): what finds them on a server whose rows name no
        # broadcast (transitions/status/api.py).
        self.by_recipient: dict[tuple[str, str], set[str]] = {}
        # RapidPro messages already found to be a tracked message's (also after it ended): never
        # taken for another by recipient.
        self.known_rows: dict[str, None] = {}
        self.expired: dict[str, None] = {}  # past the horizon: never asked again
        self.missing: dict[str, None] = {}  # gave up on this host; asked again after a rescan

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Tracked) -> None:
        if item.uuid in self.items:
            self.drop(item.uuid)
        self.items[item.uuid] = item
        held = self.by_broadcast.get(item.broadcast)
        if held is None:
            self.by_broadcast[item.broadcast] = item.uuid
        elif isinstance(held, str):
            if held != item.uuid:
                self.by_broadcast[item.broadcast] = {held, item.uuid}
        else:
            held.add(item.uuid)
        self._index(item)

    def of_broadcast(self, key: BroadcastKey) -> tuple[str, ...]:
        held = self.by_broadcast.get(key)
        if held is None:
            return ()
        return (held,) if isinstance(held, str) else tuple(held)

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
            held = self.by_broadcast.get(item.broadcast)
            if held == uuid:
                del self.by_broadcast[item.broadcast]
            elif isinstance(held, set):
                held.discard(uuid)
                if len(held) == 1:
                    self.by_broadcast[item.broadcast] = next(iter(held))
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
                for uuid in self.of_broadcast(key):
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

    def forget(self, uuid: str) -> None:
        """A message no longer tracked by CHT (moved on, cleared) need not be remembered."""
        self.expired.pop(uuid, None)
        self.missing.pop(uuid, None)

    def drop_docs(self, doc_ids: set[str]) -> list[str]:
        """Drops the messages of these (deleted) docs; returns their uuids."""
        gone = [uuid for uuid, item in self.items.items() if item.doc_id in doc_ids]
        for uuid in gone:
            self.drop(uuid)
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


async def candidates(medic: Database, rows: Mapping[str, str]) -> dict[str, Candidate]:
    """The trackable messages of the rows' docs (uuid → doc id), by uuid (only those named)."""
    found: dict[str, Candidate] = {}
    for batch in chunks(sorted(set(rows.values())), DOC_BATCH):
        result = await medic.all_docs(keys=batch, include_docs=True)
        for row in result.get("rows", []):
            doc = row.get("doc")
            if isinstance(doc, dict):
                for candidate in trackable_messages(doc):
                    if candidate.uuid in rows:
                        found[candidate.uuid] = candidate
    return found

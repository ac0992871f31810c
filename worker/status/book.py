"""The schedule of status tracking: every message followed, by uuid and by broadcast, and the
messages remembered as not worth asking about; plus reading what CHT shows as tracked.

The schedule lives in memory. CHT's view `medic-sms/gateway_messages_by_state` (keys
received-by-gateway, forwarded-by-gateway, sent) lists every message with a gateway_ref,
whoever sent it; `tracked_rows` reads it, `candidates` the docs (and ledger entries) behind it.
"""

from __future__ import annotations

from typing import Any

from transitions.states import GATEWAY_TRACKED_STATES
from transitions.status import Candidate, Policy, Tier, Tracked, expired, period, trackable_messages
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
        self.by_broadcast: dict[int, set[str]] = {}
        self.expired: dict[str, None] = {}  # past the horizon: never asked again
        self.missing: dict[str, None] = {}  # gave up on this host; asked again after a rescan

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Tracked) -> None:
        self.items[item.uuid] = item
        self.by_broadcast.setdefault(item.broadcast, set()).add(item.uuid)

    def drop(self, uuid: str) -> Tracked | None:
        item = self.items.pop(uuid, None)
        if item is not None:
            uuids = self.by_broadcast.get(item.broadcast)
            if uuids is not None:
                uuids.discard(uuid)
                if not uuids:
                    del self.by_broadcast[item.broadcast]
        return item

    def clear(self) -> None:
        self.items.clear()
        self.by_broadcast.clear()

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

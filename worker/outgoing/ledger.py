"""The dispatch ledger: one doc per message uuid in the worker's own database.

CouchDB's create-only write decides who sends a message: creating `msg:<uuid>` answers 409 when it
exists, so of several workers (or a worker and its own retry) exactly one holds the claim. Taking
over a *released* claim is an update with the entry's `_rev`, so it is decided the same way.

Resolving an in-doubt claim (worker/outgoing/in_doubt.py, the `in-doubt` command) is also an update with the
`_rev` read *before* RapidPro was asked: a decision is written only if nobody touched the entry
meanwhile. A resend is a release (state `released`, the old claim kept in `history`) followed by a
normal claim, so two workers can never both resend. Fields added by this (`resolution`,
`needs_operator`, `history`) are optional: entries written before them read as they always did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transitions.broadcasts import BroadcastKey
from transitions.dispatch import CLAIMED, IN_DOUBT, REJECTED, RELEASED, SENT
from transitions.timestamps import cht_time
from worker.couch.bulk import BulkWriter
from worker.couch.client import Conflict, Database, NotFound
from worker.identity import OWNER

LEDGER_PREFIX = "msg:"
DESIGN_DOC = "rapidpro-worker"
# Views on the ledger (JavaScript as CouchDB runs it): claims without outcome, by claim time; and
# which entry holds a broadcast as its outcome, by the broadcast's id and by its uuid.
LEDGER_VIEWS = {
    "unresolved": {"map": "function (doc) { if (doc.type === 'dispatch' && (doc.state === 'claimed' || "
                          "doc.state === 'in-doubt')) { emit(doc.claimed_at_epoch || 0, null); } }"},
    "by_broadcast": {"map": "function (doc) { if (doc.type === 'dispatch' && doc.state === 'sent') { "
                            "if (typeof doc.broadcast_id === 'number') { emit(doc.broadcast_id, doc.uuid); } "
                            "if (typeof doc.broadcast_uuid === 'string') { "
                            "emit(doc.broadcast_uuid, doc.uuid); } } }"},
}
def _same_claim(current: dict[str, Any], entry: dict[str, Any]) -> bool:
    return all(current.get(k) == entry.get(k) for k in ("owner", "claimed_at_epoch", "state"))


class Ledger:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time, owner: str = OWNER) -> None:
        self._db = db
        self._clock = clock
        self._owner = owner
        # Claims and outcomes of concurrent sends share `_bulk_docs` requests (group commit); each
        # keeps a PUT's meaning (create-only claim, `_rev`-guarded update) and its own result.
        # Up to 4 requests in flight: a claim (before a POST) rarely waits behind outcomes, and
        # CouchDB merges concurrent requests into one commit anyway.
        self._writer = BulkWriter(db, max_in_flight=4)

    async def get(self, uuid: str) -> dict[str, Any] | None:
        return await self._db.get_or_none(LEDGER_PREFIX + uuid)

    async def claim(self, uuid: str, doc_id: str, urn: str, released: dict[str, Any] | None = None
                    ) -> dict[str, Any] | None:
        """The claim for `uuid`, or None when someone else holds it (do not send)."""
        now = self._clock()
        entry: dict[str, Any] = {
            "_id": LEDGER_PREFIX + uuid, "type": "dispatch", "uuid": uuid, "doc_id": doc_id, "urn": urn,
            "state": CLAIMED, "claimed_at": cht_time(now), "claimed_at_epoch": now, "owner": self._owner,
            "attempts": 1,
        }
        if released is not None:
            entry["_rev"] = released["_rev"]
            entry["attempts"] = int(released.get("attempts") or 0) + 1
            entry["last_error"] = released.get("error")
            for kept in ("history", "resolution"):  # how an in-doubt claim was resolved
                if kept in released:
                    entry[kept] = released[kept]
        try:
            entry["_rev"] = await self._writer.put(entry)
        except Conflict:
            return None
        return entry

    async def _update(self, entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Record an outcome on a claim. After a conflict it is written again only while the
        entry is still the same claim in the same state; otherwise someone else decided (an
        in-doubt resolution, another worker) and their entry is returned unchanged."""
        fields["outcome_at"] = cht_time(self._clock())
        for _ in range(5):
            updated = {**entry, **fields}
            try:
                updated["_rev"] = await self._writer.put(updated)
                return updated
            except Conflict:
                current = await self.get(entry["uuid"])
                if current is None:
                    updated.pop("_rev", None)
                    entry = {k: v for k, v in entry.items() if k != "_rev"}
                elif not _same_claim(current, entry):
                    return current
                else:
                    entry = {**entry, "_rev": current["_rev"]}
        raise Conflict(f"ledger entry {entry['_id']} kept conflicting")

    async def decide(self, entry: dict[str, Any], **fields: Any) -> dict[str, Any] | None:
        """Write a decision about `entry` only if it is unchanged since it was read (its `_rev`);
        None when someone else touched it meanwhile (read it again and decide again)."""
        updated = {**entry, **fields}
        for key in [k for k, v in fields.items() if v is None and k in ("needs_operator",)]:
            updated.pop(key, None)
        try:
            updated["_rev"] = await self._writer.put(updated)
        except Conflict:
            return None
        return updated

    def resolution(self, how: str, by: str | None = None, **details: Any) -> dict[str, Any]:
        return {"how": how, "by": by or self._owner, "at": cht_time(self._clock()), **details}

    async def resolve_sent(self, entry: dict[str, Any], broadcast_id: int | None, broadcast_uuid: str | None,
                           broadcast_status: str | None, resolution: dict[str, Any]) -> dict[str, Any] | None:
        return await self.decide(entry, state=SENT, broadcast_id=broadcast_id, broadcast_uuid=broadcast_uuid,
                                 broadcast_status=broadcast_status, error=None, needs_operator=None,
                                 resolution=resolution, outcome_at=resolution["at"])

    async def resolve_failed(self, entry: dict[str, Any], reason: str, resolution: dict[str, Any]
                             ) -> dict[str, Any] | None:
        return await self.decide(entry, state=REJECTED, error=reason, needs_operator=None,
                                 resolution=resolution, outcome_at=resolution["at"])

    async def release_for_resend(self, entry: dict[str, Any], reason: str, resolution: dict[str, Any]
                                 ) -> dict[str, Any] | None:
        """Nothing was created: free the message for one new claim; the old claim goes to history."""
        previous = {k: entry.get(k) for k in ("claimed_at", "owner", "state", "error", "attempts")}
        history = [*(entry.get("history") or []), {**previous, "resolution": resolution}]
        return await self.decide(entry, state=RELEASED, error=reason, needs_operator=None,
                                 resolution=resolution, history=history, outcome_at=resolution["at"])

    async def needs_operator(self, entry: dict[str, Any], reason: str, retry: bool = False
                             ) -> dict[str, Any] | None:
        waiting = {"reason": reason, "since": cht_time(self._clock())}
        if retry:
            waiting["retry"] = True
        return await self.decide(entry, state=IN_DOUBT, needs_operator=waiting,
                                 error=entry.get("error") or "claimed but no outcome was recorded")

    async def ensure_views(self) -> None:
        """Create or update the ledger's design doc (a 409 means another worker just did)."""
        # Through _all_docs and _bulk_docs: no design-doc path encoding to get wrong.
        doc_id = f"_design/{DESIGN_DOC}"
        rows = (await self._db.all_docs(keys=[doc_id], include_docs=True)).get("rows", [])
        current = rows[0].get("doc") if rows and isinstance(rows[0].get("doc"), dict) else None
        if current is not None and current.get("views") == LEDGER_VIEWS:
            return
        doc: dict[str, Any] = {"_id": doc_id, "language": "javascript", "views": LEDGER_VIEWS}
        if current is not None:
            doc["_rev"] = current["_rev"]
        await self._db.bulk([doc])  # a conflict: another worker just wrote the same

    async def unresolved(self) -> list[dict[str, Any]]:
        """Every claim without an outcome (claimed or in doubt), oldest first."""
        try:
            result = await self._db.view(DESIGN_DOC, "unresolved", include_docs=True, reduce=False)
        except NotFound:
            return []
        return [row["doc"] for row in result.get("rows", []) if isinstance(row.get("doc"), dict)]

    async def outcomes_of(self, broadcasts: list[BroadcastKey]) -> dict[BroadcastKey, str]:
        """Which message uuid holds each of these broadcasts (ids or uuids) as its outcome."""
        if not broadcasts:
            return {}
        keys = sorted(set(broadcasts), key=lambda key: (isinstance(key, str), str(key)))
        try:
            result = await self._db.view(DESIGN_DOC, "by_broadcast", keys=keys, reduce=False)
        except NotFound:
            return {}
        return {row["key"]: row["value"] for row in result.get("rows", [])
                if isinstance(row.get("key"), int | str) and not isinstance(row.get("key"), bool)}

    async def record_sent(self, entry: dict[str, Any], broadcast_id: int | None, broadcast_uuid: str | None,
                          broadcast_status: str | None) -> dict[str, Any]:
        return await self._update(entry, state=SENT, broadcast_id=broadcast_id, broadcast_uuid=broadcast_uuid,
                                  broadcast_status=broadcast_status, error=None)

    async def record_rejected(self, entry: dict[str, Any], reason: str) -> dict[str, Any]:
        return await self._update(entry, state=REJECTED, error=reason)

    async def record_in_doubt(self, entry: dict[str, Any], reason: str) -> dict[str, Any]:
        return await self._update(entry, state=IN_DOUBT, error=reason)

    async def release(self, entry: dict[str, Any], reason: str) -> dict[str, Any]:
        return await self._update(entry, state=RELEASED, error=reason)

    async def get_many(self, uuids: list[str], batch: int = 200) -> dict[str, dict[str, Any]]:
        """The entries of `uuids` that exist, by uuid ({} when the worker's db does not exist yet)."""
        entries: dict[str, dict[str, Any]] = {}
        for start in range(0, len(uuids), batch):
            keys = [LEDGER_PREFIX + uuid for uuid in uuids[start:start + batch]]
            try:
                result = await self._db.all_docs(keys=keys, include_docs=True)
            except NotFound:
                return entries
            for row in result.get("rows", []):
                doc = row.get("doc")
                if isinstance(doc, dict) and isinstance(doc.get("uuid"), str):
                    entries[doc["uuid"]] = doc
        return entries

    async def put_many(self, entries: list[dict[str, Any]]) -> list[str]:
        """Write updated entries (with their `_rev`) in one `_bulk_docs`; returns the uuids that
        conflicted, for the caller to re-read and decide again."""
        results = await self._db.bulk(entries)
        return [item["id"].removeprefix(LEDGER_PREFIX) for item in results
                if item.get("error") == "conflict"]

"""The dispatch ledger: one doc per message uuid in the worker's own database.

CouchDB's create-only write decides who sends a message: creating `msg:<uuid>` answers 409 when it
exists, so of several workers (or a worker and its own retry) exactly one holds the claim. Taking
over a *released* claim is an update with the entry's `_rev`, so it is decided the same way.

Resolving an in-doubt claim (worker/outgoing/in_doubt.py, the `in-doubt` command) is also an update with the
`_rev` read *before* RapidPro was asked: a decision is written only if nobody touched the entry
meanwhile. A resend is a release (state `released`, the old claim kept in `history`) followed by a
normal claim, so two workers can never both resend. Fields added by this (`resolution`,
`needs_operator`, `history`) are optional: entries written before them read as they always did.

On a clustered CouchDB "exactly one holds the claim" needs a quorum: every write here asks a
majority of the copies (`w`), and only a claim CouchDB answers 201 for is sent on. A claim stored
on fewer copies (202, `Accepted`) is remembered as never sent (`unsent`) and the message is tried
again once the cluster answers with a quorum; a 409 is read back from a quorum with every
conflicting leaf (`leaves`), which transitions/outgoing/ledger_leaves.py resolves. Outcomes and decisions
count as recorded only once a quorum holds them (`confirmed`).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from transitions.cht.timestamps import cht_time
from transitions.outgoing.broadcasts import BroadcastKey
from transitions.outgoing.dispatch import CLAIMED, IN_DOUBT, REJECTED, RELEASED, SENT
from transitions.outgoing.ledger_leaves import Merge, Resolution, merged_entry, resolve, writer_nonce
from transitions.status.feed import LEDGER_FIELDS, ledger_facts
from worker.couch.bulk import BulkWriter
from worker.couch.client import Accepted, Conflict, Database, NotFound, Unauthorized
from worker.identity import OWNER, owner_is_dead
from worker.logs import get_logger

log = get_logger(__name__)

LEDGER_PREFIX = "msg:"
DESIGN_DOC = "rapidpro-worker"


class LedgerRefused(Unauthorized):
    """The worker's database refused the ledger's design doc (the user is not its db admin): the
    views that find claims in doubt cannot exist, so the worker must not run on without them."""
# Views on the ledger (JavaScript as CouchDB runs it): claims without outcome, by claim time; and
# which entry holds a broadcast as its outcome, by the broadcast's id and by its uuid.
LEDGER_VIEWS = {
    "unresolved": {"map": "function (doc) { if (doc.type === 'dispatch' && (doc.state === 'claimed' || "
                          "doc.state === 'in-doubt')) { emit(doc.claimed_at_epoch || 0, null); } }"},
    "by_broadcast": {"map": "function (doc) { if (doc.type === 'dispatch' && doc.state === 'sent') { "
                            "if (typeof doc.broadcast_id === 'number') { emit(doc.broadcast_id, doc.uuid); } "
                            "if (typeof doc.broadcast_uuid === 'string') { "
                            "emit(doc.broadcast_uuid, doc.uuid); } } }"},
    # Every claim that went (or may have gone) to RapidPro, by claim time: the sends RapidPro's
    # sliding hour still counts are rebuilt from it at start (worker/rapidpro/budget.py).
    "by_claim_time": {"map": "function (doc) { if (doc.type === 'dispatch' && doc.state !== 'released' "
                             "&& typeof doc.claimed_at_epoch === 'number') { "
                             "emit(doc.claimed_at_epoch, null); } }"},
    # Entries with conflicting revisions (a clustered CouchDB): resolved by in-doubt resolution.
    "conflicted": {"map": "function (doc) { if (doc.type === 'dispatch' && doc._conflicts) { "
                          "emit(doc._id, null); } }"},
}
# Status tracking's compact view of the sent entries (transitions/status/feed.py): what it needs
# to follow the worker's own messages without reading CHT's docs, by [CHT doc id, message uuid]:
# CHT's view lists a state's messages by doc id, so a page of it is one range of this view (a
# range read costs CouchDB far less than a lookup per key). A design doc of its own, so adding
# it does not rebuild the index of the views above.
STATUS_DESIGN_DOC = "rapidpro-worker-status"
STATUS_VIEWS = {
    "tracking": {"map": "function (doc) { if (doc.type === 'dispatch' && doc.state === 'sent' && doc.uuid "
                        "&& typeof doc.doc_id === 'string') { emit([doc.doc_id, doc.uuid], ["
                        + ", ".join("doc.outcome_at || doc.claimed_at" if name == "outcome_at"
                                    else f"doc.{name}" for name in LEDGER_FIELDS) + "]); } }"},
}
DESIGN_DOCS = {DESIGN_DOC: LEDGER_VIEWS, STATUS_DESIGN_DOC: STATUS_VIEWS}
# An outcome or decision stored on too few copies is confirmed by writing it again on top: a
# quorum taking the update proves a quorum held it. Tried this often before giving up for now.
CONFIRM_TRIES = 3


def _same_claim(current: dict[str, Any], entry: dict[str, Any]) -> bool:
    return all(current.get(k) == entry.get(k) for k in ("owner", "claimed_at_epoch", "state"))


def _facts(rows: list[Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row.get("key") if isinstance(row, dict) else None
        if isinstance(key, list) and len(key) == 2 and isinstance(key[1], str) \
                and (facts := ledger_facts(row.get("value"))) is not None:
            found[key[1]] = facts
    return found


class NotConfirmed(Accepted):
    """A ledger write stored on too few copies and not confirmed by a quorum since: not recorded."""


class Ledger:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time, owner: str = OWNER,
                 instance: str | None = None) -> None:
        self._db = db
        self._clock = clock
        self._owner = owner
        self._instance = instance or owner
        # Nonces of claims this process wrote but was never told it won (so it never sent on them).
        self.unsent: set[str] = set()
        # Claims and outcomes of concurrent sends share `_bulk_docs` requests (group commit); each
        # keeps a PUT's meaning (create-only claim, `_rev`-guarded update) and its own result.
        # Up to 4 requests in flight: a claim (before a POST) rarely waits behind outcomes, and
        # CouchDB merges concurrent requests into one commit anyway.
        self._writer = BulkWriter(db, max_in_flight=4, quorum=True)

    async def get(self, uuid: str) -> dict[str, Any] | None:
        return await self._db.get_or_none(LEDGER_PREFIX + uuid)

    def _writer_id(self) -> dict[str, str]:
        return {"instance": self._instance, "nonce": uuidlib.uuid4().hex}

    async def claim(self, uuid: str, doc_id: str, urn: str, released: dict[str, Any] | None = None
                    ) -> dict[str, Any] | None:
        """The claim for `uuid`, or None when someone else holds it (do not send). Raises
        `Accepted` when the claim is stored on too few copies: not won, not sent on, retried."""
        now = self._clock()
        entry: dict[str, Any] = {
            "_id": LEDGER_PREFIX + uuid, "type": "dispatch", "uuid": uuid, "doc_id": doc_id, "urn": urn,
            "state": CLAIMED, "claimed_at": cht_time(now), "claimed_at_epoch": now, "owner": self._owner,
            "attempts": 1, "writer": self._writer_id(),
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
        except Accepted:
            self.unsent.add(entry["writer"]["nonce"])
            log.warning("claim_not_confirmed", message_uuid=uuid,
                        detail="stored on fewer CouchDB copies than a quorum: not sent; tried again")
            raise
        return entry

    def is_unsent(self, entry: dict[str, Any]) -> bool:
        """A claim (or its in-doubt mark) this process wrote and was never told it won."""
        return writer_nonce(entry) in self.unsent

    async def _put_confirmed(self, doc: dict[str, Any]) -> str:
        """Write `doc` (with its `_rev`); returns the rev once a quorum holds it. Raises Conflict,
        or NotConfirmed after CONFIRM_TRIES writes stored on too few copies each."""
        for _ in range(CONFIRM_TRIES):
            try:
                return await self._writer.put(doc)
            except Accepted as exc:
                # On some copies: write it again on top of that revision (a new nonce, so a new
                # revision); a quorum taking the update holds the content.
                doc = {**doc, "_rev": exc.rev, "writer": self._writer_id()}
        raise NotConfirmed(f"{doc['_id']}: not confirmed by a quorum of copies", doc.get("_rev"))

    async def leaves(self, uuid: str) -> list[dict[str, Any]]:
        """Every current revision of the entry, read from a quorum (CouchDB's winner first)."""
        return await self._db.leaves(LEDGER_PREFIX + uuid)

    def resolve(self, leaves: list[dict[str, Any]], claim_timeout: float) -> Resolution:
        return resolve(leaves, unsent=self.unsent, now=self._clock(), claim_timeout=claim_timeout,
                       owner_dead=owner_is_dead)

    async def settle(self, resolution: Resolution) -> dict[str, Any] | None:
        """Make the entry one revision again: the merged entry written on CouchDB's winner, the
        other leaves deleted, in one quorum `_bulk_docs`. Returns the entry that stands, or None
        when the merge was not confirmed (decide again later). Outcomes need no merge: the other
        leaves are only deleted."""
        entry = resolution.entry
        if entry is None or resolution.merge is Merge.WAIT:
            return None
        stands = entry
        docs: list[dict[str, Any]] = []
        if resolution.merge in (Merge.RELEASED, Merge.IN_DOUBT):
            stands = {**merged_entry(resolution, cht_time(self._clock())), "writer": self._writer_id()}
            docs.append(stands)
        docs += [{"_id": leaf["_id"], "_rev": leaf["_rev"], "_deleted": True} for leaf in resolution.losers]
        if resolution.double_sent:
            log.error("message_sent_twice", message_uuid=entry.get("uuid"),
                      detail="two ledger revisions record different broadcasts")
        if not docs:
            return stands
        results = await self._db.bulk_docs(docs, quorum=True)
        first = results[0] if results else {}
        if docs[0] is stands:
            if not isinstance(first, dict) or "error" in first or first.get("accepted"):
                return None
            stands = {**stands, "_rev": first["rev"]}
        log.info("ledger_conflict_resolved", message_uuid=entry.get("uuid"), merge=resolution.merge.value,
                 deleted=len(resolution.losers), state=stands.get("state"))
        return stands

    async def current(self, uuid: str, claim_timeout: float) -> tuple[dict[str, Any] | None, bool]:
        """The entry as it stands, its conflicts settled where that is safe; (entry, wait): `wait`
        when a fresh claim of someone else may be a send under way (or a merge was not confirmed)."""
        leaves = await self.leaves(uuid)
        resolution = self.resolve(leaves, claim_timeout)
        if len(leaves) <= 1:
            return resolution.entry, False
        settled = await self.settle(resolution)
        return settled, settled is None

    async def _update(self, entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Record an outcome on a claim. After a conflict it is written again only while the
        entry is still the same claim in the same state; otherwise someone else decided (an
        in-doubt resolution, another worker) and their entry is returned unchanged."""
        fields["outcome_at"] = cht_time(self._clock())
        for _ in range(5):
            updated = {**entry, **fields, "writer": self._writer_id()}
            try:
                updated["_rev"] = await self._put_confirmed(updated)
                return updated
            except Conflict:
                current = await self.get(entry["uuid"])
                if current is None:
                    updated.pop("_rev", None)
                    entry = {k: v for k, v in entry.items() if k != "_rev"}
                elif _same_claim(current, entry) or self._own_unconfirmed(current, fields):
                    # Still our claim, or our own earlier write of this outcome that a quorum has
                    # not confirmed yet: write (again) on top of it.
                    entry = {**entry, "_rev": current["_rev"]}
                else:
                    return current
        raise Conflict(f"ledger entry {entry['_id']} kept conflicting")

    def _own_unconfirmed(self, current: dict[str, Any], fields: dict[str, Any]) -> bool:
        writer = current.get("writer")
        return (isinstance(writer, dict) and writer.get("instance") == self._instance
                and all(current.get(k) == v for k, v in fields.items() if k != "outcome_at"))

    async def decide(self, entry: dict[str, Any], **fields: Any) -> dict[str, Any] | None:
        """Write a decision about `entry` only if it is unchanged since it was read (its `_rev`);
        None when someone else touched it meanwhile (read it again and decide again)."""
        updated = {**entry, **fields, "writer": self._writer_id()}
        for key in [k for k, v in fields.items() if v is None and k in ("needs_operator",)]:
            updated.pop(key, None)
        try:
            updated["_rev"] = await self._put_confirmed(updated)
        except (Conflict, NotConfirmed):
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
        """Create or update the ledger's design docs (a 409 means another worker just did)."""
        # Through _all_docs and _bulk_docs: no design-doc path encoding to get wrong.
        ids = [f"_design/{name}" for name in DESIGN_DOCS]
        rows = (await self._db.all_docs(keys=ids, include_docs=True)).get("rows", [])
        current = {row.get("key"): row.get("doc") for row in rows if isinstance(row.get("doc"), dict)}
        docs: list[dict[str, Any]] = []
        for name, views in DESIGN_DOCS.items():
            doc_id = f"_design/{name}"
            existing = current.get(doc_id)
            if existing is not None and existing.get("views") == views:
                continue
            doc: dict[str, Any] = {"_id": doc_id, "language": "javascript", "views": views}
            if existing is not None:
                doc["_rev"] = existing["_rev"]
            docs.append(doc)
        if not docs:
            return
        # `_bulk_docs` answers 201 with the refusal inside: read it (a conflict: another worker
        # just wrote the same).
        for item in await self._db.bulk(docs):
            error = item.get("error") if isinstance(item, dict) else None
            if error and error != "conflict":
                db = self._db.name
                raise LedgerRefused(f"{db} refused the ledger's design doc {item.get('id')} ({error}: "
                                    f"{item.get('reason')}); the CouchDB user must be an admin of {db} "
                                    "(its _security admins)", 403)

    async def _view(self, view: str, **params: Any) -> dict[str, Any]:
        """A ledger view; a missing design doc (deleted since the start) is written again first,
        never read as "no rows": claims in doubt would go unseen."""
        try:
            return await self._db.view(DESIGN_DOC, view, **params)
        except NotFound:
            log.warning("ledger_views_missing", db=self._db.name, view=view)
            await self.ensure_views()
            return await self._db.view(DESIGN_DOC, view, **params)

    async def tracking(self, first_doc_id: str, last_doc_id: str, limit: int
                       ) -> tuple[dict[str, dict[str, Any]], bool] | None:
        """The status-tracking facts of the sent entries of CHT docs `first_doc_id`..`last_doc_id`
        (a view range, no docs), by message uuid, and whether the range was read to its end (at
        most `limit` rows are); None when the view does not exist yet (read the entries)."""
        try:
            result = await self._db.view(STATUS_DESIGN_DOC, "tracking", start_key=[first_doc_id],
                                         end_key=[last_doc_id, {}], limit=limit, reduce=False)
        except NotFound:
            return None
        rows = result.get("rows", [])
        return _facts(rows), len(rows) < limit

    async def tracking_of(self, keys: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """The same for (doc id, message uuid) pairs, one lookup each (dearer than a range)."""
        if not keys:
            return {}
        result = await self._db.view(STATUS_DESIGN_DOC, "tracking", keys=[list(key) for key in keys],
                                     reduce=False)
        return _facts(result.get("rows", []))

    async def unresolved(self) -> list[dict[str, Any]]:
        """Every claim without an outcome (claimed or in doubt), oldest first."""
        result = await self._view("unresolved", include_docs=True, reduce=False, conflicts=True)
        return [row["doc"] for row in result.get("rows", []) if isinstance(row.get("doc"), dict)]

    async def claims_since(self, since: float, limit: int = 100_000) -> list[float]:
        """The claim times (epoch seconds) from `since` on of entries not released: one POST each."""
        result = await self._view("by_claim_time", start_key=since, reduce=False, limit=limit)
        return [float(row["key"]) for row in result.get("rows", [])
                if isinstance(row.get("key"), int | float) and not isinstance(row.get("key"), bool)]

    async def conflicted(self, limit: int = 500) -> list[str]:
        """Message uuids whose entries have conflicting revisions (a clustered CouchDB)."""
        result = await self._view("conflicted", reduce=False, limit=limit)
        return [str(row["id"]).removeprefix(LEDGER_PREFIX) for row in result.get("rows", [])
                if isinstance(row.get("id"), str)]

    async def outcomes_of(self, broadcasts: list[BroadcastKey]) -> dict[BroadcastKey, str]:
        """Which message uuid holds each of these broadcasts (ids or uuids) as its outcome."""
        if not broadcasts:
            return {}
        keys = sorted(set(broadcasts), key=lambda key: (isinstance(key, str), str(key)))
        result = await self._view("by_broadcast", keys=keys, reduce=False)
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

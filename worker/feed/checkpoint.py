"""Where the feed may resume from: a watermark over opaque seqs, and its durable doc.

Seqs are opaque (CouchDB 3 sends strings that must not be compared), so the watermark orders
changes by the order the feed delivered them. The checkpoint is the seq of the last change that,
with every change before it, is done: a change still in flight (or retrying) holds it back, so
nothing is skipped when the worker stops, however it stops.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any

from worker.couch.client import Accepted, Conflict, CouchError, Database
from worker.logs import get_logger

log = get_logger(__name__)

CHECKPOINT_ID = "cht-rapidpro-worker-checkpoint"
# A holder's own writes never conflict with its own leaf, so conflicting revisions a deposed holder
# left (a write stored on a cut-off node) are looked for this often, before a save.
CONFLICT_CHECK_S = 30.0


class CheckpointFenced(CouchError):
    """A deposed lease holder's late checkpoint write, refused: a newer holder owns the checkpoint."""


class Watermark:
    def __init__(self, start: Any = None) -> None:
        self._seq = start
        self._base = 0  # token of the first entry in _entries
        self._entries: deque[list[Any]] = deque()  # [seq, done]

    @property
    def seq(self) -> Any:
        """The highest seq all of whose predecessors are done (the start seq when none)."""
        return self._seq

    def __len__(self) -> int:
        """Entries not yet passed by the watermark (done or not)."""
        return len(self._entries)

    def add(self, seq: Any) -> int:
        """Register a change in feed order; returns the token to complete it with."""
        self._entries.append([seq, False])
        return self._base + len(self._entries) - 1

    def complete(self, token: int) -> int:
        """Mark a change done; returns how many entries the watermark passed as a result."""
        index = token - self._base
        if index < 0 or index >= len(self._entries):
            raise ValueError(f"unknown or already passed token {token}")
        self._entries[index][1] = True
        passed = 0
        while self._entries and self._entries[0][1]:
            seq, _ = self._entries.popleft()
            self._base += 1
            passed += 1
            if seq is not None:  # a row's seq may be null under seq_interval; keep the last known
                self._seq = seq
        return passed


class CheckpointStore:
    """The checkpoint as a doc in the worker's own database (never replicated to phones).

    A regular doc, not a `_local` one: on a clustered CouchDB `_local` docs are neither checked
    against `_rev` nor copied between a database's copies, so a holder reading through another
    node could find an old one — or none, and start from the end of the feed, skipping changes.
    A regular doc is read from a quorum, fenced by `_rev` and by the lease generation it carries,
    and conflicting revisions are settled to the newest generation's. Its writes ask a quorum but
    a checkpoint stored on fewer copies is kept as it is: it is a hint that may rewind, and a
    rewind only processes changes again, which the ledger makes harmless (a sent message's entry
    re-projects its outcome; nothing is sent twice). Before this, the checkpoint was a `_local`
    doc of the same id: it is read once when the regular doc does not exist yet.
    """

    def __init__(self, db: Database, doc_id: str = CHECKPOINT_ID, instance: str | None = None) -> None:
        self._db = db
        self._doc_id = doc_id
        self._instance = instance
        self._rev: str | None = None
        self.saved_seq: Any = None
        self.saved_at: float | None = None  # time.time() of the last load or save (for metrics)
        # The lease generation (worker/lease/keeper.py) of the session writing; None: no fencing. Every
        # write carries it, and a write that finds a newer generation in place is refused.
        self.generation: int | None = None
        self._checked_at: float | None = None  # time.monotonic() of the last read from a quorum

    async def load(self) -> Any:
        doc = await self._current()
        if doc is None:
            doc = await self._db.get_local(self._doc_id)  # written by an older version
            self._rev = None
        if doc is None:
            return None
        self.saved_seq = doc.get("seq")
        self.saved_at = time.time()
        return self.saved_seq

    async def save(self, seq: Any) -> None:
        doc: dict[str, Any] = {"_id": self._doc_id, "type": "checkpoint", "seq": seq,
                               "writer": {"instance": self._instance, "nonce": uuid.uuid4().hex}}
        if self.generation is not None:
            doc["generation"] = self.generation
        await self.settle_if_due()  # conflicting revisions settled, and the fence checked
        for _ in range(3):
            if self._rev:
                doc["_rev"] = self._rev
            else:
                doc.pop("_rev", None)
            try:
                self._rev = await self._db.write(doc)
                break
            except Accepted as exc:
                self._rev = exc.rev  # stored somewhere: a hint all the same (see the class doc)
                break
            except Conflict:
                # Our rev was stale (a new holder, another process, a restore): the current
                # checkpoint decides, unless a newer generation owns it.
                current = await self._current()
                self._fence(current)
                self._rev = current.get("_rev") if current else None
        else:
            raise Conflict(f"the checkpoint {self._doc_id} kept conflicting")
        self.saved_seq = seq
        self.saved_at = time.time()

    async def settle_if_due(self) -> None:
        """Look for conflicting revisions (see CONFLICT_CHECK_S) even when nothing is saved."""
        if self._checked_at is None or time.monotonic() - self._checked_at >= CONFLICT_CHECK_S:
            await self._current()

    async def _current(self) -> dict[str, Any] | None:
        """The checkpoint doc, read from a quorum; conflicting revisions (a cluster) settled to the
        newest generation's, the others deleted."""
        leaves = await self._db.leaves(self._doc_id)
        self._checked_at = time.monotonic()
        if not leaves:
            return None
        best = max(leaves, key=lambda leaf: (_generation(leaf) or -1, str(leaf.get("_rev"))))
        losers = [{"_id": leaf["_id"], "_rev": leaf["_rev"], "_deleted": True} for leaf in leaves
                  if leaf is not best]
        if losers:
            try:
                await self._db.bulk_docs(losers, quorum=True)
            except CouchError as exc:  # settled again at the next look: the newest leaf still wins
                log.warning("checkpoint_conflicts_not_settled", losers=len(losers),
                            error=f"{type(exc).__name__}: {exc}")
        self._fence(best)
        self._rev = best.get("_rev")
        return best

    def _fence(self, current: dict[str, Any] | None) -> None:
        theirs = _generation(current) if current else None
        if self.generation is not None and theirs is not None and theirs > self.generation:
            raise CheckpointFenced(f"the checkpoint belongs to lease generation {theirs}, "
                                   f"this worker's session is {self.generation}")


def _generation(doc: dict[str, Any]) -> int | None:
    value = doc.get("generation")
    return value if isinstance(value, int) and not isinstance(value, bool) else None

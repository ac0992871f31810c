"""Where the feed may resume from: a watermark over opaque seqs, and its durable `_local` doc.

Seqs are opaque (CouchDB 3 sends strings that must not be compared), so the watermark orders
changes by the order the feed delivered them. The checkpoint is the seq of the last change that,
with every change before it, is done: a change still in flight (or retrying) holds it back, so
nothing is skipped when the worker stops, however it stops.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from worker.couch.client import Conflict, CouchError, Database

CHECKPOINT_ID = "cht-rapidpro-worker-checkpoint"


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
    """The checkpoint as a `_local` doc in the worker's own database (never replicated)."""

    def __init__(self, db: Database, doc_id: str = CHECKPOINT_ID) -> None:
        self._db = db
        self._doc_id = doc_id
        self._rev: str | None = None
        self.saved_seq: Any = None
        self.saved_at: float | None = None  # time.time() of the last load or save (for metrics)
        # The lease generation (worker/lease/keeper.py) of the session writing; None: no fencing. Every
        # write carries it, and a write that finds a newer generation in place is refused.
        self.generation: int | None = None

    async def load(self) -> Any:
        doc = await self._db.get_local(self._doc_id)
        if doc is None:
            return None
        self._rev = doc.get("_rev")
        self.saved_seq = doc.get("seq")
        self.saved_at = time.time()
        return self.saved_seq

    async def save(self, seq: Any) -> None:
        if self.generation is not None:
            # Apache CouchDB does not check `_rev` on `_local` docs (a stale one overwrites), so
            # the fence reads first. The window between read and write is small, and a late
            # write that slips through still names only changes its writer had finished.
            self._fence(await self._db.get_local(self._doc_id))
        try:
            self._rev = await self._db.put_local(self._doc_id, self._doc(seq))
        except Conflict:
            # Our rev was stale (another process, or a restore): take the current one and overwrite,
            # since the checkpoint is ours alone.
            current = await self._db.get_local(self._doc_id)
            self._fence(current)
            self._rev = current.get("_rev") if current else None
            self._rev = await self._db.put_local(self._doc_id, self._doc(seq))
        self.saved_seq = seq
        self.saved_at = time.time()

    def _fence(self, current: dict[str, Any] | None) -> None:
        theirs = current.get("generation") if current else None
        if (self.generation is not None and isinstance(theirs, int)
                and not isinstance(theirs, bool) and theirs > self.generation):
            raise CheckpointFenced(f"the checkpoint belongs to lease generation {theirs}, "
                                   f"this worker's session is {self.generation}")

    def _doc(self, seq: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"seq": seq}
        if self.generation is not None:
            doc["generation"] = self.generation
        if self._rev:
            doc["_rev"] = self._rev
        return doc

"""Changes that kept failing, parked in the worker's db with their error for operators."""

from __future__ import annotations

import time
from typing import Any

from transitions.timestamps import cht_time
from worker.couch.client import Conflict, Database
from worker.feed.changes import Change

PARKED_PREFIX = "parked:"


class ParkedChanges:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def park(self, change: Change, error: BaseException, attempts: int) -> None:
        """Record (or refresh) the parked entry of a doc; retried on a conflict."""
        doc_id = PARKED_PREFIX + change.doc_id
        for _ in range(5):
            existing = await self._db.get_or_none(doc_id)
            doc: dict[str, Any] = {
                "_id": doc_id,
                "type": "parked_change",
                "doc_id": change.doc_id,
                "doc_rev": change.rev,
                "seq": change.seq,
                "error": f"{type(error).__name__}: {error}"[:2000],
                "attempts": attempts,
                "parked_at": cht_time(time.time()),
                "times_parked": (existing or {}).get("times_parked", 0) + 1,
            }
            if existing is not None:
                doc["_rev"] = existing["_rev"]
            try:
                await self._db.put(doc)
                return
            except Conflict:
                continue
        raise Conflict(f"could not park {change.doc_id}: repeated conflicts")

    async def list(self, limit: int = 1000) -> list[dict[str, Any]]:
        result = await self._db.all_docs(start_key=PARKED_PREFIX, end_key=PARKED_PREFIX + "\ufff0",
                                         include_docs=True, limit=limit)
        return [row["doc"] for row in result.get("rows", []) if row.get("doc")]

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        return await self._db.get_or_none(PARKED_PREFIX + doc_id)

    async def drop(self, doc_id: str) -> bool:
        """Delete the parked entry of a doc; False when there was none."""
        for _ in range(5):
            existing = await self._db.get_or_none(PARKED_PREFIX + doc_id)
            if existing is None:
                return False
            try:
                await self._db.delete(existing["_id"], existing["_rev"])
                return True
            except Conflict:
                continue
        raise Conflict(f"could not drop the parked entry of {doc_id}: repeated conflicts")

    async def count(self) -> int:
        result = await self._db.all_docs(start_key=PARKED_PREFIX, end_key=PARKED_PREFIX + "\ufff0")
        return len(result.get("rows", []))

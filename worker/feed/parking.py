"""Changes that kept failing, parked in the worker's db with their error for operators."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from transitions.cht.timestamps import cht_time
from worker.couch.client import Conflict, Database
from worker.feed.changes import Change
from worker.feed.dispatcher import Dispatcher
from worker.logs import get_logger

log = get_logger(__name__)

PARKED_PREFIX = "parked:"
Process = Callable[[Change], Awaitable[None]]


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


class NotRunning(Exception):
    """No feed runs in this process now (starting, or a standby): nothing can be retried here."""


class ParkedRetries:
    """An operator's retry of parked changes: each doc goes to the dispatcher again (not a feed
    position, so the checkpoint ignores it, as the sweep's), and its parked entry is dropped once
    it succeeds (a failure parks it again, with the new error)."""

    def __init__(self, parked: ParkedChanges, medic: Database,
                 dispatcher: Callable[[], Dispatcher | None]) -> None:
        self._parked = parked
        self._medic = medic
        self._dispatcher = dispatcher
        self._retrying: set[str] = set()

    async def retry(self, doc_ids: list[str] | None) -> dict[str, list[str]]:
        """`doc_ids`, or every parked doc for None: which are retrying, not parked, or gone."""
        dispatcher = self._dispatcher()
        if dispatcher is None:
            raise NotRunning("the worker is still starting")
        if doc_ids is None:
            doc_ids = [str(doc["doc_id"]) for doc in await self._parked.list() if doc.get("doc_id")]
        result: dict[str, list[str]] = {"retrying": [], "not_parked": [], "gone": []}
        for doc_id in doc_ids:
            if await self._parked.get(doc_id) is None:
                result["not_parked"].append(doc_id)
                continue
            doc = await self._medic.get_or_none(doc_id)
            if doc is None or doc.get("_deleted"):
                await self._parked.drop(doc_id)  # nothing left to process
                result["gone"].append(doc_id)
                continue
            self._retrying.add(doc_id)
            await dispatcher.submit(Change(seq=None, doc_id=doc_id, doc=doc))
            result["retrying"].append(doc_id)
        return result

    def wrap(self, process: Process) -> Process:
        """The dispatcher's process step, dropping the parked entry once a retried doc succeeds."""
        async def processed(change: Change) -> None:
            await process(change)
            if change.doc_id in self._retrying:
                self._retrying.discard(change.doc_id)
                await self._parked.drop(change.doc_id)
                log.info("parked_change_retried", doc_id=change.doc_id)
        return processed

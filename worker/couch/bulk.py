"""Group commit: single-doc writes to one database sent together as `_bulk_docs`.

Apache CouchDB 3 makes every write request durable before it answers, and a `_bulk_docs` of
many docs costs about what one PUT costs. So writes that arrive while earlier ones are in flight
wait for the next batch and share its request; an idle writer sends a write at once (nothing
waits for a batch to fill). Each doc keeps the meaning of a PUT: no `_rev` is create-only (the
doc existing answers `conflict` for that doc alone), a `_rev` must be the current one; a doc's
result is its own, so one conflict does not fail its neighbours. A doc id is never in two
requests at once (a later write of it waits for the earlier one's answer), so two writes of one
doc are decided in the order they were asked for.

Requests go through aiohttp (no thread, and a deadline really ends them). A write whose caller
stops waiting (cancelled, timed out) may still land, exactly as a PUT whose answer never came.
With `quorum`, each request asks a quorum of copies (a clustered CouchDB) and a doc stored on
fewer raises `Accepted` for its writer alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from worker.couch.client import (
    Accepted,
    BadRequest,
    Conflict,
    CouchError,
    Database,
    NotFound,
    Unauthorized,
)
from worker.logs import get_logger

log = get_logger(__name__)

_ERRORS: dict[str, type[CouchError]] = {
    "conflict": Conflict, "forbidden": Unauthorized, "unauthorized": Unauthorized, "not_found": NotFound,
}


class BulkWriter:
    def __init__(self, db: Database, *, batch_max: int = 100, max_in_flight: int = 2,
                 quorum: bool = False) -> None:
        self._db = db
        self._quorum = quorum
        self._batch_max = batch_max
        self._max_in_flight = max_in_flight
        self._queue: deque[tuple[dict[str, Any], asyncio.Future[str]]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # doc ids in a request under way

    async def put(self, doc: dict[str, Any]) -> str:
        """Write `doc` as a PUT would; returns the new rev. Raises Conflict (stale `_rev`, or the
        doc exists for a create), CouchUnavailable, or another CouchError."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((doc, future))
        self._start_batches()
        return await future

    def _start_batches(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            batch: list[tuple[dict[str, Any], asyncio.Future[str]]] = []
            later: list[tuple[dict[str, Any], asyncio.Future[str]]] = []
            ids: set[str] = set()
            while self._queue and len(batch) < self._batch_max:
                item = self._queue.popleft()
                if item[1].done():
                    continue  # its caller gave up before it was sent: nothing to write
                if item[0]["_id"] in ids or item[0]["_id"] in self._busy:
                    later.append(item)
                else:
                    ids.add(item[0]["_id"])
                    batch.append(item)
            self._queue.extendleft(reversed(later))
            if not batch:
                return
            self._busy |= ids
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch, ids))
            self._tasks.add(task)  # a reference, or the loop may drop a running task
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._start_batches()

    async def _run(self, batch: list[tuple[dict[str, Any], asyncio.Future[str]]], ids: set[str]) -> None:
        try:
            await self._write(batch)
        finally:
            self._busy -= ids

    async def _write(self, batch: list[tuple[dict[str, Any], asyncio.Future[str]]]) -> None:
        try:
            results = await self._db.bulk_docs([doc for doc, _ in batch], quorum=self._quorum)
        except Exception as exc:  # the whole request failed: every write in it did
            if not isinstance(exc, CouchError):
                log.error("bulk_write_bug", db=self._db.name, error=f"{type(exc).__name__}: {exc}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (doc, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            error = result.get("error") if isinstance(result, dict) else "invalid"
            if error is None and isinstance(result.get("rev"), str):
                if self._quorum and result.get("accepted"):
                    future.set_exception(Accepted(f"{doc['_id']}: stored on fewer copies than a quorum",
                                                  result["rev"]))
                else:
                    future.set_result(result["rev"])
                continue
            reason = f"{error}: {result.get('reason', '')}" if isinstance(result, dict) else str(result)
            kind = _ERRORS.get(str(error), BadRequest)
            future.set_exception(kind(f"{doc['_id']}: {reason}", 409 if kind is Conflict else None))

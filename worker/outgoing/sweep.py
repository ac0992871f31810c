"""The pending sweep: finds every sendable message through CHT's `medic/messages_by_state` view.

The feed finds messages as docs change; the sweep finds those that became pending while the
worker was stopped or not in charge. It runs at start, when the outgoing service is switched to
the worker, and periodically as a safety net. Docs go through the dispatcher like feed changes,
so a doc is never processed twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from worker.couch.client import CouchError, Database
from worker.feed.changes import Change
from worker.logs import get_logger

log = get_logger(__name__)

VIEW_KEY = "pending-or-forwarded"
PAGE_SIZE = 500


async def pending_doc_pages(medic: Database, page_size: int = PAGE_SIZE) -> AsyncIterator[list[str]]:
    """Ids of docs holding a pending or forwarded-to-gateway message, a page at a time, paged by
    key (`start_key`/`start_key_doc_id`, never `skip`): a national backlog is never held whole.
    A page starts at the last row of the one before; the rows of that (key, doc) already read
    come first again and are passed over (only those: never an offset into the view). A doc may
    be named on two pages."""
    start_key: Any = [VIEW_KEY]
    start_doc_id: str | None = None
    seen = 0  # rows at (start_key, start_doc_id) already read
    while True:
        limit = page_size + seen
        params: dict[str, Any] = {"start_key": start_key, "end_key": [VIEW_KEY, {}], "limit": limit,
                                  "reduce": False}
        if start_doc_id is not None:
            params["start_key_doc_id"] = start_doc_id
        raw = (await medic.view("medic", "messages_by_state", **params)).get("rows", [])
        rows = raw[seen:]
        if rows:
            yield list(dict.fromkeys(row["id"] for row in rows))
        if len(raw) < limit or not rows:
            return
        last = (rows[-1]["key"], rows[-1]["id"])
        same = 0
        for row in reversed(rows):
            if (row["key"], row["id"]) != last:
                break
            same += 1
        seen = same + (seen if last == (start_key, start_doc_id) else 0)
        start_key, start_doc_id = last


class PendingSweep:
    def __init__(self, medic: Database, submit: Callable[[Change], Awaitable[None]],
                 in_charge: Callable[[], Awaitable[bool]], page_size: int = PAGE_SIZE) -> None:
        self._medic = medic
        self._page_size = page_size
        self._submit = submit
        self._in_charge = in_charge
        self._wake = asyncio.Event()
        self.last_count: int | None = None

    def trigger(self) -> None:
        self._wake.set()

    async def run_once(self) -> int:
        if not await self._in_charge():
            return 0
        count = 0
        previous: set[str] = set()  # the last page's docs: a doc spanning two pages is taken once
        async for doc_ids in pending_doc_pages(self._medic, self._page_size):
            fresh = [doc_id for doc_id in doc_ids if doc_id not in previous]
            previous = set(doc_ids)
            count += len(fresh)
            for start in range(0, len(fresh), 100):
                batch = fresh[start:start + 100]
                rows = (await self._medic.all_docs(keys=batch, include_docs=True)).get("rows", [])
                for row in rows:
                    doc = row.get("doc")
                    if isinstance(doc, dict):
                        # seq None: the sweep has no place in the feed, so the checkpoint ignores it
                        await self._submit(Change(seq=None, doc_id=doc["_id"], doc=doc))
        self.last_count = count
        log.info("sweep_done", docs=count)
        return count

    async def run(self, interval: float) -> None:
        self._wake.set()  # once at start
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and shutdown would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.run_once()
            except CouchError as exc:
                log.warning("sweep_failed", error=str(exc))
            except Exception as exc:  # a bug or a doc we did not foresee: log it, keep the daemon up
                log.error("sweep_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=True)

"""Reading what CHT shows as tracked, at start and on a rescan: CHT's view
`medic-sms/gateway_messages_by_state` page by page, paged by key (`start_key_doc_id`, never
`skip`: its cost grows with the offset, so a skip-paged read of 10⁵ rows costs far more than the
rows), fresher states first (transitions/status/feed.py). Each page is made trackable from the
ledger's compact `tracking` view where the ledger can vouch for a message, from CHT's docs where
it cannot, and handed over before the next is read: the first rounds run while the rest loads.
After the load, the `_changes` feed keeps the schedule current (worker/status/tracker.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from transitions.status.feed import LOAD_ORDER, PageStart, Row, ledger_candidate, next_start, view_rows
from transitions.status.rules import Candidate
from worker.couch.client import Database, NotFound
from worker.outgoing.ledger import Ledger
from worker.status.book import candidates
from worker.status.round import StatusStats

VIEW_DDOC, VIEW_NAME = "medic-sms", "gateway_messages_by_state"
PAGE_SIZE = 5000  # rows a page: ~0.7 MB of JSON, parsed in some 20 ms between two awaits


class ViewLoader:
    """One pass over the view; resumable after an error from where it stopped."""

    def __init__(self, medic: Database, ledger: Ledger | None, page_size: int = PAGE_SIZE,
                 stats: StatusStats | None = None) -> None:
        self._medic = medic
        self._stats = stats
        self._ledger = ledger
        self._page_size = page_size
        self._key = 0  # index into LOAD_ORDER
        self._start = PageStart()
        self._following: tuple[int, PageStart] | None = None
        self.pages = 0
        self.rows = 0
        self.done = False

    async def next_page(self) -> list[Row]:
        """The next page's rows ([] once done). The position moves on at `commit`, once the page
        is handed over: after an error the same page is read again."""
        self.commit()
        while self._key < len(LOAD_ORDER):
            key = LOAD_ORDER[self._key]
            params: dict[str, Any] = {"start_key": key, "end_key": key,
                                      "limit": self._page_size + self._start.seen}
            if self._start.doc_id is not None:
                params["start_key_doc_id"] = self._start.doc_id
            try:
                result = await self._medic.view(VIEW_DDOC, VIEW_NAME, **params)
            except NotFound:
                result = {}  # no CHT design doc (yet): nothing is tracked
            raw = result.get("rows", [])
            rows = view_rows(raw[self._start.seen:])  # that doc's rows already read come first
            self.pages += 1
            if self._stats is not None:
                self._stats.view_pages += 1
            if len(raw) < params["limit"]:
                following = (self._key + 1, PageStart())
            else:
                following = (self._key, next_start(self._start, rows))
            if rows:
                self._following = following
                return rows
            self._key, self._start = following
        self.done = True
        return []

    def commit(self) -> None:
        """The last page was handed over: the next one follows it."""
        if self._following is not None:
            self._key, self._start = self._following
            self._following = None

    async def facts(self, rows: list[Row]) -> tuple[list[Candidate], dict[str, dict[str, Any]]]:
        """The rows' messages as candidates, and the ledger's facts about them: from the ledger's
        `tracking` view where it can vouch for a message, else from CHT's doc."""
        facts: dict[str, dict[str, Any]] = {}
        if self._ledger is not None:
            facts = await self._ledger_facts(rows)
        ready: list[Candidate] = []
        unread: dict[str, str] = {}
        for row in rows:
            candidate = ledger_candidate(row, facts.get(row.uuid))
            if candidate is not None:
                ready.append(candidate)
            else:
                unread[row.uuid] = row.doc_id
        if unread:
            ready.extend((await candidates(self._medic, unread)).values())
            if self._ledger is not None:  # the whole entries of these (their recipient)
                facts.update(await self._ledger.get_many([u for u in unread if u in facts]))
        return ready, facts

    async def _ledger_facts(self, rows: list[Row]) -> dict[str, dict[str, Any]]:
        """One range of the ledger's `tracking` view over the page's docs (first to last, in the
        view's order; read up to twice the page: other states' messages sit in it too); what the
        range did not hold (another sender's, or left past a range too full), by key."""
        assert self._ledger is not None
        ranged = await self._ledger.tracking(rows[0].doc_id, rows[-1].doc_id, 2 * len(rows) + 50)
        if ranged is None:  # no such view yet: the entries themselves
            return await self._ledger.get_many([row.uuid for row in rows])
        facts, _complete = ranged
        rest = [(row.doc_id, row.uuid) for row in rows if row.uuid not in facts]
        facts.update(await self._ledger.tracking_of(rest))
        return facts


async def load_pages(loader: ViewLoader,
                     take: Callable[[list[Candidate], dict[str, dict[str, Any]], set[str]], Awaitable[None]],
                     watch: Callable[[], set[str]], unwatch: Callable[[set[str]], None]) -> None:
    """Every page to `take(candidates, facts, touched)`; `touched` holds what the feed said about
    those messages while the page was read (newer than the page: the feed's word wins)."""
    while not loader.done:
        touched = watch()
        try:
            rows = await loader.next_page()
            if not rows:
                continue
            found, facts = await loader.facts(rows)
            await take(found, facts, touched)
            loader.rows += len(rows)
            loader.commit()
        finally:
            unwatch(touched)

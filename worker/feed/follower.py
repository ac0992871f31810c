"""Follows medic's `_changes` feed: pages while behind, longpoll when caught up, for ever.

Any error (CouchDB down, 5xx, a cut connection) is logged and retried with jittered exponential
backoff, honouring Retry-After; the feed never gives up. 401/403 are configuration errors: logged
as such and retried slowly, because CouchDB 3.4 locks an account after 5 failed logins.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.backoff import Backoff
from worker.couch.client import ChangesPage, CouchError, Database, Unauthorized
from worker.feed.changes import Change
from worker.feed.dispatcher import Dispatcher
from worker.logs import get_logger

log = get_logger(__name__)

UNAUTHORIZED_RETRY_S = 120.0
# While behind, pages grow towards CHANGES_CATCHUP_BATCH_SIZE: each `_changes` request costs
# CouchDB a fixed amount, so small pages make a catch-up slower than reading. They grow at most
# twofold a page and stay near this much JSON, judged by the largest recent bytes per row, so a
# feed whose docs turn large does not bring a huge page into memory.
CATCHUP_PAGE_BYTES = 2 * 1024 * 1024
# A catch-up page that fails (e.g. too slow for COUCH_TIMEOUT on a slow CouchDB) halves the
# catch-up size; it doubles again after this many pages in a row succeed at the smaller size.
CATCHUP_REGROW_AFTER = 8


def row_bytes_estimate(previous: float, page: ChangesPage) -> float:
    """Bytes per row to plan the next page by (pure): this page's, or more while the recent
    pages' larger figure fades (halving each page), so one page of small docs does not
    invite a page of large ones."""
    if not page.size or not page.results:
        return previous
    return max(page.size / len(page.results), previous / 2)


def next_page_limit(batch_size: int, catchup_batch_size: int, page: ChangesPage, caught_up: bool,
                    row_bytes: float = 0.0) -> int:
    """How many changes to ask for after `page` (pure): `batch_size` when caught up; while
    behind, up to twice this page's rows, `catchup_batch_size` at most, and about
    CATCHUP_PAGE_BYTES at `row_bytes` per row."""
    if caught_up or catchup_batch_size <= batch_size:
        return batch_size
    limit = min(catchup_batch_size, 2 * max(len(page.results), batch_size))
    if row_bytes > 0:
        limit = min(limit, int(CATCHUP_PAGE_BYTES / row_bytes))
    return max(batch_size, limit)


@dataclass
class FeedStatus:
    connected: bool = False
    since: Any = None  # the seq the next request asks from
    last_error: str | None = None
    last_page_at: float | None = None
    caught_up: bool = False


class ChangesFollower:
    def __init__(self, db: Database, dispatcher: Dispatcher, *, batch_size: int = 200,
                 catchup_batch_size: int | None = None, longpoll_timeout_ms: int = 25_000,
                 retry_cap: float = 60.0, observe: Callable[[Change], None] | None = None) -> None:
        """`observe`: sees every change as it is read, before the dispatcher skips any (status
        tracking follows which messages are tracked through it, the worker's own writes too)."""
        self._db = db
        self._observe = observe
        self._dispatcher = dispatcher
        self._batch_size = batch_size
        self._catchup_batch_size = catchup_batch_size or batch_size
        self._catchup_cap = self._catchup_batch_size  # lowered by failed catch-up pages
        self._catchup_ok = 0  # catch-up pages in a row that succeeded below the configured size
        self._ahead_limit = 0
        self._row_bytes = 0.0
        self._longpoll_timeout_ms = longpoll_timeout_ms
        self._backoff = Backoff(base=0.5, cap=retry_cap)
        self.status = FeedStatus()
        self._ahead: asyncio.Task[ChangesPage] | None = None  # the next page, read while behind

    async def run(self, since: Any) -> None:
        self.status.since = since
        log.info("feed_started", since=since)
        try:
            await self._follow()
        finally:
            if self._ahead is not None:
                # The page read ahead is abandoned: its result (or failure) no longer matters, and
                # the cancellation itself must not escape the follower's own ending.
                self._ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._ahead
                self._ahead = None

    async def _follow(self) -> None:
        while True:
            try:
                if self._ahead is not None:
                    ahead, self._ahead = self._ahead, None
                    page = await ahead  # a failure is handled below like any page's
                else:
                    page = await self._db.changes(
                        self.status.since, limit=self._batch_size, include_docs=True,
                        longpoll=self.status.caught_up, timeout_ms=self._longpoll_timeout_ms)
            except asyncio.CancelledError:
                raise
            except Unauthorized as exc:
                self._disconnected(str(exc))
                log.error("feed_unauthorized", error=str(exc),
                          hint="check the user and password in COUCH_URL; retrying slowly",
                          retry_in_s=UNAUTHORIZED_RETRY_S)
                await asyncio.sleep(UNAUTHORIZED_RETRY_S)
                continue
            except CouchError as exc:
                self._disconnected(str(exc))
                delay = self._backoff.next_delay(getattr(exc, "retry_after", None))
                event: dict[str, Any] = {}
                if self._ahead_limit > self._batch_size:
                    # A large page failed: the next ones are smaller, in case it was its size.
                    self._catchup_cap = max(self._batch_size, self._ahead_limit // 2)
                    self._catchup_ok = 0
                    event["catchup_limit"] = self._catchup_cap
                self._ahead_limit = 0
                log.warning("feed_error", error=str(exc), retry_in_s=round(delay, 2), **event)
                await asyncio.sleep(delay)
                continue

            if not self.status.connected:
                log.info("feed_connected", since=self.status.since)
            self.status.connected = True
            self.status.last_error = None
            self.status.last_page_at = time.time()
            self._backoff.reset()
            if self._ahead_limit and self._catchup_cap < self._catchup_batch_size:
                self._catchup_ok += 1
                if self._catchup_ok >= CATCHUP_REGROW_AFTER:
                    self._catchup_cap = min(self._catchup_batch_size, self._catchup_cap * 2)
                    self._catchup_ok = 0
            self._ahead_limit = 0

            # Caught up when CouchDB says nothing is pending, or (servers without `pending`)
            # when the page came back short.
            caught_up = (page.pending == 0 if page.pending is not None
                         else len(page.results) < self._batch_size)
            if not caught_up and page.last_seq is not None:
                # Behind: the next page, larger, is read while this one is handed over (two pages
                # in memory at most), so catching up costs about what reading costs.
                self._row_bytes = row_bytes_estimate(self._row_bytes, page)
                limit = next_page_limit(self._batch_size, self._catchup_cap, page, caught_up, self._row_bytes)
                self._ahead_limit = limit
                self._ahead = asyncio.create_task(self._db.changes(
                    page.last_seq, limit=limit, include_docs=True), name="feed-ahead")
                await asyncio.sleep(0)  # let the request go out before the handover, which may not yield
            for row in page.results:
                change = Change.from_row(row)
                if change is None:
                    log.warning("feed_row_malformed", row=str(row)[:200])
                    continue
                if self._observe is not None:
                    self._observe(change)
                await self._dispatcher.submit(change)
            if page.last_seq is not None:
                await self._dispatcher.mark(page.last_seq)
                self.status.since = page.last_seq
            self.status.caught_up = caught_up

    def _disconnected(self, error: str) -> None:
        if self.status.connected:
            log.warning("feed_disconnected", error=error)
        self.status.connected = False
        self.status.last_error = error
        self.status.caught_up = False

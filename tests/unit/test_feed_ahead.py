"""The feed reads its next page while it hands over the current one, only while behind."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from worker.couch import ChangesPage, CouchUnavailable
from worker.feed import CATCHUP_PAGE_BYTES, ChangesFollower, next_page_limit


class Pages:
    """A `_changes` stand-in: 3 pages of 2 rows behind, then nothing new (longpoll)."""

    def __init__(self, fail_once_at: int | None = None) -> None:
        self.calls: list[tuple[Any, bool]] = []
        self.fail_once_at = fail_once_at
        self.quiet = asyncio.Event()

    async def changes(self, since: Any, *, limit: int, include_docs: bool = True, longpoll: bool = False,
                      timeout_ms: int = 25_000) -> ChangesPage:
        self.calls.append((since, longpoll))
        start = 0 if since == "0" else int(since)
        if self.fail_once_at == start:
            self.fail_once_at = None
            raise CouchUnavailable("cut")
        if start >= 6:
            self.quiet.set()
            await asyncio.Event().wait()  # a longpoll with nothing new
        rows = [{"seq": str(n), "id": f"d{n}", "doc": {"_id": f"d{n}", "_rev": "1-a"}}
                for n in range(start + 1, start + 3)]
        return ChangesPage(results=rows, last_seq=str(start + 2), pending=6 - start - 2)


class Handover:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.submitted: list[str] = []
        self.requests_seen_at_submit: list[int] = []
        self.marked: list[Any] = []

    async def submit(self, change: Any) -> None:
        self.requests_seen_at_submit.append(len(self.pages.calls))
        self.submitted.append(change.doc_id)
        await asyncio.sleep(0)

    async def mark(self, seq: Any) -> None:
        self.marked.append(seq)


async def follow(pages: Pages) -> tuple[ChangesFollower, Handover]:
    handover = Handover(pages)
    follower = ChangesFollower(pages, handover, batch_size=2, retry_cap=0.01)  # type: ignore[arg-type]
    task = asyncio.create_task(follower.run("0"))
    await asyncio.wait_for(pages.quiet.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return follower, handover


async def test_behind_the_next_page_is_asked_for_before_this_one_is_handed_over():
    pages = Pages()
    follower, handover = await follow(pages)
    assert handover.submitted == [f"d{n}" for n in range(1, 7)]
    assert handover.marked == ["2", "4", "6"]
    # d1 is handed over after the request for page 2 went out; the last page (pending 0) asks
    # for nothing ahead: the next request is a longpoll from its end.
    assert handover.requests_seen_at_submit[0] == 2
    assert pages.calls == [("0", False), ("2", False), ("4", False), ("6", True)]
    assert follower.status.since == "6"


async def test_a_failed_read_ahead_is_retried_from_where_the_feed_is():
    pages = Pages(fail_once_at=2)
    _, handover = await follow(pages)
    assert handover.submitted == [f"d{n}" for n in range(1, 7)]
    assert pages.calls[:3] == [("0", False), ("2", False), ("2", False)]


class LimitPages:
    """A `_changes` stand-in 10 pages behind that records the limit of each request."""

    def __init__(self, row_bytes: int) -> None:
        self.limits: list[int] = []
        self.calls = self.limits  # what Handover counts
        self.row_bytes = row_bytes
        self.quiet = asyncio.Event()

    async def changes(self, since: Any, *, limit: int, include_docs: bool = True, longpoll: bool = False,
                      timeout_ms: int = 25_000) -> ChangesPage:
        self.limits.append(limit)
        start = 0 if since == "0" else int(since)
        remaining = 10_000 - start
        if remaining <= 0:
            self.quiet.set()
            await asyncio.Event().wait()
        count = min(limit, remaining)
        rows = [{"seq": str(n), "id": f"d{n}", "doc": {"_id": f"d{n}", "_rev": "1-a"}}
                for n in range(start + 1, start + count + 1)]
        return ChangesPage(results=rows, last_seq=str(start + count), pending=remaining - count,
                           size=count * self.row_bytes)


async def follow_limits(pages: LimitPages, batch_size: int, catchup: int) -> list[int]:
    handover = Handover(pages)  # type: ignore[arg-type]
    follower = ChangesFollower(pages, handover, batch_size=batch_size,  # type: ignore[arg-type]
                               catchup_batch_size=catchup, retry_cap=0.01)
    task = asyncio.create_task(follower.run("0"))
    await asyncio.wait_for(pages.quiet.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(handover.submitted) == 10_000
    return pages.limits


async def test_behind_pages_grow_to_the_catchup_size_and_shrink_when_caught_up():
    limits = await follow_limits(LimitPages(row_bytes=700), batch_size=200, catchup=2000)
    # The first page at the normal size, then catch-up pages, then a longpoll at the normal size.
    assert limits == [200, 2000, 2000, 2000, 2000, 2000, 200]  # the last page holds 1,800


async def test_large_docs_keep_catchup_pages_within_their_byte_budget():
    row_bytes = 16 * 1024
    limits = await follow_limits(LimitPages(row_bytes=row_bytes), batch_size=100, catchup=2000)
    expected = CATCHUP_PAGE_BYTES // row_bytes  # 256 rows of 16 KB
    assert limits[0] == 100 and limits[-1] == 100
    assert set(limits[1:-1]) == {expected}


def test_the_next_page_limit_rule():
    page = ChangesPage(results=[{}] * 100, last_seq="x", pending=10, size=100 * 1000)
    assert next_page_limit(200, 2000, page, caught_up=True) == 200
    assert next_page_limit(200, 2000, page, caught_up=False) == 2000
    assert next_page_limit(200, 100, page, caught_up=False) == 200  # catch-up below the batch: off
    huge = ChangesPage(results=[{}] * 10, last_seq="x", pending=10, size=10 * CATCHUP_PAGE_BYTES)
    assert next_page_limit(200, 2000, huge, caught_up=False) == 200  # never below the batch size
    unknown = ChangesPage(results=[], last_seq="x", pending=10)
    assert next_page_limit(200, 2000, unknown, caught_up=False) == 2000


class TooLargeFails(LimitPages):
    """Any request for more than `max_ok` changes fails, as one too slow for COUCH_TIMEOUT would."""

    def __init__(self, max_ok: int) -> None:
        super().__init__(row_bytes=700)
        self.max_ok = max_ok
        self.failed: list[int] = []

    async def changes(self, since: Any, *, limit: int, include_docs: bool = True, longpoll: bool = False,
                      timeout_ms: int = 25_000) -> ChangesPage:
        if limit > self.max_ok:
            self.failed.append(limit)
            raise CouchUnavailable("TimeoutError")
        return await super().changes(since, limit=limit, include_docs=include_docs, longpoll=longpoll,
                                     timeout_ms=timeout_ms)


async def test_catchup_pages_that_fail_shrink_and_every_change_still_arrives_once():
    pages = TooLargeFails(max_ok=500)
    await follow_limits(pages, batch_size=200, catchup=2000)  # asserts all 10,000 handed over
    assert pages.failed[:2] == [2000, 1000]  # halved after each failure
    served = [limit for limit in pages.limits if limit <= 500]
    assert served.count(500) > len(pages.failed)  # most of the catch-up ran at the size that works
    # Growing back is tried only after a run of successes: few failures for 10,000 changes.
    assert len(pages.failed) <= 2 + 10_000 // (500 * 8) + 1

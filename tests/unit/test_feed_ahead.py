"""The feed reads its next page while it hands over the current one, only while behind."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from worker.couch.client import ChangesPage, CouchUnavailable
from worker.feed.follower import (
    CATCHUP_PAGE_BYTES,
    CATCHUP_REGROW_AFTER,
    ChangesFollower,
    next_page_limit,
    row_bytes_estimate,
)


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


async def follow(pages: Pages, batch_size: int = 2,
                 catchup: int | None = None) -> tuple[ChangesFollower, Handover]:
    handover = Handover(pages)
    follower = ChangesFollower(pages, handover, batch_size=batch_size,  # type: ignore[arg-type]
                               catchup_batch_size=catchup, retry_cap=0.01)
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
    _, handover = await follow(pages, batch_size, catchup)  # type: ignore[arg-type]
    assert len(handover.submitted) == 10_000
    return pages.limits


async def test_behind_pages_grow_to_the_catchup_size_and_shrink_when_caught_up():
    limits = await follow_limits(LimitPages(row_bytes=700), batch_size=200, catchup=2000)
    # The first page at the normal size, then growing twofold to the catch-up size, then a
    # longpoll at the normal size once caught up.
    assert limits[:5] == [200, 400, 800, 1600, 2000]
    assert set(limits[5:-1]) == {2000} and limits[-1] == 200


async def test_large_docs_keep_catchup_pages_within_their_byte_budget():
    row_bytes = 16 * 1024
    limits = await follow_limits(LimitPages(row_bytes=row_bytes), batch_size=100, catchup=2000)
    expected = CATCHUP_PAGE_BYTES // row_bytes  # 128 rows of 16 KB
    assert limits[0] == 100 and limits[-1] == 100
    assert set(limits[1:-1]) == {expected}


class GrowingDocs(LimitPages):
    """Small docs for the first 1,000 changes, then docs of 64 KB."""

    async def changes(self, since: Any, *, limit: int, include_docs: bool = True, longpoll: bool = False,
                      timeout_ms: int = 25_000) -> ChangesPage:
        page = await super().changes(since, limit=limit, include_docs=include_docs, longpoll=longpoll,
                                     timeout_ms=timeout_ms)
        first = int(page.results[0]["seq"]) if page.results else 0
        size = sum(300 if first + i <= 1000 else 64 * 1024 for i in range(len(page.results)))
        return ChangesPage(results=page.results, last_seq=page.last_seq, pending=page.pending, size=size)


async def test_a_page_is_never_more_than_twice_the_last_one_when_docs_turn_large():
    pages = GrowingDocs(row_bytes=0)
    limits = await follow_limits(pages, batch_size=100, catchup=2000)
    assert all(later <= 2 * max(earlier, 100) for earlier, later in itertools.pairwise(limits))
    assert max(limits) > 100  # it did grow over the small docs
    # Once the large docs came (32 of them make the byte budget), pages fall to the batch size.
    assert set(limits[-20:]) == {100}


def test_the_next_page_limit_rule():
    page = ChangesPage(results=[{}] * 100, last_seq="x", pending=10, size=100 * 1000)
    assert next_page_limit(200, 2000, page, caught_up=True) == 200
    assert next_page_limit(200, 2000, page, caught_up=False) == 400  # twice the batch at most
    full = ChangesPage(results=[{}] * 1500, last_seq="x", pending=10, size=1500 * 100)
    assert next_page_limit(200, 2000, full, caught_up=False) == 2000
    assert next_page_limit(200, 100, page, caught_up=False) == 200  # catch-up below the batch: off
    assert next_page_limit(200, 2000, full, caught_up=False, row_bytes=10 * CATCHUP_PAGE_BYTES) == 200
    assert next_page_limit(200, 2000, full, caught_up=False, row_bytes=CATCHUP_PAGE_BYTES / 500) == 500


def test_the_bytes_per_row_estimate_fades_slowly():
    small = ChangesPage(results=[{}] * 100, last_seq="x", pending=10, size=100 * 300)
    large = ChangesPage(results=[{}] * 100, last_seq="x", pending=10, size=100 * 64_000)
    assert row_bytes_estimate(0.0, large) == 64_000
    assert row_bytes_estimate(64_000, small) == 32_000  # one page of small docs halves it only
    assert row_bytes_estimate(1_000, small) == 500
    assert row_bytes_estimate(700.0, ChangesPage(results=[], last_seq="x", pending=0)) == 700.0


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
    assert pages.failed[0] == 800  # 200, 400, then 800 is too large
    assert all(limit > 500 for limit in pages.failed)
    served = [limit for limit in pages.limits if limit <= 500]
    assert served.count(400) > 2 * len(pages.failed)  # most of it ran at the halved size
    # Growing back is tried only after a run of successes: few failures for 10,000 changes.
    assert len(pages.failed) <= 2 + 10_000 // (400 * CATCHUP_REGROW_AFTER)

"""The feed reads its next page while it hands over the current one, only while behind."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from worker.couch import ChangesPage, CouchUnavailable
from worker.feed import ChangesFollower


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

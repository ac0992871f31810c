"""The dispatcher's rules, with in-memory process/park functions (no server)."""

import asyncio

from worker.couch.client import CouchUnavailable
from worker.feed.changes import Change
from worker.feed.checkpoint import Watermark
from worker.feed.dispatcher import Dispatcher


def change(seq: int, doc_id: str, rev: str = "1-a", **extra) -> Change:
    return Change(seq=f"{seq}-x", doc_id=doc_id, doc={"_id": doc_id, "_rev": rev, **extra})


class Recorder:
    def __init__(self, fail_times: dict[str, int] | None = None, transient: bool = False):
        self.seen: list[tuple[str, str]] = []
        self.active: dict[str, int] = {}
        self.max_active_same_doc = 0
        self.fail_times = dict(fail_times or {})
        self.transient = transient
        self.gate: asyncio.Event | None = None
        self.parked: list[tuple[str, int]] = []
        self.progress = asyncio.Condition()

    async def until(self, predicate) -> None:
        async with self.progress:
            await asyncio.wait_for(self.progress.wait_for(predicate), 5)

    async def process(self, c: Change) -> None:
        self.active[c.doc_id] = self.active.get(c.doc_id, 0) + 1
        self.max_active_same_doc = max(self.max_active_same_doc, self.active[c.doc_id])
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            self.seen.append((c.doc_id, c.doc["_rev"]))
            async with self.progress:
                self.progress.notify_all()
            if self.fail_times.get(c.doc_id, 0) > 0:
                self.fail_times[c.doc_id] -= 1
                if self.transient:
                    raise CouchUnavailable("down", retry_after=0)
                raise RuntimeError("boom")
        finally:
            self.active[c.doc_id] -= 1

    async def park(self, c: Change, exc: BaseException, attempts: int) -> None:
        self.parked.append((c.doc_id, attempts))


def make(rec: Recorder, **kw) -> Dispatcher:
    kw.setdefault("retry_base", 0.001)
    kw.setdefault("retry_cap", 0.002)
    return Dispatcher(rec.process, rec.park, Watermark("0"), **kw)


async def test_all_changes_processed_and_watermark_reaches_the_last():
    rec = Recorder()
    d = make(rec)
    for i in range(1, 51):
        await d.submit(change(i, f"doc{i}"))
    assert await d.drain(5)
    assert sorted(rec.seen) == sorted((f"doc{i}", "1-a") for i in range(1, 51))
    assert d.watermark.seq == "50-x"
    assert d.stats.processed == 50


async def test_never_two_at_once_for_one_doc_and_newest_revision_wins():
    rec = Recorder()
    rec.gate = asyncio.Event()
    d = make(rec, concurrency=4)
    await d.submit(change(1, "a", "1-a"))
    await asyncio.sleep(0)
    for rev in range(2, 6):
        await d.submit(change(rev, "a", f"{rev}-a"))
    rec.gate.set()
    assert await d.drain(5)
    assert rec.max_active_same_doc == 1
    # The first revision was in flight; the four that waited are coalesced into the newest.
    assert rec.seen == [("a", "1-a"), ("a", "5-a")]
    assert d.watermark.seq == "5-x"


async def test_different_docs_run_concurrently():
    rec = Recorder()
    rec.gate = asyncio.Event()
    d = make(rec, concurrency=3)
    for i in range(3):
        await d.submit(change(i + 1, f"d{i}"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sum(rec.active.values()) == 3
    rec.gate.set()
    assert await d.drain(5)


async def test_failing_change_is_retried_then_succeeds():
    rec = Recorder(fail_times={"a": 2})
    d = make(rec, max_attempts=5)
    await d.submit(change(1, "a"))
    assert await d.drain(5)
    assert rec.seen == [("a", "1-a")] * 3
    assert rec.parked == []
    assert d.stats.failures == 2
    assert d.watermark.seq == "1-x"


async def test_failing_change_is_parked_after_max_attempts_and_checkpoint_passes_it():
    rec = Recorder(fail_times={"bad": 100})
    d = make(rec, max_attempts=3)
    await d.submit(change(1, "bad"))
    await d.submit(change(2, "good"))
    assert await d.drain(5)
    assert rec.parked == [("bad", 3)]
    assert rec.seen.count(("bad", "1-a")) == 3
    assert d.watermark.seq == "2-x"
    assert d.stats.parked == 1


async def test_a_failing_change_holds_the_watermark_until_it_is_done():
    rec = Recorder(fail_times={"slow": 100})
    d = make(rec, max_attempts=1000, retry_base=0.01, retry_cap=0.01)
    await d.submit(change(1, "slow"))
    await d.submit(change(2, "fine"))
    await rec.until(lambda: ("fine", "1-a") in rec.seen)
    assert d.watermark.seq == "0"
    assert await d.abandon() == 1
    assert d.watermark.seq == "0"  # abandoned work is redone after a restart, never skipped


async def test_transient_errors_do_not_count_towards_parking():
    rec = Recorder(fail_times={"a": 6}, transient=True)
    d = make(rec, max_attempts=2)
    await d.submit(change(1, "a"))
    assert await d.drain(5)
    assert rec.parked == []
    assert len(rec.seen) == 7


async def test_skips_design_deleted_and_own_writes():
    rec = Recorder()
    own = {("mine", "2-b")}
    d = make(rec, own_writes=own)
    await d.submit(Change(seq="1", doc_id="_design/medic", doc={"_id": "_design/medic", "_rev": "1"}))
    await d.submit(Change(seq="2", doc_id="gone", doc={"_id": "gone", "_rev": "2", "_deleted": True},
                          deleted=True))
    await d.submit(change(3, "mine", "2-b"))
    await d.submit(change(4, "theirs", "3-c"))
    assert await d.drain(5)
    assert rec.seen == [("theirs", "3-c")]
    assert d.stats.skipped == 3
    assert d.watermark.seq == "4-x"


async def test_backpressure_bounds_outstanding_changes():
    rec = Recorder()
    rec.gate = asyncio.Event()
    d = make(rec, max_pending=10)
    submitted = 0

    async def feed():
        nonlocal submitted
        for i in range(100):
            await d.submit(change(i + 1, f"d{i}"))
            submitted += 1

    task = asyncio.create_task(feed())
    for _ in range(50):  # let the feed run as far as it can
        await asyncio.sleep(0)
    assert submitted == 10  # the feed waits: no more than max_pending are outstanding
    assert len(d.watermark) == 10
    rec.gate.set()
    await asyncio.wait_for(task, 5)
    assert await d.drain(5)
    assert d.watermark.seq == "100-x"


async def test_marks_advance_the_watermark_without_processing():
    rec = Recorder()
    d = make(rec)
    await d.mark("7-x")
    assert d.watermark.seq == "7-x"
    assert rec.seen == []



async def test_a_transient_error_that_knows_when_to_resume_is_retried_then_not_by_backoff():
    cleared = asyncio.Event()
    resumed_waits = 0

    async def resume() -> None:
        nonlocal resumed_waits
        resumed_waits += 1
        await cleared.wait()

    class Paused(CouchUnavailable):
        pass

    calls = 0

    async def process(c: Change) -> None:
        nonlocal calls
        calls += 1
        if not cleared.is_set():
            error = Paused("paused")
            error.resume = resume
            raise error

    # A backoff this long would fail the drain below: only the resume wait may be used.
    d = Dispatcher(process, Recorder().park, Watermark("0"), retry_base=3600, retry_cap=3600)
    for i in range(5):
        await d.submit(change(i + 1, f"p{i}"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert resumed_waits == 5 and calls == 5
    cleared.set()
    assert await d.drain(5)
    assert calls == 10
    assert d.stats.failures == 0


async def test_a_change_no_transition_wants_is_done_in_feed_order_without_processing():
    rec = Recorder()
    rec.gate = asyncio.Event()
    d = make(rec, wanted=lambda c: "tasks" in c.doc)
    await d.submit(change(1, "report", tasks=[]))  # wanted: held at the gate
    for i in range(2, 6):
        await d.submit(change(i, f"contact{i}"))
    assert rec.seen == [] and d.stats.processed == 4
    assert d.watermark.seq == "0"  # the wanted change before them holds the watermark back
    rec.gate.set()
    assert await d.drain(5)
    assert rec.seen == [("report", "1-a")]
    assert d.watermark.seq == "5-x" and d.stats.processed == 5 and d.stats.skipped == 0


async def test_a_busy_docs_change_queues_even_when_no_transition_wants_it():
    # Its newest revision supersedes the wanted one waiting: the message it dropped is not sent.
    rec = Recorder()
    rec.gate = asyncio.Event()
    d = make(rec, wanted=lambda c: "tasks" in c.doc)
    await d.submit(change(1, "a", "1-a", tasks=[]))
    await asyncio.sleep(0)
    await d.submit(change(2, "a", "2-a", tasks=[]))
    await d.submit(change(3, "a", "3-a"))  # the tasks are gone from the newest revision
    rec.gate.set()
    assert await d.drain(5)
    assert rec.seen == [("a", "1-a"), ("a", "3-a")]
    assert d.watermark.seq == "3-x"


async def test_changes_without_a_feed_seq_are_always_processed():
    # The sweep, a parked retry and an in-doubt resend hand docs over with seq None.
    rec = Recorder()
    d = make(rec, wanted=lambda c: False)
    await d.submit(Change(seq=None, doc_id="swept", doc={"_id": "swept", "_rev": "1-a"}))
    assert await d.drain(5)
    assert rec.seen == [("swept", "1-a")]

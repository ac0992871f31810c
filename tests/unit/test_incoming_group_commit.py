"""How the webhook's store groups concurrent messages into CouchDB requests (no server needed).

CouchDB 3 charges a `_bulk_docs` request a fixed cost far above a doc's, so a batch started for
one message while another batch is in flight wastes a request: a second batch overlaps the first
only once as many messages wait as the first carries (at least PIPELINE_MIN_BATCH).
"""

from __future__ import annotations

import asyncio
from typing import Any

from transitions.incoming.record import IncomingMessage
from worker.incoming.webhook import PIPELINE_MIN_BATCH, IncomingStore, Outcome


class HeldCouch:
    """Stands in for medic: view look-ups answer at once; each `_bulk_docs` waits for release."""

    name = "medic"

    def __init__(self) -> None:
        self.server = self
        self.batches: list[list[str]] = []
        self._release: list[asyncio.Event] = []
        self.started = asyncio.Event()

    async def request_json(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        return {"rows": []}

    async def bulk_docs(self, docs: list[dict[str, Any]], **_: Any) -> list[dict[str, Any]]:
        release = asyncio.Event()
        self._release.append(release)
        self.batches.append([doc["_id"] for doc in docs])
        self.started.set()
        await release.wait()
        return [{"id": doc["_id"], "rev": "1-x"} for doc in docs]

    def release(self, index: int) -> None:
        self._release[index].set()

    def release_all(self) -> None:
        for event in self._release:
            event.set()


async def settle() -> None:
    for _ in range(20):  # let every runnable task take its step (no timing involved)
        await asyncio.sleep(0)


def submit(store: IncomingStore, message_id: str) -> asyncio.Task[Outcome]:
    message = IncomingMessage(id=message_id, sender="+254700000001", content="hi")
    return asyncio.create_task(store.store(message, lambda: {"_id": f"doc-{message_id}"}))


async def test_a_lone_message_goes_out_at_once() -> None:
    couch = HeldCouch()
    store = IncomingStore(couch, timeout=30)  # type: ignore[arg-type]
    task = submit(store, "m0")
    await asyncio.wait_for(couch.started.wait(), 5)
    assert couch.batches == [["doc-m0"]]
    couch.release_all()
    assert await task is Outcome.SAVED


async def test_a_second_batch_waits_until_enough_messages_share_it() -> None:
    couch = HeldCouch()
    store = IncomingStore(couch, timeout=30)  # type: ignore[arg-type]
    tasks = [submit(store, "first")]
    await settle()
    assert len(couch.batches) == 1
    tasks += [submit(store, f"m{i}") for i in range(PIPELINE_MIN_BATCH - 1)]
    await settle()
    assert len(couch.batches) == 1, "a second request went out for too few messages"
    tasks.append(submit(store, "last"))
    await settle()
    assert [len(batch) for batch in couch.batches] == [1, PIPELINE_MIN_BATCH]
    couch.release_all()
    assert await asyncio.gather(*tasks) == [Outcome.SAVED] * (PIPELINE_MIN_BATCH + 1)


async def test_a_second_batch_must_match_the_last_one_sent() -> None:
    couch = HeldCouch()
    store = IncomingStore(couch, timeout=30)  # type: ignore[arg-type]
    tasks = [submit(store, "a")]
    await settle()
    tasks += [submit(store, f"b{i}") for i in range(PIPELINE_MIN_BATCH + 12)]
    await settle()
    assert [len(batch) for batch in couch.batches] == [1, PIPELINE_MIN_BATCH]
    couch.release(0)  # a slot frees: the 12 waiting are enough beside a batch of 8
    await settle()
    assert [len(batch) for batch in couch.batches] == [1, PIPELINE_MIN_BATCH, 12]
    couch.release(1)
    tasks += [submit(store, f"c{i}") for i in range(11)]
    await settle()
    assert len(couch.batches) == 3, "11 waiting went out beside a batch of 12"
    tasks.append(submit(store, "c-last"))
    await settle()
    assert [len(batch) for batch in couch.batches[3:]] == [12]
    couch.release_all()
    outcomes = await asyncio.gather(*tasks)
    assert outcomes == [Outcome.SAVED] * len(tasks)
    assert sum(len(batch) for batch in couch.batches) == len(tasks)


async def test_whatever_waits_goes_out_when_the_batch_in_flight_ends() -> None:
    couch = HeldCouch()
    store = IncomingStore(couch, timeout=30)  # type: ignore[arg-type]
    first = submit(store, "a")
    await settle()
    few = [submit(store, f"f{i}") for i in range(3)]  # fewer than PIPELINE_MIN_BATCH
    await settle()
    assert len(couch.batches) == 1
    couch.release_all()
    assert await first is Outcome.SAVED
    await settle()
    assert couch.batches[1:] == [[f"doc-f{i}" for i in range(3)]]
    couch.release_all()
    assert await asyncio.gather(*few) == [Outcome.SAVED] * 3

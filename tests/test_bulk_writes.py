"""Group-committed writes (worker/couch/bulk.py) keep a PUT's meaning, doc by doc, on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from config.env import parse_couch_url
from worker.couch.bulk import BulkWriter
from worker.couch.client import Conflict, CouchServer, Database
from worker.outgoing.ledger import Ledger


@pytest.fixture
async def db(medic_db) -> AsyncIterator[Database]:
    couch = CouchServer(parse_couch_url(medic_db.url), timeout=10.0)
    try:
        yield couch.db(medic_db.name)
    finally:
        await couch.close()


async def test_concurrent_writes_each_get_their_own_result(db):
    await db.put({"_id": "exists", "v": 0})
    writer = BulkWriter(db, batch_max=10, max_in_flight=1)
    results = await asyncio.gather(
        *(writer.put({"_id": f"new-{i}", "v": i}) for i in range(25)),
        writer.put({"_id": "exists", "v": 1}),  # a create of an existing doc: its 409 alone
        return_exceptions=True)
    assert all(isinstance(rev, str) and rev.startswith("1-") for rev in results[:25])
    assert isinstance(results[25], Conflict)
    rows = (await db.all_docs(keys=[f"new-{i}" for i in range(25)], include_docs=True))["rows"]
    assert [row["doc"]["v"] for row in rows] == list(range(25))
    assert (await db.get("exists"))["v"] == 0


async def test_two_writes_of_one_doc_are_decided_in_order(db):
    writer = BulkWriter(db)
    first = asyncio.ensure_future(writer.put({"_id": "one", "v": 1}))
    second = asyncio.ensure_future(writer.put({"_id": "one", "v": 2}))  # a second create: refused
    assert (await first).startswith("1-")
    with pytest.raises(Conflict):
        await second
    rev = await writer.put({"_id": "one", "_rev": await first, "v": 3})
    assert rev.startswith("2-")
    with pytest.raises(Conflict):  # a stale rev
        await writer.put({"_id": "one", "_rev": await first, "v": 4})
    assert (await db.get("one"))["v"] == 3


async def test_concurrent_claims_of_one_message_have_one_winner(db):
    ledgers = [Ledger(db, owner=f"host:{i}") for i in range(6)]
    claims = await asyncio.gather(*(ledger.claim("m-1", "doc", "tel:+254700000001") for ledger in ledgers),
                                  *(ledgers[0].claim("m-1", "doc", "tel:+254700000001") for _ in range(3)))
    winners = [claim for claim in claims if claim is not None]
    assert len(winners) == 1
    stored = await db.get("msg:m-1")
    assert stored["owner"] == winners[0]["owner"] and stored["_rev"] == winners[0]["_rev"]

"""The pending sweep reads CHT's `medic/messages_by_state` a page at a time, paged by key: every
pending doc is handed over once, whatever the page size (a real CouchDB-protocol server)."""

from __future__ import annotations

from typing import Any

from config.env import parse_couch_url
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import MedicDb
from worker.couch.client import CouchServer
from worker.feed.changes import Change
from worker.outgoing.sweep import PendingSweep, pending_doc_pages


def pending(doc_id: str, messages: int) -> dict[str, Any]:
    return {"_id": doc_id, "type": "data_record", "tasks": [
        {"state": "pending", "messages": [{"uuid": f"{doc_id}-{n}", "to": "+254700000001", "message": "hi"}
                                          for n in range(messages)],
         "state_history": [{"state": "pending", "timestamp": iso_ago(60)}]}]}


async def test_every_pending_doc_is_swept_once_page_by_page(medic_db: MedicDb) -> None:
    couch = CouchServer(parse_couch_url(medic_db.url), timeout=10.0)
    try:
        medic = couch.db(medic_db.name)
        # docs with one, two and three pending messages: their rows straddle the page boundaries
        docs = [pending(f"doc-{i:02d}", 1 + i % 3) for i in range(9)]
        docs.append({"_id": "done", "type": "data_record", "tasks": [{"state": "sent", "messages": []}]})
        assert all("error" not in item for item in await medic.bulk(docs))
        pages = [page async for page in pending_doc_pages(medic, page_size=2)]
        assert len(pages) >= 9  # 18 rows, two a page
        assert all(len(page) <= 2 for page in pages)
        assert {doc_id for page in pages for doc_id in page} == {f"doc-{i:02d}" for i in range(9)}

        submitted: list[str] = []

        async def submit(change: Change) -> None:
            submitted.append(change.doc_id)

        async def in_charge() -> bool:
            return True

        sweep = PendingSweep(medic, submit, in_charge, page_size=2)
        assert await sweep.run_once() == 9
        assert sorted(submitted) == [f"doc-{i:02d}" for i in range(9)]
    finally:
        await couch.close()

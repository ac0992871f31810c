"""Reading what is tracked incrementally (transitions/status/feed.py): paging the view by key,
the ledger's word for the worker's own messages, what a changed doc says; the schedule's compact
indexes (worker/status/book.py)."""

from __future__ import annotations

import sys
from typing import Any

from tests.support.clock import iso_ago
from transitions.cht.states import GATEWAY_TRACKED_STATES
from transitions.cht.timestamps import parse_time
from transitions.status.feed import (
    LOAD_ORDER,
    PageStart,
    Row,
    doc_messages,
    ledger_candidate,
    ledger_facts,
    next_start,
    view_rows,
)
from transitions.status.rules import Candidate, Policy, start_tracking
from worker.status.book import Book


def rows(*doc_ids: str) -> list[Row]:
    return [Row(f"u{i}", doc_id, "sent", 7) for i, doc_id in enumerate(doc_ids)]


def test_load_order_covers_every_tracked_state_fresher_first() -> None:
    assert set(LOAD_ORDER) == set(GATEWAY_TRACKED_STATES)
    assert LOAD_ORDER[-1] == "sent"


def test_view_rows_skips_malformed_rows() -> None:
    raw: list[Any] = [{"id": "d1", "key": "sent", "value": {"id": "u1", "gateway_ref": 5}},
                      {"id": "d2", "key": "sent", "value": None}, "junk",
                      {"id": "d3", "key": "sent", "value": {"id": ""}},
                      {"id": 4, "key": "sent", "value": {"id": "u4"}}]
    assert view_rows(raw) == [Row("u1", "d1", "sent", 5)]
    assert view_rows(raw)[0].broadcast == 5


def test_next_page_starts_at_the_last_doc_passing_over_its_rows_already_read() -> None:
    start = next_start(PageStart(), rows("a", "b", "c", "c"))
    assert start == PageStart("c", 2)
    # the next page began at "c" (its 2 rows passed over): a new last doc
    assert next_start(start, rows("c", "d")) == PageStart("d", 1)
    # a page all of one doc (a doc with more messages than a page): the count grows, no loop
    assert next_start(start, rows("c", "c")) == PageStart("c", 4)
    assert next_start(start, []) == start


def own_facts(**overrides: Any) -> dict[str, Any]:
    facts = {"state": "sent", "broadcast_id": 7, "broadcast_uuid": "0b7c6f4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
             "outcome_at": iso_ago(3600), "claimed_at": iso_ago(3601), "urn": "tel:+254700000001",
             "task_state": "sent", "task_state_details": "Sent", "task_state_at": iso_ago(3000)}
    return {**facts, **overrides}


def test_the_ledger_vouches_for_its_own_message_in_the_state_it_projected() -> None:
    facts = own_facts()
    candidate = ledger_candidate(Row("u1", "d1", "sent", 7), facts)
    assert candidate == Candidate("u1", "d1", 7, "sent", "Sent", parse_time(facts["outcome_at"]),
                                  parse_time(facts["task_state_at"]))
    # never tracked by status yet: the sender's projection (received-by-gateway, Queued)
    queued = ledger_candidate(Row("u1", "d1", "received-by-gateway", "7"),
                              own_facts(task_state=None, task_state_details=None, task_state_at=None))
    assert queued is not None and queued.details == "Queued" and queued.state_since == queued.sent_at


def test_the_doc_is_read_when_the_ledger_cannot_vouch() -> None:
    row = Row("u1", "d1", "sent", 7)
    assert ledger_candidate(row, None) is None  # another sender's
    assert ledger_candidate(row, own_facts(state="in-doubt")) is None
    assert ledger_candidate(row, own_facts(broadcast_id=8)) is None  # the task names another broadcast
    assert ledger_candidate(Row("u1", "d1", "forwarded-by-gateway", 7), own_facts()) is None  # moved
    uuid_ref = "0b7c6f4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"  # a server without ids: recognised by text
    assert ledger_candidate(Row("u1", "d1", "sent", uuid_ref), own_facts(broadcast_id=None)) is None


def test_a_changed_doc_names_all_its_messages_and_the_trackable_ones() -> None:
    doc = {"_id": "d1", "tasks": [
        {"state": "sent", "gateway_ref": 9, "messages": [{"uuid": "a", "to": "+1", "message": "hi"}],
         "state_history": [{"state": "sent", "timestamp": iso_ago(60)}]},
        {"state": "delivered", "gateway_ref": 10, "messages": [{"uuid": "b"}]},
        {"state": "pending", "messages": [{"uuid": "c"}, "junk"]}],
        "scheduled_tasks": "junk"}
    uuids, found = doc_messages(doc)
    assert uuids == ["a", "b", "c"]
    assert [(c.uuid, c.state, c.broadcast, c.text) for c in found] == [("a", "sent", 9, "hi")]
    assert doc_messages({"_id": "contact", "type": "person"}) == ([], [])


def tracked(uuid: str, broadcast: int) -> Any:
    return start_tracking(Candidate(uuid, f"doc-{uuid}", broadcast, "sent", "Sent", 1000.0, 1000.0),
                          2000.0, Policy())


def test_book_indexes_a_one_message_broadcast_by_the_uuid_and_several_by_a_set() -> None:
    book = Book()
    book.add(tracked("a", 1))
    assert book.by_broadcast[1] == "a" and book.of_broadcast(1) == ("a",)
    book.add(tracked("b", 1))
    assert sorted(book.of_broadcast(1)) == ["a", "b"]
    book.add(tracked("b", 1))  # again: replaces, no duplicate
    assert sorted(book.of_broadcast(1)) == ["a", "b"] and len(book) == 2
    book.drop("a")
    assert book.by_broadcast[1] == "b"
    book.drop("b")
    assert 1 not in book.by_broadcast and book.of_broadcast(1) == ()
    book.add(tracked("c", 2))
    assert book.drop_docs({"doc-c", "doc-x"}) == ["c"] and not book.items


def test_tracked_records_are_compact() -> None:
    item = tracked("a", 1)
    assert not hasattr(item, "__dict__")  # slots
    assert item.state is sys.intern("sent")


def test_the_ledger_views_compact_row_reads_as_the_entrys_fields() -> None:
    value = [iso_ago(60), 7, None, "queued", "sent", "Sent", iso_ago(30)]
    facts = ledger_facts(value)
    assert facts is not None and facts["state"] == "sent" and facts["broadcast_id"] == 7
    assert facts["task_state_details"] == "Sent" and facts["outcome_at"] == value[0]
    assert ledger_candidate(Row("u1", "d1", "sent", 7), facts) is not None
    assert ledger_facts([1, 2]) is None and ledger_facts({"state": "sent"}) is None

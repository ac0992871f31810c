"""Conflicting revisions of a ledger entry (a clustered CouchDB), resolved without I/O."""

from __future__ import annotations

from typing import Any

from transitions.outgoing.dispatch import CLAIMED, IN_DOUBT, REJECTED, RELEASED, SENT, Action, ledger_action
from transitions.outgoing.ledger_leaves import Merge, merged_entry, resolve

NOW = 10_000.0  # an injected clock: claims are judged by their age against it
TIMEOUT = 90.0


def leaf(rev: str, state: str, *, owner: str = "host:1", nonce: str = "n", age: float = 5.0,
         **extra: Any) -> dict[str, Any]:
    return {"_id": "msg:m", "_rev": rev, "uuid": "m", "state": state, "owner": owner,
            "claimed_at_epoch": NOW - age, "writer": {"instance": owner, "nonce": nonce}, **extra}


def judge(leaves: list[dict[str, Any]], unsent: set[str] = frozenset(), dead: set[str] = frozenset()):
    return resolve(leaves, unsent=unsent, now=NOW, claim_timeout=TIMEOUT, owner_dead=lambda o: o in dead)


def test_one_leaf_is_the_entry_and_no_leaf_is_none():
    only = leaf("1-a", CLAIMED)
    assert judge([only]).entry is only and judge([only]).losers == []
    assert judge([]).entry is None


def test_an_outcome_wins_and_every_other_leaf_goes():
    claim, sent = leaf("1-b", CLAIMED, nonce="x"), leaf("2-a", SENT, broadcast_id=7)
    result = judge([claim, sent])
    assert result.entry is sent and result.losers == [claim] and result.merge is Merge.NONE
    rejected = leaf("2-c", REJECTED)
    assert judge([rejected, sent]).entry is sent  # a broadcast RapidPro created outranks a rejection
    assert not judge([rejected, sent]).double_sent


def test_two_broadcasts_for_one_message_are_named():
    first, second = leaf("2-a", SENT, broadcast_id=9), leaf("2-b", SENT, broadcast_id=4)
    result = judge([first, second])
    assert result.entry is second and result.double_sent


def test_broadcasts_known_by_uuid_alone_are_told_apart_too():
    # A RapidPro without broadcast ids: the ledger holds the broadcast's uuid alone.
    first = leaf("2-a", SENT, broadcast_uuid="0b5f6c1e-1a2b-4c3d-8e9f-000000000001")
    second = leaf("2-b", SENT, broadcast_uuid="0b5f6c1e-1a2b-4c3d-8e9f-000000000002")
    result = judge([second, first])
    assert result.entry is first and result.double_sent
    again = leaf("2-c", SENT, broadcast_uuid="0b5f6c1e-1a2b-4c3d-8e9f-000000000001")
    assert not judge([first, again]).double_sent


def test_a_fresh_claim_of_someone_else_means_wait():
    ours, theirs = leaf("1-a", CLAIMED, nonce="mine"), leaf("1-b", CLAIMED, owner="host:2", nonce="t")
    result = judge([ours, theirs], unsent={"mine"})
    assert result.merge is Merge.WAIT and result.losers == []


def test_a_fresh_claim_of_a_dead_owner_does_not_hold_anyone_back():
    ours, theirs = leaf("1-a", CLAIMED, nonce="mine"), leaf("1-b", CLAIMED, owner="host:2", nonce="t")
    assert judge([ours, theirs], unsent={"mine"}, dead={"host:2"}).merge is Merge.IN_DOUBT


def test_leaves_that_sent_nothing_merge_into_a_released_entry():
    ours, released = leaf("1-a", CLAIMED, nonce="mine"), leaf("3-b", RELEASED, nonce="r")
    result = judge([ours, released], unsent={"mine"})
    assert result.merge is Merge.RELEASED and result.entry is ours and result.losers == [released]
    merged = merged_entry(result, "2026-01-01T00:00:00.000Z")
    assert merged["state"] == RELEASED and merged["_rev"] == "1-a" and len(merged["history"]) == 2


def test_a_stale_claim_of_someone_else_may_have_sent_so_the_merge_is_in_doubt():
    ours, stale = leaf("1-a", CLAIMED, nonce="mine"), leaf("1-b", CLAIMED, owner="h:2", nonce="s", age=500)
    result = judge([ours, stale], unsent={"mine"})
    assert result.merge is Merge.IN_DOUBT
    assert merged_entry(result, "t")["state"] == IN_DOUBT
    # Without knowing our own claim sent nothing (a restart forgot it), it may be a send under
    # way while fresh, and may have sent once stale.
    assert judge([ours, leaf("3-c", RELEASED)]).merge is Merge.WAIT
    assert judge([leaf("1-a", CLAIMED, age=500), leaf("3-c", RELEASED)]).merge is Merge.IN_DOUBT


def test_our_own_unsent_claim_is_taken_over_like_a_released_one():
    ours = leaf("1-a", CLAIMED, nonce="mine")
    assert ledger_action(ours, NOW, TIMEOUT, ours_unsent=True) is Action.SEND
    assert ledger_action(ours, NOW, TIMEOUT) is Action.WAIT
    assert ledger_action(leaf("2-a", IN_DOUBT), NOW, TIMEOUT, ours_unsent=True) is Action.SEND
    assert ledger_action(leaf("2-a", SENT), NOW, TIMEOUT, ours_unsent=True) is Action.REPROJECT

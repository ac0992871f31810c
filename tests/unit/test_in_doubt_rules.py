"""The in-doubt decisions (pure): which claims are due, windows, candidates and outcomes."""

from __future__ import annotations

import pytest

from transitions.cht.timestamps import rapidpro_time
from transitions.outgoing.dispatch import in_doubt_details, projection
from transitions.outgoing.in_doubt import (
    Kind,
    Listing,
    Window,
    claim_window,
    decide,
    is_due,
    listing_failed_too_long,
    normalise_urn,
    operator_refusal,
    plan_listings,
)

CLAIMED_AT = 1_800_000_000.0
RT = 30.0
MARGIN = 60.0
URN = "tel:+254700000001"
TEXT = "Visit due"


def bc(ident: int, at: float, urns: object = (URN,), text: object = None) -> dict:
    return {"id": ident, "uuid": f"u{ident}", "urns": list(urns) if isinstance(urns, tuple) else urns,
            "text": {"eng": TEXT} if text is None else text, "status": "completed",
            "created_on": rapidpro_time(at)}


def listing(*broadcasts: dict, started: float = CLAIMED_AT + 120, complete: bool = True,
            window: Window | None = None) -> Listing:
    return Listing(window or claim_window(CLAIMED_AT, RT, MARGIN), started, complete, broadcasts)


def run(the_listing: Listing, recorded: set[int] = frozenset(), text: str | None = TEXT, urn: str = URN):
    return decide(urn=urn, text=text, claimed_at=CLAIMED_AT, listing=the_listing, recorded=recorded,
                  rapidpro_timeout=RT, margin=MARGIN)


def test_the_window_runs_from_the_margin_before_to_the_post_deadline_plus_the_margin():
    assert claim_window(CLAIMED_AT, RT, MARGIN) == Window(CLAIMED_AT - 60, CLAIMED_AT + 120)


def test_one_candidate_is_the_outcome():
    decision = run(listing(bc(7, CLAIMED_AT + 1)))
    assert decision.kind is Kind.FOUND and decision.broadcast["id"] == 7


def test_skewed_clock_within_the_margin_still_matches():
    assert run(listing(bc(7, CLAIMED_AT - 59))).kind is Kind.FOUND


@pytest.mark.parametrize("other", [
    bc(8, CLAIMED_AT + 1, urns=("tel:+254700000002",)),  # another number
    bc(8, CLAIMED_AT + 1, text={"eng": "Other text"}),  # another text
    bc(8, CLAIMED_AT - 61),  # before the window
    bc(8, CLAIMED_AT + 121),  # after it
    bc(8, CLAIMED_AT + 1, urns=(URN, "tel:+254700000002")),  # a bulk broadcast: never ours
])
def test_broadcasts_that_are_not_the_message_are_no_candidates(other):
    assert run(listing(other)).kind is Kind.RESEND


def test_a_broadcast_another_entry_holds_is_no_candidate():
    assert run(listing(bc(7, CLAIMED_AT + 1)), recorded={7}).kind is Kind.RESEND


def test_urns_are_compared_normalised_and_text_as_string_too():
    found = run(listing(bc(7, CLAIMED_AT + 1, urns=["TEL:+254 700-000-001"], text=TEXT)))
    assert found.kind is Kind.FOUND
    assert normalise_urn("tel:+254 700 000 001") == URN


def test_two_candidates_need_an_operator():
    decision = run(listing(bc(7, CLAIMED_AT + 1), bc(8, CLAIMED_AT + 5)))
    assert decision.kind is Kind.OPERATOR and "7" in decision.reason and "8" in decision.reason


@pytest.mark.parametrize("urns", [None, []])
def test_hidden_urns_need_an_operator(urns):
    decision = run(listing(bc(7, CLAIMED_AT + 1, urns=urns)))
    assert decision.kind is Kind.OPERATOR and "anonymous" in decision.reason


def test_hidden_urns_with_another_text_do_not_block_a_resend():
    assert run(listing(bc(7, CLAIMED_AT + 1, urns=None, text={"eng": "else"}))).kind is Kind.RESEND


def test_no_resend_unless_the_listing_covers_the_window():
    assert run(listing(complete=False)).kind is Kind.WAIT
    assert run(listing(started=CLAIMED_AT + 2 * RT - 1)).kind is Kind.WAIT  # the POST may be under way
    narrow = Window(CLAIMED_AT - 10, CLAIMED_AT + 200)
    assert run(listing(window=narrow)).kind is Kind.WAIT
    assert run(listing(started=CLAIMED_AT + 2 * RT)).kind is Kind.RESEND


def test_a_message_gone_from_its_doc_needs_an_operator():
    assert run(listing(), text=None).kind is Kind.OPERATOR


def entry(state: str = "in-doubt", age: float = 200.0, **extra) -> tuple[dict, float]:
    return ({"uuid": "m", "state": state, "claimed_at_epoch": CLAIMED_AT, **extra}, CLAIMED_AT + age)


def test_due_after_check_after_only():
    doc, now = entry(age=119)
    assert not is_due(doc, now, 120, 80, False)
    doc, now = entry(age=120)
    assert is_due(doc, now, 120, 80, False)


def test_a_fresh_claim_is_not_due_unless_its_owner_died():
    doc, now = entry("claimed", age=70)
    assert not is_due(doc, now, 60, 80, False)
    assert is_due(doc, now, 60, 80, True)
    doc, now = entry("claimed", age=81)
    assert is_due(doc, now, 60, 80, False)


@pytest.mark.parametrize("state", ["sent", "rejected", "released"])
def test_claims_with_an_outcome_are_never_due(state):
    doc, now = entry(state)
    assert not is_due(doc, now, 120, 80, False)


def test_waiting_for_an_operator_is_not_looked_up_again_unless_the_listing_failed():
    doc, now = entry(needs_operator={"reason": "x"})
    assert not is_due(doc, now, 120, 80, False)
    doc, now = entry(needs_operator={"reason": "listing failing", "retry": True})
    assert is_due(doc, now, 120, 80, False)


def test_nearby_windows_share_one_listing():
    windows = {"a": Window(0, 100), "b": Window(50, 150), "c": Window(700, 800), "d": Window(5000, 5100)}
    plan = plan_listings(windows, gap=600)
    assert plan == [(Window(0, 800), ["a", "b", "c"]), (Window(5000, 5100), ["d"])]


def test_listing_failures_go_to_the_operator_after_a_day():
    assert not listing_failed_too_long(None, 10**9)
    assert not listing_failed_too_long(0, 86399)
    assert listing_failed_too_long(0, 86400)


def test_operator_refusals():
    assert "never claimed" in operator_refusal(None, 0, 80, False)
    doc, now = entry("claimed", age=10)
    assert "being sent" in operator_refusal(doc, now, 80, False)
    doc, now = entry("sent", broadcast_id=5, resolution={"how": "operator", "by": "ann", "at": "t"})
    refusal = operator_refusal(doc, now, 80, False)
    assert "already resolved" in refusal and "broadcast 5" in refusal and "ann" in refusal
    doc, now = entry()
    assert operator_refusal(doc, now, 80, False) is None


def test_projection_of_a_claim_waiting_for_an_operator_says_why():
    doc, _ = entry(needs_operator={"reason": "2 broadcasts"})
    update = projection(doc)
    assert update.state == "forwarded-to-gateway"
    assert update.details == in_doubt_details(doc)
    assert "2 broadcasts" in update.details and "cht-rapidpro-worker in-doubt" in update.details

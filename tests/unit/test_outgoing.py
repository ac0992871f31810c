import dataclasses

import pytest

from transitions.outgoing.sendable import (
    OutgoingMessage,
    find_task_message,
    is_denied,
    recipient_urn,
    sendable_messages,
)


def msg(uuid, to="+254700000001", text="Hello"):
    return {"uuid": uuid, "to": to, "message": text}


def task(state, *messages):
    return {"state": state, "messages": list(messages)}


# --- sendable_messages ---


def test_pending_task_message_is_sendable():
    doc = {"tasks": [task("pending", msg("a"))]}
    assert sendable_messages(doc) == [OutgoingMessage("a", "+254700000001", "Hello", "tasks", 0, "pending")]


def test_forwarded_to_gateway_is_sendable():
    doc = {"scheduled_tasks": [task("forwarded-to-gateway", msg("a"))]}
    assert sendable_messages(doc) == [
        OutgoingMessage("a", "+254700000001", "Hello", "scheduled_tasks", 0, "forwarded-to-gateway")
    ]


@pytest.mark.parametrize(
    "state",
    [
        "scheduled",
        "received-by-gateway",
        "forwarded-by-gateway",
        "sent",
        "delivered",
        "failed",
        "denied",
        "cleared",
        "muted",
        "duplicate",
        "PENDING",
        None,
        1,
    ],
)
def test_other_states_not_sendable(state):
    assert sendable_messages({"tasks": [task(state, msg("a"))]}) == []


def test_order_tasks_then_scheduled_and_indexes():
    doc = {
        "scheduled_tasks": [task("sent", msg("s0")), task("pending", msg("s1"), msg("s2"))],
        "tasks": ["junk", task("pending", msg("t1"))],
    }
    got = [(m.uuid, m.task_kind, m.task_index) for m in sendable_messages(doc)]
    assert got == [
        ("t1", "tasks", 1),
        ("s1", "scheduled_tasks", 1),
        ("s2", "scheduled_tasks", 1),
    ]


@pytest.mark.parametrize(
    "message",
    [
        {"to": "+254700000001", "message": "Hi"},
        {"uuid": "a", "message": "Hi"},
        {"uuid": "a", "to": "+254700000001"},
        {"uuid": "", "to": "+254700000001", "message": "Hi"},
        {"uuid": "a", "to": "", "message": "Hi"},
        {"uuid": "a", "to": "+254700000001", "message": ""},
        {"uuid": "a", "to": 254700000001, "message": "Hi"},
        {"uuid": 5, "to": "+254700000001", "message": "Hi"},
        {"uuid": "a", "to": "+254700000001", "message": None},
        "not a dict",
        None,
    ],
)
def test_incomplete_messages_skipped(message):
    assert sendable_messages({"tasks": [task("pending", message)]}) == []


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"tasks": None},
        {"tasks": "pending"},
        {"tasks": {"state": "pending"}},
        {"tasks": [None, 1, "x", []]},
        {"tasks": [{"state": "pending"}]},
        {"tasks": [{"state": "pending", "messages": None}]},
        {"tasks": [{"state": "pending", "messages": {"uuid": "a"}}]},
        None,
        [],
        "doc",
    ],
)
def test_malformed_docs_give_nothing(doc):
    assert sendable_messages(doc) == []


def test_duplicate_uuid_returned_once():
    doc = {
        "tasks": [task("pending", msg("a", text="first"))],
        "scheduled_tasks": [task("pending", msg("a", text="second"))],
    }
    assert [m.message for m in sendable_messages(doc)] == ["first"]


def test_to_and_text_kept_as_given():
    doc = {"tasks": [task("pending", msg("a", to="0712 345 678", text=" Hi\n"))]}
    [m] = sendable_messages(doc)
    assert (m.to, m.message) == ("0712 345 678", " Hi\n")


def test_outgoing_message_is_frozen():
    m = OutgoingMessage("a", "+1", "x", "tasks", 0, "pending")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.uuid = "b"


# --- find_task_message ---


def test_find_in_tasks():
    t = task("sent", msg("a"), msg("b"))
    doc = {"tasks": [task("pending", msg("x")), t]}
    found = find_task_message(doc, "b")
    assert found == ("tasks", 1, t)
    assert found[2] is t  # the doc's own task, to change in place


def test_find_in_scheduled_tasks():
    t = task("scheduled", msg("a"))
    doc = {"tasks": [], "scheduled_tasks": [None, t]}
    assert find_task_message(doc, "a") == ("scheduled_tasks", 1, t)


def test_find_prefers_tasks_over_scheduled_tasks():
    t1, t2 = task("pending", msg("a")), task("pending", msg("a"))
    assert find_task_message({"scheduled_tasks": [t2], "tasks": [t1]}, "a")[2] is t1


def test_find_in_any_state():
    t = task("delivered", msg("a"))
    assert find_task_message({"tasks": [t]}, "a") == ("tasks", 0, t)


@pytest.mark.parametrize(
    ("doc", "uuid"),
    [
        ({"tasks": [task("pending", msg("a"))]}, "b"),
        ({"tasks": [task("pending", msg("a"))]}, ""),
        ({"tasks": [task("pending", msg("a"))]}, None),
        ({"tasks": [task("pending", {"to": "+1"})]}, None),
        ({"tasks": "x"}, "a"),
        ({"tasks": [{"messages": "a"}]}, "a"),
        (None, "a"),
        ({}, "a"),
    ],
)
def test_find_not_found(doc, uuid):
    assert find_task_message(doc, uuid) is None


# --- is_denied: outgoing_deny_list ---


@pytest.mark.parametrize(
    ("deny_list", "to"),
    [
        ("+123", "+123"),
        ("+123", "+123999999"),
        ("SAFARI", "SAFARICOM"),
        (" SAFARI", "SAFARICOM"),
        ("SAFARI", " SAFARICOM"),
        ("Safari", "SAFARICOM"),
        ("SAFARICOM", "safaricom"),
        ("+123,+456,+789", "+456"),
        ("+123,+456,+789", "+4569999999"),
        ("SAFARI, ORANGE", "ORANGE NET"),
        ("800,SAFARICOM", "800123"),
        ("0", "0000123"),
        ("1, , 2", "234"),
        (["800", "SAFARICOM"], "Safaricom"),
    ],
)
def test_deny_list_denies(deny_list, to):
    assert is_denied(to, deny_list, None, None) is True


@pytest.mark.parametrize(
    ("deny_list", "to"),
    [
        ("+123", "+999"),
        ("SAFARI, ORANGE NET", "ORANGE"),
        ("VIVO", "EM VIVO"),  # prefix only, not substring
        ("0", "-1"),
        ("800", "+254800123"),
        ("snarf", ""),
        ("snarf", None),
        ("", "+123"),
        (",", "+123"),
        (" , ", "+123"),
        (None, "+123"),
        ([], "+123"),
        ([None, 800], "800"),
        (800, "800"),
    ],
)
def test_deny_list_allows(deny_list, to):
    assert is_denied(to, deny_list, None, None) is False


# --- is_denied: outgoing_deny_shorter_than ---


@pytest.mark.parametrize(
    ("shorter_than", "to"),
    [
        (5, "+123"),
        ("5", "+123"),
        ("5", "ABCD"),
        ("5", " ABCD "),  # measured after trimming
        ("5.9", "ABCD"),
        (" 6", "12345"),
        ("6abc", "12345"),
        (5.9, "ABCD"),
        (6, "40404"),
    ],
)
def test_shorter_than_denies(shorter_than, to):
    assert is_denied(to, None, shorter_than, None) is True


@pytest.mark.parametrize(
    ("shorter_than", "to"),
    [
        (0, "+123"),
        (-5, "+123"),
        ("5", "12345"),
        ("5.9", "ABCDE"),
        ("true", "+123"),
        (True, "+123"),
        ("", "+123"),
        (" ", "+123"),
        (None, "+123"),
        (float("nan"), "+123"),
        ([5], "+123"),
        (6, "+254700000001"),
        (6, ""),
    ],
)
def test_shorter_than_allows(shorter_than, to):
    assert is_denied(to, None, shorter_than, None) is False


# --- is_denied: outgoing_deny_with_alphas ---


@pytest.mark.parametrize("to", ["ORANGE", "orange", "+23x", "M-PESA"])
def test_with_alphas_denies(to):
    assert is_denied(to, None, None, True) is True


@pytest.mark.parametrize(
    ("with_alphas", "to"),
    [
        (True, "+123"),
        (True, "+254 (700) 000-001"),
        (True, ""),
        (True, "+٢٥٤"),  # non-Latin digits are not letters to CHT
        (True, "+254ſ"),  # not ASCII: CHT's /[a-z]/i does not match it either
        (False, "ORANGE"),
        ("", "ORANGE"),
        ("true", "ORANGE"),
        (1, "ORANGE"),
        (None, "ORANGE"),
    ],
)
def test_with_alphas_allows(with_alphas, to):
    assert is_denied(to, None, None, with_alphas) is False


def test_rules_combined_settings_example():
    args = ("800,SAFARICOM", 6, True)
    assert is_denied("+254700000001", *args) is False
    assert is_denied("0700000001", *args) is False
    assert is_denied("80012345678", *args) is True
    assert is_denied("Safaricom", *args) is True
    assert is_denied("12345", *args) is True
    assert is_denied("TextIt", *args) is True


# --- recipient_urn ---


@pytest.mark.parametrize(
    ("to", "code", "urn"),
    [
        ("+254712345678", 254, "tel:+254712345678"),
        ("0712345678", 254, "tel:+254712345678"),
        ("0712 345 678", "254", "tel:+254712345678"),
        ("0712345678", None, "tel:0712345678"),
        ("12345", 254, "tel:12345"),
        ("SAFARICOM", 254, "tel:SAFARICOM"),
    ],
)
def test_recipient_urn(to, code, urn):
    assert recipient_urn(to, code) == urn


def test_recipient_urn_uses_phone_validation():
    assert recipient_urn("+254912345678", 254) == "tel:+254912345678"  # as given
    assert recipient_urn("+254 912 345 678", 254) == "tel:+254 912 345 678"
    assert recipient_urn("+254 912 345 678", 254, "partial") == "tel:+254912345678"

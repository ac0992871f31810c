from datetime import UTC, datetime, timedelta, timezone

import pytest

from transitions.cht.states import (
    FINAL_STATES,
    GATEWAY_TRACKED_STATES,
    SENDABLE_STATES,
    format_timestamp,
    map_broadcast_status,
    map_rapidpro_status,
    set_task_state,
)

# An injected clock: the state rule takes `now`, and the stamps it writes are compared literally.
NOW = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
STAMP = "2026-11-24T10:00:00.123Z"
OLD = "2026-11-24T09:00:00.000Z"


def sent_task(**extra):
    task = {
        "state": "received-by-gateway",
        "state_details": "Queued",
        "gateway_ref": 123456,
        "messages": [{"uuid": "m1", "to": "+254700000001", "message": "Hi"}],
        "state_history": [
            {"state": "pending", "timestamp": OLD},
            {"state": "received-by-gateway", "state_details": "Queued", "timestamp": OLD},
        ],
    }
    task.update(extra)
    return task


def test_state_sets_are_disjoint():
    assert not FINAL_STATES & GATEWAY_TRACKED_STATES
    assert not FINAL_STATES & SENDABLE_STATES
    assert not SENDABLE_STATES & GATEWAY_TRACKED_STATES


# --- timestamps ---


def test_timestamp_has_milliseconds_and_z():
    assert format_timestamp(NOW) == STAMP


def test_timestamp_converted_to_utc():
    nairobi = timezone(timedelta(hours=3))
    assert format_timestamp(datetime(2026, 1, 1, 2, 30, tzinfo=nairobi)) == ("2025-12-31T23:30:00.000Z")


def test_timestamp_truncates_not_rounds_microseconds():
    assert format_timestamp(datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)) == ("2026-01-01T00:00:00.999Z")


def test_naive_now_refused():
    with pytest.raises(ValueError):
        format_timestamp(datetime(2026, 1, 1))


def test_naive_now_refused_before_touching_task():
    task = {"state": "pending"}
    with pytest.raises(ValueError):
        set_task_state(task, "sent", "Sent", now=datetime(2026, 1, 1))
    assert task == {"state": "pending"}


# --- set_task_state ---


def test_empty_task_gets_state_and_history():
    task = {}
    assert set_task_state(task, "pending", now=NOW) is True
    assert task == {"state": "pending", "state_history": [{"state": "pending", "timestamp": STAMP}]}


def test_new_state_with_details_and_ref():
    task = {"state": "pending", "state_history": [{"state": "pending", "timestamp": OLD}]}
    assert set_task_state(task, "received-by-gateway", "Queued", 123456, now=NOW) is True
    assert task == {
        "state": "received-by-gateway",
        "state_details": "Queued",
        "gateway_ref": 123456,
        "state_history": [
            {"state": "pending", "timestamp": OLD},
            {"state": "received-by-gateway", "state_details": "Queued", "timestamp": STAMP},
        ],
    }


def test_history_entry_has_no_gateway_ref():
    task = {}
    set_task_state(task, "received-by-gateway", "Queued", 1, now=NOW)
    assert set(task["state_history"][0]) == {"state", "state_details", "timestamp"}


def test_same_state_details_ref_is_noop():
    task = sent_task()
    before = sent_task()
    assert set_task_state(task, "received-by-gateway", "Queued", 123456, now=NOW) is False
    assert task == before


def test_same_state_without_details_or_ref_is_noop():
    task = sent_task()
    assert set_task_state(task, "received-by-gateway", now=NOW) is False
    assert task == sent_task()


def test_empty_details_and_ref_count_as_unchanged():
    task = sent_task()
    assert set_task_state(task, "received-by-gateway", "", 0, now=NOW) is False
    assert task == sent_task()


def test_changed_details_adds_history():
    task = sent_task()
    assert set_task_state(task, "received-by-gateway", "Errored", 123456, now=NOW) is True
    assert task["state_details"] == "Errored"
    assert task["state_history"][-1] == {
        "state": "received-by-gateway",
        "state_details": "Errored",
        "timestamp": STAMP,
    }
    assert len(task["state_history"]) == 3


def test_changed_ref_adds_history():
    task = sent_task()
    assert set_task_state(task, "received-by-gateway", "Queued", 999, now=NOW) is True
    assert task["gateway_ref"] == 999
    assert len(task["state_history"]) == 3


def test_ref_compared_strictly_string_is_not_int():
    task = sent_task()
    assert set_task_state(task, "received-by-gateway", "Queued", "123456", now=NOW) is True
    assert task["gateway_ref"] == "123456"


def test_details_compared_to_task_not_to_last_history_entry():
    # CHT compares details with task.state_details, not with the history entry's details.
    task = sent_task(state_details="Errored")
    assert set_task_state(task, "received-by-gateway", "Errored", now=NOW) is False


def test_state_differs_from_last_history_entry_adds_history():
    task = sent_task(state="sent")  # task.state says sent, history says received
    assert set_task_state(task, "sent", "Queued", 123456, now=NOW) is True
    assert task["state_history"][-1]["state"] == "sent"


def test_same_state_but_empty_history_adds_history():
    task = {"state": "pending", "state_details": "x", "state_history": []}
    assert set_task_state(task, "pending", "x", now=NOW) is True
    assert task["state_history"] == [{"state": "pending", "state_details": "x", "timestamp": STAMP}]


def test_none_details_and_ref_are_removed_on_change():
    # CHT assigns undefined, which disappears when the doc is saved.
    task = sent_task()
    assert set_task_state(task, "failed", now=NOW) is True
    assert "state_details" not in task
    assert "gateway_ref" not in task
    assert task["state_history"][-1] == {"state": "failed", "timestamp": STAMP}


def test_empty_string_details_stored_on_change():
    task = {}
    assert set_task_state(task, "pending", "", now=NOW) is True
    assert task["state_details"] == ""
    assert task["state_history"][-1] == {"state": "pending", "state_details": "", "timestamp": STAMP}


def test_malformed_history_replaced():
    task = {"state": "pending", "state_history": "garbage"}
    assert set_task_state(task, "pending", now=NOW) is True
    assert task["state_history"] == [{"state": "pending", "timestamp": STAMP}]


def test_non_dict_last_history_entry_does_not_match():
    task = {"state": "pending", "state_history": ["pending"]}
    assert set_task_state(task, "pending", now=NOW) is True
    assert task["state_history"] == ["pending", {"state": "pending", "timestamp": STAMP}]


def test_other_task_keys_untouched():
    # `due` is opaque here: the point is that it is left untouched.
    task = sent_task(due="2026-11-25T08:00:00.000Z")
    set_task_state(task, "sent", "Sent", 123456, now=NOW)
    assert task["due"] == "2026-11-25T08:00:00.000Z"
    assert task["messages"] == [{"uuid": "m1", "to": "+254700000001", "message": "Hi"}]


# --- RapidPro message statuses ---


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("queued", ("received-by-gateway", "Queued")),
        ("wired", ("forwarded-by-gateway", "Wired")),
        ("sent", ("sent", "Sent")),
        ("delivered", ("delivered", "Delivered")),
        ("read", ("delivered", "Read")),
        ("resent", ("sent", "Resent")),
        ("errored", ("received-by-gateway", "Errored")),
        ("failed", ("failed", "Failed")),
        ("initializing", ("received-by-gateway", "Initializing")),
    ],
)
def test_map_rapidpro_status(status, expected):
    assert map_rapidpro_status(status) == expected


@pytest.mark.parametrize("status", [None, "", "handled", "pending", "unknown", 3, ["sent"]])
def test_map_rapidpro_status_unknown(status):
    assert map_rapidpro_status(status) is None


def test_map_rapidpro_status_tolerates_case_and_spaces():
    assert map_rapidpro_status(" Delivered ") == ("delivered", "Delivered")


def test_final_statuses_map_to_final_states():
    assert map_rapidpro_status("delivered")[0] in FINAL_STATES
    assert map_rapidpro_status("read")[0] in FINAL_STATES
    assert map_rapidpro_status("failed")[0] in FINAL_STATES
    for status in ("queued", "wired", "sent", "resent", "errored", "initializing"):
        assert map_rapidpro_status(status)[0] in GATEWAY_TRACKED_STATES


def test_fresh_broadcast_then_queued_adds_no_history():
    task = {"state": "pending", "state_history": [{"state": "pending", "timestamp": OLD}]}
    state, details = map_rapidpro_status("queued")
    assert set_task_state(task, state, details, 42, now=NOW) is True
    assert set_task_state(task, state, details, 42, now=NOW) is False
    assert len(task["state_history"]) == 2


# --- broadcast statuses ---


def test_map_broadcast_failed():
    assert map_broadcast_status("failed") == ("failed", "Broadcast failed")


def test_map_broadcast_interrupted():
    assert map_broadcast_status("interrupted") == ("failed", "Broadcast interrupted")


@pytest.mark.parametrize("status", ["pending", "queued", "started", "completed", "sent", None, "", 1])
def test_map_broadcast_other(status):
    assert map_broadcast_status(status) is None

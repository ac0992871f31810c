from datetime import UTC, datetime

import pytest

from config.settings import Settings
from transitions.outgoing.dispatch import (
    CHT_SENDER_ON,
    IN_DOUBT_DETAILS,
    Action,
    TaskUpdate,
    cht_sender_runs,
    ledger_action,
    not_sending_reason,
    projection,
)
from worker.outgoing.task_writer import apply_updates

# An injected clock: the rules take `now`, and history stamps are compared literally.
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
IN_CHARGE = Settings(outgoing_service="rapidpro", rapidpro_url="https://textit.com")


def test_in_charge_only_with_service_url_and_token():
    assert not_sending_reason(IN_CHARGE, "rapidpro", True) is None
    assert "medic-gateway" in not_sending_reason(Settings(), "rapidpro", True)
    assert "url" in not_sending_reason(Settings(outgoing_service="rapidpro"), "rapidpro", True)
    assert "token" in not_sending_reason(IN_CHARGE, "rapidpro", False)
    assert not_sending_reason(None, "rapidpro", True) is not None
    own = Settings(outgoing_service="rapidpro-worker", rapidpro_url="https://textit.com")
    assert not_sending_reason(own, "rapidpro-worker", True) is None


def test_chts_sender_runs_with_rapidpro_service_url_and_vault_token():
    assert cht_sender_runs(IN_CHARGE, True) is True
    assert cht_sender_runs(IN_CHARGE, False) is False
    assert cht_sender_runs(Settings(outgoing_service="rapidpro-worker"), True) is False
    assert cht_sender_runs(Settings(outgoing_service="rapidpro"), True) is False  # no URL: CHT sends nothing
    assert cht_sender_runs(None, True) is False


def test_the_worker_stands_down_while_chts_sender_runs():
    assert not_sending_reason(IN_CHARGE, "rapidpro", True, cht_sender=CHT_SENDER_ON) == CHT_SENDER_ON
    assert not_sending_reason(IN_CHARGE, "rapidpro", True, cht_sender=None) is None


@pytest.mark.parametrize(
    ("entry", "action"),
    [
        (None, Action.SEND),
        ({"state": "released"}, Action.SEND),
        ({"state": "claimed", "claimed_at_epoch": 990.0}, Action.WAIT),
        ({"state": "claimed", "claimed_at_epoch": 800.0}, Action.MARK_IN_DOUBT),
        ({"state": "claimed"}, Action.MARK_IN_DOUBT),
        ({"state": "sent"}, Action.REPROJECT),
        ({"state": "rejected"}, Action.REPROJECT),
        ({"state": "in-doubt"}, Action.REPROJECT),
        ({"state": "something-new"}, Action.REPROJECT),
    ],
)
def test_ledger_action(entry, action):
    assert ledger_action(entry, now=1000.0, claim_timeout=90.0) is action


def test_projections():
    assert projection({"uuid": "u", "state": "sent", "broadcast_id": 7, "broadcast_status": "pending"}) == \
        TaskUpdate("u", "received-by-gateway", "Queued", 7)
    assert projection({"uuid": "u", "state": "sent", "broadcast_id": 7, "broadcast_status": "failed"}) == \
        TaskUpdate("u", "failed", "Broadcast failed", 7)
    assert projection({"uuid": "u", "state": "sent", "broadcast_id": 7, "task_state": "delivered",
                       "task_state_details": "Delivered"}) == TaskUpdate("u", "delivered", "Delivered", 7)
    assert projection({"uuid": "u", "state": "rejected", "error": "Invalid URN"}) == \
        TaskUpdate("u", "failed", "Invalid URN")
    assert projection({"uuid": "u", "state": "in-doubt"}) == \
        TaskUpdate("u", "forwarded-to-gateway", IN_DOUBT_DETAILS)
    assert projection({"uuid": "u", "state": "claimed"}) is None


def doc_with(state: str) -> dict:
    return {"_id": "d", "tasks": [{"state": state, "messages": [{"uuid": "u", "to": "+1", "message": "m"}],
                                   "state_history": [{"state": state, "timestamp": "t"}]}]}


def test_apply_updates_writes_cht_state_and_history():
    doc = doc_with("pending")
    assert apply_updates(doc, [TaskUpdate("u", "received-by-gateway", "Queued", 12)], NOW) is True
    task = doc["tasks"][0]
    assert (task["state"], task["state_details"]) == ("received-by-gateway", "Queued")
    assert task["gateway_ref"] == 12
    assert task["state_history"][-1] == {"state": "received-by-gateway", "state_details": "Queued",
                                         "timestamp": "2026-11-24T12:00:00.000Z"}


def test_apply_updates_is_a_no_op_when_nothing_changes():
    doc = doc_with("pending")
    apply_updates(doc, [TaskUpdate("u", "received-by-gateway", "Queued", 12)], NOW)
    assert apply_updates(doc, [TaskUpdate("u", "received-by-gateway", "Queued", 12)], NOW) is False
    assert len(doc["tasks"][0]["state_history"]) == 2


def test_apply_updates_leaves_a_task_someone_else_moved_on():
    doc = doc_with("cleared")
    assert apply_updates(doc, [TaskUpdate("u", "received-by-gateway", "Queued", 12)], NOW) is False
    assert doc["tasks"][0]["state"] == "cleared"


def test_apply_updates_ignores_unknown_uuid():
    doc = doc_with("pending")
    assert apply_updates(doc, [TaskUpdate("other", "failed", "x")], NOW) is False


def test_a_fresh_claim_of_a_dead_owner_is_in_doubt_at_once():
    entry = {"state": "claimed", "claimed_at_epoch": 999.0}
    assert ledger_action(entry, 1000.0, 90.0, owner_dead=True) is Action.MARK_IN_DOUBT


def test_owner_is_dead_only_for_a_vanished_pid_on_this_host():
    import os
    import subprocess
    import sys

    from worker.identity import HOSTNAME, owner_is_dead

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    assert owner_is_dead(f"{HOSTNAME}:{child.stdout.strip()}") is True
    assert owner_is_dead(f"{HOSTNAME}:{os.getpid()}") is False
    assert owner_is_dead(f"{HOSTNAME}:1") is False  # alive (init)
    assert owner_is_dead(f"some-other-host:{child.stdout.strip()}") is False
    assert owner_is_dead("garbage") is False
    assert owner_is_dead(None) is False

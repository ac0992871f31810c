"""Status tracking's pure rules for RapidPro's versions and channels: broadcast keys
(transitions/outgoing/broadcasts.py), lookups learnt from answers (transitions/status/api.py), channels
that never report delivery (transitions/status/delivery_reports.py), and the plan's windows for them."""

from __future__ import annotations

import pytest

from transitions.cht.timestamps import rapidpro_time
from transitions.outgoing.broadcasts import gateway_ref, key_of, ledger_ref, message_broadcast, refs_of
from transitions.status.api import (
    BROADCASTS_BY_UUID,
    MESSAGES_BY_BROADCAST,
    MESSAGES_BY_UUID,
    Ask,
    ServerApi,
    broadcast_ask,
    could_be,
    filter_honoured,
    message_ask,
)
from transitions.status.delivery_reports import DeliveryReports, ReportsPolicy, should_park, should_unpark
from transitions.status.plan import FolderStats, plan_round
from transitions.status.rules import SENT_FOLDER, Policy, Tier, Tracked

P = Policy()
T0 = 1_800_000_000.0
U1 = "0199bb98-3637-778d-9dfc-0ab85c950d7c"
U2 = "0199bb98-3637-778d-9dfc-0ab85c950d7d"
RELAYER = {"uuid": "0d9a4b1c-2e3f-4a5b-8c7d-6e5f4a3b2c1d", "name": "Android relayer"}
AGGREGATOR = {"uuid": "6a1f6e0c-1b2d-4c3e-9f4a-5b6c7d8e9f01", "name": "SMS aggregator"}


def item(uuid: str = "m1", broadcast: int | str = 1, *, state: str = "sent", sent_at: float = T0,
         next_check: float = T0, own: bool = True, **fields: object) -> Tracked:
    return Tracked(uuid, "d1", broadcast, state, "Sent", sent_at, sent_at, next_check, sent_at, own=own,
                   **fields)  # type: ignore[arg-type]


def row(status: str, *, channel: dict | None = None, sent: float = T0, key: str = U1) -> dict:
    return {"uuid": key, "direction": "out", "status": status, "channel": channel,
            "sent_on": rapidpro_time(sent), "created_on": rapidpro_time(sent)}


# ---------------------------------------------------------------------------- broadcast keys


def test_a_broadcast_is_named_by_its_id_while_there_is_one_else_by_its_uuid():
    assert gateway_ref(123, U1) == 123 and gateway_ref(None, U1.upper()) == U1
    assert gateway_ref(None, None) is None
    assert ledger_ref({"broadcast_id": None, "broadcast_uuid": U1}) == U1
    assert key_of({"id": 7, "uuid": U1}) == 7 and key_of({"uuid": U1}) == U1  # current / no ids
    assert refs_of({"id": 7, "uuid": U1}) == [7, U1] and refs_of({"id": 7}) == [7]
    assert message_broadcast({"broadcast": 7}) == 7 and message_broadcast({"broadcast": None}) is None
    assert message_broadcast({"broadcast": {"uuid": U1}}) == U1  # should a server name it so
    assert message_broadcast({}) is None


# ---------------------------------------------------------------------------- lookups


@pytest.mark.parametrize(("field", "asked", "results", "honoured"), [
    ("uuid", U1, [{"uuid": U1}], True),
    ("uuid", U1, [{"uuid": U1}, {"uuid": U2}], False),  # the unfiltered list: the filter was ignored
    ("uuid", U1, [{"id": 5}], False),  # a server without uuids at all
    ("uuid", U1, [], None),  # nothing to judge by
    ("broadcast", 7, [{"broadcast": 7}], True),
    ("broadcast", 7, [{"uuid": U1}], False),  # a server without ids lists everything
    ("id", 7, [{"id": 7, "uuid": U1}], True),
])
def test_a_filter_is_judged_by_whether_the_answer_is_what_was_asked(field, asked, results, honoured):
    assert filter_honoured(field, asked, results) is honoured


def test_a_message_is_asked_about_by_its_uuid_once_known_then_by_its_broadcast_id():
    api = ServerApi()
    assert message_ask(item(broadcast=7), api) == Ask("broadcast", 7)
    assert message_ask(item(broadcast=7, message_uuid=U2), api) == Ask("uuid", U2)
    assert message_ask(item(broadcast=U1), api) is None  # no id, not seen yet: only a sync finds it
    assert api.learn(MESSAGES_BY_UUID, False) and not api.learn(MESSAGES_BY_UUID, False)
    assert message_ask(item(broadcast=7, message_uuid=U2), api) == Ask("broadcast", 7)
    api.learn(MESSAGES_BY_BROADCAST, False)
    assert message_ask(item(broadcast=7, message_uuid=U2), api) is None
    api.forget()
    assert api.health()["lookups"] == {MESSAGES_BY_UUID: None, MESSAGES_BY_BROADCAST: None,
                                       BROADCASTS_BY_UUID: None, "broadcasts.json?id": None}


def test_a_broadcast_is_looked_up_by_uuid_where_read_else_by_id():
    api = ServerApi()
    assert broadcast_ask(item(broadcast=7, broadcast_uuid=U1), api) == Ask("uuid", U1)
    api.learn(BROADCASTS_BY_UUID, False)  # v10.3.79-80: uuids, but no ?uuid= filter yet
    assert broadcast_ask(item(broadcast=7, broadcast_uuid=U1), api) == Ask("id", 7)
    assert broadcast_ask(item(broadcast=U1, broadcast_uuid=U1), api) is None


def test_a_row_without_a_broadcast_is_recognised_by_recipient_and_text_near_the_send():
    mine = item(broadcast=U1, urn="tel:+254700000001", text="hi", own=True)
    near = {"urn": "tel:+254 700 000 001", "text": "hi", "created_on": rapidpro_time(T0 + 2)}
    assert could_be(mine, near, P)
    assert not could_be(mine, {**near, "text": "other"}, P)
    assert not could_be(mine, {**near, "created_on": rapidpro_time(T0 - P.created_margin - 5)}, P)
    assert not could_be(mine, {**near, "created_on": rapidpro_time(T0 + 2 * 3600)}, P)
    mine.message_uuid = U2
    assert not could_be(mine, near, P)  # found already: by its uuid from now on


# ---------------------------------------------------------------------------- delivery reports


def silent_rows(count: int, channel: dict, now: float, age: float) -> list[dict]:
    return [row("sent", channel=channel, sent=now - age, key=f"00000000-0000-4000-8000-{n:012d}")
            for n in range(count)]


def test_a_channel_whose_messages_stay_sent_is_judged_without_reports_and_a_report_reverses_it():
    reports = DeliveryReports(ReportsPolicy(settle=900, needed=20))
    now = T0 + 10_000
    assert reports.observe(silent_rows(19, RELAYER, now, 1000), now) == set()
    assert not reports.without_reports(RELAYER["uuid"])
    assert reports.observe(silent_rows(20, RELAYER, now, 1000), now) == {RELAYER["uuid"]}
    assert reports.without_reports(RELAYER["uuid"])
    [listed] = reports.health({RELAYER["uuid"]: 3})
    assert (listed["name"], listed["messages_parked"], listed["unreported_messages_seen"]) == \
        ("Android relayer", 3, 20)
    assert reports.observe([row("delivered", channel=RELAYER)], now) == {RELAYER["uuid"]}
    assert not reports.without_reports(RELAYER["uuid"]) and reports.health({}) == []


def test_slow_reports_recent_messages_and_other_channels_prove_nothing():
    reports = DeliveryReports(ReportsPolicy(settle=900, needed=20))
    now = T0 + 10_000
    # not yet a quarter of an hour at sent: a report may still come
    reports.observe(silent_rows(30, RELAYER, now, 600), now)
    # a page that also shows a report from the channel: its sent rows are slow, not unreported
    reports.observe([*silent_rows(30, AGGREGATOR, now, 1000), row("read", channel=AGGREGATOR)], now)
    # rows with no channel (RapidPro 2023 can answer null), incoming rows
    reports.observe([{**r, "channel": None} for r in silent_rows(30, RELAYER, now, 1000)], now)
    reports.observe([{**r, "direction": "in"} for r in silent_rows(30, RELAYER, now, 1000)], now)
    assert reports.health({}) == []


def test_only_sent_messages_past_the_hour_on_such_a_channel_are_parked():
    reports = DeliveryReports(ReportsPolicy(settle=900, needed=1))
    now = T0 + 2 * 3600
    reports.observe(silent_rows(1, RELAYER, now, 1000), now)
    old = item(sent_at=now - 2 * 3600, channel=RELAYER["uuid"])
    assert old.tier(now, P) is Tier.OLD and should_park(old, now, P, reports)
    assert not should_park(item(sent_at=now - 1800, channel=RELAYER["uuid"]), now, P, reports)  # warm
    assert not should_park(item(sent_at=now - 2 * 3600, state="forwarded-by-gateway",
                                channel=RELAYER["uuid"]), now, P, reports)
    assert not should_park(item(sent_at=now - 2 * 3600, channel=AGGREGATOR["uuid"]), now, P, reports)
    old.parked = True
    assert not should_unpark(old, reports)
    reports.observe([row("delivered", channel=RELAYER)], now)
    assert should_unpark(old, reports)


# ---------------------------------------------------------------------------- plans


def test_parked_messages_due_are_looked_for_in_the_failed_folder_alone():
    parked = [item(f"p{n}", n, sent_at=T0 - 86400 + n * 60, parked=True) for n in range(5)]
    plan = plan_round(parked, T0, P, FolderStats())
    [window] = plan.windows
    assert window.parked and window.sync and set(window.due) == {f"p{n}" for n in range(5)}
    assert window.before is not None and window.tier is Tier.OLD


def test_the_newest_window_reads_on_to_now_only_where_that_costs_no_page_more():
    due = [item(f"m{n}", n, sent_at=T0 - 600 + n) for n in range(5)]
    for tracked in due:
        tracked.created_on = tracked.sent_at
    quiet = plan_round(due, T0, P, FolderStats())
    assert quiet.windows[0].before is None  # a few rows since, in the same page: read to now
    busy = FolderStats()
    busy.learn(SENT_FOLDER, [T0 - 600 + n * 0.5 for n in range(1200)], T0 - 600, T0)  # 2 a second
    assert plan_round(due, T0, P, busy).windows[0].before == T0 - 596
    due[0].created_on = None  # an estimate: CHT's clock, RapidPro's queue — read to now
    assert plan_round(due, T0, P, busy).windows[0].before is None

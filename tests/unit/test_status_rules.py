"""Status tracking's pure rules (transitions/status/rules.py)."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import pytest

from transitions.cht.timestamps import parse_time, rapidpro_time
from transitions.outgoing.broadcasts import broadcast_key
from transitions.outgoing.dispatch import TaskUpdate
from transitions.status.api import Ask
from transitions.status.plan import ROW_BUCKET, FolderStats, expected_pages, plan_round, sync_folders
from transitions.status.rules import (
    OUTBOX,
    SENT_FOLDER,
    Applied,
    Candidate,
    Ending,
    Policy,
    Tier,
    Tracked,
    apply_status_updates,
    expired,
    folder_of,
    is_due,
    is_forward,
    observe,
    observe_broadcast,
    observe_unchanged,
    period,
    schedule,
    start_tracking,
    tier_of,
    trackable_messages,
    visible_yet,
)

P = Policy()
T0 = 1_800_000_000.0
# An injected clock (T0, NOW): the rules take the time as an argument, so no test reads the real one.
NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def item(state: str = "sent", details: str | None = "Sent", *, broadcast: int = 1, sent_at: float = T0,
         since: float = T0, next_check: float = T0, fresh_since: float | None = None,
         uuid: str = "m1", own: bool = True) -> Tracked:
    return Tracked(uuid, "d1", broadcast, state, details, sent_at, since, next_check,
                   sent_at if fresh_since is None else fresh_since, own=own)


def result(status: str | None, *, modified: float = T0, created: float = T0, broadcast: int = 1) -> dict:
    return {"broadcast": broadcast, "status": status, "direction": "out",
            "created_on": rapidpro_time(created), "modified_on": rapidpro_time(modified)}


# ---------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(("ref", "expected"), [
    (123, 123), ("123", 123), (" 42 ", 42), (0, None), (-5, None), ("ATXid_1", None), ("", None),
    (None, None), (True, None), (1.5, None), ("12a", None),
    # a broadcast uuid: what a RapidPro without ids gives (lower-cased, as RapidPro writes them)
    ("0199BB98-3637-778D-9DFC-0AB85C950D7C", "0199bb98-3637-778d-9dfc-0ab85c950d7c"),
    ("0199bb98-3637-778d-9dfc", None),
])
def test_broadcast_key(ref, expected):
    assert broadcast_key(ref) == expected


def test_parse_time_both_formats():
    assert parse_time("2027-01-15T08:00:00.000Z") == NOW.timestamp()
    assert parse_time("2027-01-15T08:00:00.000000Z") == NOW.timestamp()
    assert parse_time("2027-01-15T08:00:00") == NOW.timestamp()  # naive = UTC
    assert parse_time("yesterday") is None and parse_time(None) is None and parse_time("") is None


def test_rapidpro_time_round_trip():
    assert parse_time(rapidpro_time(T0 + 0.123456)) == pytest.approx(T0 + 0.123456)


@pytest.mark.parametrize(("state", "details", "folder"), [
    ("received-by-gateway", "Queued", "outbox"), ("received-by-gateway", "Errored", "outbox"),
    ("forwarded-by-gateway", "Wired", "sent"), ("sent", "Sent", "sent"), ("delivered", "Read", "sent"),
    ("failed", "Failed", "failed"),
])
def test_folder_of(state, details, folder):
    assert folder_of(state, details) == folder


# ---------------------------------------------------------------------------- forward rule


@pytest.mark.parametrize(("current", "new", "allowed"), [
    (("received-by-gateway", "Queued"), ("forwarded-by-gateway", "Wired"), True),
    (("received-by-gateway", "Queued"), ("sent", "Sent"), True),
    (("received-by-gateway", "Queued"), ("delivered", "Delivered"), True),
    (("received-by-gateway", "Queued"), ("failed", "Failed"), True),
    (("received-by-gateway", "Queued"), ("received-by-gateway", "Queued"), False),
    (("received-by-gateway", "Queued"), ("received-by-gateway", "Initializing"), False),
    (("received-by-gateway", "Queued"), ("received-by-gateway", "Errored"), True),
    (("received-by-gateway", "Errored"), ("received-by-gateway", "Queued"), True),  # re-queued
    (("received-by-gateway", "Errored"), ("received-by-gateway", "Errored"), False),
    (("forwarded-by-gateway", "Wired"), ("received-by-gateway", "Queued"), False),  # backwards
    (("forwarded-by-gateway", "Wired"), ("forwarded-by-gateway", "Wired"), False),
    (("sent", "Sent"), ("forwarded-by-gateway", "Wired"), False),
    (("sent", "Sent"), ("received-by-gateway", "Errored"), True),  # RapidPro retries it
    (("sent", "Sent"), ("sent", "Resent"), True),
    (("sent", "Sent"), ("delivered", "Read"), True),
    (("delivered", "Delivered"), ("delivered", "Read"), False),  # never out of a final state
    (("delivered", "Delivered"), ("failed", "Failed"), False),
    (("failed", "Failed"), ("sent", "Sent"), False),
    (("pending", None), ("sent", "Sent"), False),  # not the tracker's to move
    (("forwarded-to-gateway", None), ("sent", "Sent"), False),
    (("scheduled", None), ("delivered", "Delivered"), False),
    (("sent", "Sent"), ("pending", None), False),
    (("sent", "Sent"), ("cleared", None), False),
])
def test_is_forward(current, new, allowed):
    assert is_forward(current[0], current[1], new[0], new[1]) is allowed


def test_same_state_without_details_is_no_move():
    assert not is_forward("sent", "Sent", "sent", None)


# ---------------------------------------------------------------------------- eligibility


def task(state, ref=123, uuid="m1", history=None, **extra):
    t = {"state": state, "messages": [{"uuid": uuid, "to": "+1", "message": "x"}], **extra}
    if ref is not None:
        t["gateway_ref"] = ref
    if history is not None:
        t["state_history"] = history
    return t


@pytest.mark.parametrize("state", ["received-by-gateway", "forwarded-by-gateway", "sent"])
def test_tracked_states_are_trackable(state):
    [c] = trackable_messages({"_id": "d", "tasks": [task(state)]})
    assert (c.uuid, c.doc_id, c.broadcast, c.state) == ("m1", "d", 123, state)


@pytest.mark.parametrize("state", ["pending", "scheduled", "forwarded-to-gateway", "muted", "duplicate",
                                   "cleared", "delivered", "failed", "denied", None, "weird"])
def test_other_states_are_never_tracked(state):
    assert trackable_messages({"_id": "d", "tasks": [task(state)]}) == []


@pytest.mark.parametrize("ref", [None, "", "ATXid_abc", 0])
def test_without_a_rapidpro_gateway_ref_nothing_is_tracked(ref):
    assert trackable_messages({"_id": "d", "tasks": [task("sent", ref)]}) == []


def test_scheduled_tasks_and_malformed_entries():
    doc = {"_id": "d", "tasks": [None, "x", task("sent", uuid="a"), {"state": "sent", "gateway_ref": 5}],
           "scheduled_tasks": [task("sent", 7, uuid="b"), task("sent", 8, uuid="a")]}
    found = trackable_messages(doc)
    assert [(c.uuid, c.broadcast) for c in found] == [("a", 123), ("b", 7)]  # one uuid, once
    assert trackable_messages({"tasks": [task("sent")]}) == []  # no _id
    assert trackable_messages({"_id": "d", "tasks": "nope"}) == []


def test_history_gives_sent_time_and_time_in_state():
    history = [{"state": "pending", "timestamp": iso(T0 - 100)},
               {"state": "received-by-gateway", "state_details": "Queued", "timestamp": iso(T0)},
               {"state": "sent", "timestamp": iso(T0 + 50)},
               {"state": "sent", "state_details": "Resent", "timestamp": iso(T0 + 70)}]
    [c] = trackable_messages({"_id": "d", "tasks": [task("sent", history=history)]})
    assert c.sent_at == pytest.approx(T0) and c.state_since == pytest.approx(T0 + 50)


def test_history_missing_or_broken():
    [c] = trackable_messages({"_id": "d", "tasks": [task("sent", history="x")]})
    assert c.sent_at is None and c.state_since is None
    [c] = trackable_messages({"_id": "d", "tasks": [task("sent", history=[{"state": "pending",
                                                                              "timestamp": iso(T0)}])]})
    assert c.sent_at is None and c.state_since == pytest.approx(T0)


# ---------------------------------------------------------------------------- schedule


def test_tiers_by_age():
    assert tier_of(0, P) is Tier.FRESH and tier_of(899, P) is Tier.FRESH
    assert tier_of(900, P) is Tier.WARM and tier_of(3599, P) is Tier.WARM
    assert tier_of(3600, P) is Tier.OLD and tier_of(6 * 86400, P) is Tier.OLD
    assert (period(Tier.FRESH, P), period(Tier.WARM, P), period(Tier.OLD, P)) == (60, 300, 3540)
    one = Policy(interval=1)
    assert (period(Tier.FRESH, one), period(Tier.WARM, one), period(Tier.OLD, one)) == (1, 5, 3599)


def test_schedule_fresh_every_interval_older_tiers_on_shared_grids():
    i = item(fresh_since=T0)
    schedule(i, T0 + 10, P)
    assert i.next_check == T0 + 10 + P.interval
    schedule(i, T0 + 1000, P)  # warm: the next point of the 300 s grid
    assert i.next_check % 300 == 0 and T0 + 1000 < i.next_check <= T0 + 1300
    schedule(i, T0 + 5000, P)
    assert i.next_check % 3540 == 0 and T0 + 5000 < i.next_check <= T0 + 5000 + 3540
    other = item(uuid="m2", fresh_since=T0 + 123)
    schedule(other, T0 + 1100, P)
    j = item(fresh_since=T0)
    schedule(j, T0 + 1050, P)
    assert other.next_check == j.next_check  # warm messages fall due in the same round


@pytest.mark.parametrize("interval", [1.0, 60.0])
def test_gaps_between_checks_per_tier(interval):
    """Rounds on the interval grid, a little late each: the longest gap between two checks of one
    message in each tier."""
    policy = Policy(interval=interval)
    start = math.ceil(T0 / interval) * interval
    i = item(fresh_since=start, sent_at=start)
    i.next_check = start + interval
    checks = []
    now = start
    while now < start + 3 * 3600:
        now += interval
        lag = 0.1 * policy.due_tolerance
        if is_due(i, now + lag, policy):
            checks.append(now + lag)
            schedule(i, now + lag, policy)
    gaps: dict[Tier, float] = {}
    for before, after in itertools.pairwise(checks):
        tier = tier_of(before - start, policy)
        gaps[tier] = max(gaps.get(tier, 0.0), after - before)
    assert checks[0] - start <= 2 * interval
    assert gaps[Tier.FRESH] <= interval * 1.01
    assert gaps[Tier.WARM] <= 5 * interval * 1.01
    assert gaps[Tier.OLD] <= 3600


def test_start_tracking_from_candidate():
    c = Candidate("m1", "d1", 9, "sent", "Sent", T0, T0 + 60)
    i = start_tracking(c, T0 + 600, P)
    assert (i.sent_at, i.state_since) == (T0, T0 + 60)
    assert i.next_check == T0 + 600 and i.fresh_since == T0 + 600  # new in the view: fresh from now
    found = start_tracking(c, T0 + 86400, P, at_start=True)
    assert found.next_check == T0 + 86400 and found.fresh_since == T0  # at start: at once, then by age
    just_sent = start_tracking(Candidate("m2", "d1", 9, "sent", None, T0, None), T0 + 5, P, own=True)
    assert just_sent.next_check == T0 + P.interval  # one interval after sending
    another_senders = start_tracking(Candidate("m4", "d1", 9, "sent", None, T0, None), T0 + 5, P)
    assert another_senders.next_check == T0 + 5  # when it was sent is not ours to know: at once
    unknown = start_tracking(Candidate("m3", "d1", 9, "sent", None, None, None), T0, P)
    assert unknown.sent_at == T0 and unknown.state_since == T0 and unknown.next_check == T0


def test_expired_after_the_horizon():
    assert not expired(item(sent_at=T0), T0 + P.horizon, P)
    assert expired(item(sent_at=T0), T0 + P.horizon + 1, P)


def test_visible_only_after_grace():
    assert not visible_yet(item(sent_at=T0), T0 + 5, P)
    assert visible_yet(item(sent_at=T0), T0 + P.visibility_grace, P)


def test_another_senders_message_is_looked_up_at_once_the_first_time():
    stranger = item(sent_at=T0, own=False)
    assert visible_yet(stranger, T0 + 5, P)  # its send time is not ours to know: ask now
    stranger.checks = 1
    assert not visible_yet(stranger, T0 + 5, P)  # asked once: then as any message
    seen = item(sent_at=T0, own=False)
    seen.created_on = T0
    assert not visible_yet(seen, T0 + 5, P)


# ---------------------------------------------------------------------------- observations


def test_observe_moves_forward_and_reschedules():
    i = item("received-by-gateway", "Queued")
    obs = observe(i, result("wired", modified=T0 + 30, created=T0 + 1), T0 + 60, P)
    assert obs.update == TaskUpdate("m1", "forwarded-by-gateway", "Wired", 1)
    assert (i.state, i.details, i.state_since, i.created_on) == ("forwarded-by-gateway", "Wired", T0 + 30,
                                                                 T0 + 1)
    assert obs.ended is None and i.next_check > T0 + 60


def test_observe_same_status_changes_nothing():
    i = item("received-by-gateway", "Queued")
    obs = observe(i, result("queued"), T0 + 60, P)
    assert obs.update is None and not obs.unknown_status and i.checks == 1


@pytest.mark.parametrize("status", ["weird", None, "handled", 5])
def test_observe_unknown_status_changes_nothing(status):
    i = item("sent", "Sent")
    obs = observe(i, result(status), T0 + 60, P)
    assert obs.unknown_status and obs.update is None and i.state == "sent"


@pytest.mark.parametrize(("status", "state", "details"), [
    ("delivered", "delivered", "Delivered"), ("read", "delivered", "Read"), ("failed", "failed", "Failed"),
])
def test_observe_final_ends_tracking(status, state, details):
    obs = observe(item(), result(status), T0 + 60, P)
    assert obs.update == TaskUpdate("m1", state, details, 1) and obs.ended is Ending.FINAL


def test_observe_older_answer_is_ignored():
    i = item("sent", "Sent")
    observe(i, result("errored", modified=T0 + 100), T0 + 120, P)
    obs = observe(i, result("wired", modified=T0 + 50), T0 + 130, P)  # an older listing
    assert obs.update is None and i.details == "Errored"


def test_observe_backwards_status_ignored():
    i = item("sent", "Sent")
    assert observe(i, result("wired"), T0 + 60, P).update is None and i.state == "sent"


def test_observe_resets_missing():
    i = item()
    i.missing = 2
    observe(i, result("sent"), T0 + 60, P)
    assert i.missing == 0


def test_observe_unchanged_counts_and_reschedules():
    i = item()
    observe_unchanged(i, T0 + 500, P)
    assert i.checks == 1 and i.next_check > T0 + 500


def test_missing_broadcast_gives_up_after_a_few_answers():
    i = item()
    for n in range(P.max_missing - 1):
        assert observe_broadcast(i, None, T0 + n, P).ended is None
    assert observe_broadcast(i, None, T0 + 99, P).ended is Ending.MISSING


@pytest.mark.parametrize(("status", "details"), [("failed", "Broadcast failed"),
                                                 ("interrupted", "Broadcast interrupted")])
def test_failed_broadcast_fails_the_task(status, details):
    obs = observe_broadcast(item("received-by-gateway", "Queued"), {"status": status}, T0, P)
    assert obs.update == TaskUpdate("m1", "failed", details, 1) and obs.ended is Ending.FINAL


@pytest.mark.parametrize("status", ["pending", "queued", "started", "completed", "sent", None])
def test_broadcast_still_going_changes_nothing(status):
    i = item("received-by-gateway", "Queued")
    i.missing = 1
    obs = observe_broadcast(i, {"status": status}, T0, P)
    assert obs.update is None and obs.ended is None and i.missing == 0


# ---------------------------------------------------------------------------- planning


def test_nothing_due_is_idle():
    assert plan_round([item(next_check=T0 + 60)], T0, P, FolderStats()).kind == "idle"


def test_one_due_is_asked_on_its_own():
    plan = plan_round([item("received-by-gateway", "Queued", broadcast=7),
                       item(uuid="m2", broadcast=8, next_check=T0 + 999)], T0, P, FolderStats())
    assert plan.kind == "broadcasts" and plan.asks == (Ask("broadcast", 7),)  # a sync: 2 pages for 1


def test_two_due_sharing_a_page_are_synced():
    plan = plan_round([item(broadcast=7), item(uuid="m2", broadcast=8)], T0, P, FolderStats())
    assert plan.kind == "sync" and plan.expected_calls == 1


def test_many_due_are_synced():
    items = [item(uuid=f"m{i}", broadcast=i, sent_at=T0 - i) for i in range(10)]
    plan = plan_round(items, T0, P, FolderStats())
    [window] = plan.windows
    assert plan.kind == "sync" and len(plan.due) == 10 and window.before is None
    assert window.after == T0 - 9 - P.created_margin


def test_sync_after_uses_known_created_on():
    items = [item(uuid=f"m{i}", broadcast=i) for i in range(5)]
    for n, i in enumerate(items):
        i.created_on = T0 + n
    assert plan_round(items, T0 + 10, P, FolderStats()).windows[0].after == T0


def test_expensive_sync_loses_to_per_broadcast():
    stats = FolderStats()
    stats.learn(SENT_FOLDER, [T0 - 1000 + n * 0.01 for n in range(100_000)], T0 - 1000, T0)
    items = [item(uuid=f"m{i}", broadcast=i, sent_at=T0 - 500) for i in range(10)]
    assert plan_round(items, T0 + 60, P, stats).kind == "broadcasts"


def test_windows_split_where_the_gap_costs_a_page_and_run_freshest_first():
    stats = FolderStats()
    day = 86400.0
    # a busy workspace: 1,000 rows an hour over the last two days
    stats.learn(SENT_FOLDER, [T0 - 2 * day + n * 3.6 for n in range(48_000)], T0 - 2 * day, T0)
    fresh = [item(uuid=f"f{i}", broadcast=100 + i, sent_at=T0 - 60 - i, fresh_since=T0 - 60)
             for i in range(20)]
    old = [item(uuid=f"o{i}", broadcast=200 + i, sent_at=T0 - day - i * 3600, fresh_since=T0 - day)
           for i in range(3)]
    plan = plan_round(old + fresh, T0, P, stats)
    assert [w.tier for w in plan.windows] == [Tier.FRESH, Tier.OLD, Tier.OLD, Tier.OLD]
    first, *rest = plan.windows
    assert first.sync and set(first.due) == {f"f{i}" for i in range(20)} and first.before is None
    assert all(not w.sync and len(w.asks) == 1 for w in rest)  # one call each beats pages
    assert plan.kind == "mixed" and plan.expected_calls == 1 + 3


def test_old_window_stops_before_the_fresher_one():
    stats = FolderStats()
    stats.learn(SENT_FOLDER, [T0 - 7200 + n * 3.6 for n in range(2000)], T0 - 7200, T0)
    old = [item(uuid=f"o{i}", broadcast=i, sent_at=T0 - 7200 + i * 10, fresh_since=T0 - 7200)
           for i in range(300)]
    fresh = [item(uuid=f"f{i}", broadcast=1000 + i, sent_at=T0 - 30 - i) for i in range(300)]
    plan = plan_round(old + fresh, T0, P, stats)
    assert len(plan.windows) == 2 and all(w.sync for w in plan.windows)
    newer, older = plan.windows
    assert newer.before is None and older.before == pytest.approx(T0 - 7200 + 2990 + P.created_margin)


def test_outbox_read_when_a_due_message_is_queued():
    assert sync_folders([item("received-by-gateway", "Queued")]) == (SENT_FOLDER, OUTBOX)
    assert sync_folders([item("sent", "Sent")]) == (SENT_FOLDER,)


def test_expected_pages_from_own_messages_then_learnt_rows():
    items = [item(uuid=f"m{i}", broadcast=i, sent_at=T0 - 500) for i in range(600)]
    assert expected_pages([SENT_FOLDER], T0 - 1000, T0, items, FolderStats(), P) == 3
    stats = FolderStats()
    stats.learn(SENT_FOLDER, [T0 - 900 + n for n in range(250)], T0 - 1000, T0)
    assert expected_pages([SENT_FOLDER], T0 - 1000, T0, items, stats, P) == 1
    stats.prune(T0 + 10 * ROW_BUCKET)
    assert stats.rows[SENT_FOLDER] == {}
    stats.forget()
    assert stats.rows == {}


def test_folder_stats_partial_buckets_only_grow():
    stats = FolderStats()
    start = 100 * ROW_BUCKET
    stats.learn(SENT_FOLDER, [start + 10, start + 20], start, start + ROW_BUCKET)
    assert stats.rows[SENT_FOLDER][100] == 2
    stats.learn(SENT_FOLDER, [start + 200], start + 150, start + ROW_BUCKET)  # part of the bucket
    assert stats.rows[SENT_FOLDER][100] == 2
    stats.learn(SENT_FOLDER, [], start, start + ROW_BUCKET)  # the whole bucket: what is there now
    assert stats.rows[SENT_FOLDER][100] == 0


# ---------------------------------------------------------------------------- applier


def doc_with(state="sent", details="Sent", ref=123, uuid="m1"):
    t = {"state": state, "state_details": details, "gateway_ref": ref,
         "messages": [{"uuid": uuid, "to": "+1", "message": "x"}],
         "state_history": [{"state": state, "state_details": details, "timestamp": iso(T0)}]}
    return {"_id": "d1", "tasks": [t]}


def test_apply_forward_update_appends_history():
    doc = doc_with()
    out = apply_status_updates(doc, [TaskUpdate("m1", "delivered", "Delivered", 123)], NOW)
    assert out == {"m1": Applied.APPLIED}
    t = doc["tasks"][0]
    assert (t["state"], t["state_details"], t["gateway_ref"]) == ("delivered", "Delivered", 123)
    assert t["state_history"][-1] == {"state": "delivered", "state_details": "Delivered",
                                      "timestamp": "2027-01-15T08:00:00.000Z"}


def test_apply_keeps_a_string_gateway_ref_as_stored():
    doc = doc_with(ref="123")
    apply_status_updates(doc, [TaskUpdate("m1", "delivered", "Delivered", 123)], NOW)
    assert doc["tasks"][0]["gateway_ref"] == "123"


def test_apply_same_state_writes_nothing():
    doc = doc_with()
    out = apply_status_updates(doc, [TaskUpdate("m1", "sent", "Sent", 123)], NOW)
    assert out == {"m1": Applied.UNCHANGED}
    assert len(doc["tasks"][0]["state_history"]) == 1


@pytest.mark.parametrize("state", ["delivered", "failed", "pending", "cleared", "muted", "scheduled"])
def test_apply_never_moves_a_task_out_of_other_states(state):
    doc = doc_with(state=state, details=None)
    out = apply_status_updates(doc, [TaskUpdate("m1", "sent", "Sent", 123)], NOW)
    assert out == {"m1": Applied.NOT_TRACKED} and doc["tasks"][0]["state"] == state


def test_apply_skips_a_task_resent_under_another_broadcast():
    doc = doc_with(ref=999)
    out = apply_status_updates(doc, [TaskUpdate("m1", "delivered", "Delivered", 123)], NOW)
    assert out == {"m1": Applied.NOT_TRACKED}


def test_apply_backwards_is_stale():
    doc = doc_with()
    out = apply_status_updates(doc, [TaskUpdate("m1", "forwarded-by-gateway", "Wired", 123)], NOW)
    assert out == {"m1": Applied.STALE} and doc["tasks"][0]["state"] == "sent"


def test_apply_unknown_message():
    assert apply_status_updates(doc_with(), [TaskUpdate("zz", "sent", "Sent", 123)], NOW) == \
        {"zz": Applied.NOT_TRACKED}


def test_apply_errored_then_sent_again_records_both():
    doc = doc_with()
    apply_status_updates(doc, [TaskUpdate("m1", "received-by-gateway", "Errored", 123)], NOW)
    apply_status_updates(doc, [TaskUpdate("m1", "sent", "Sent", 123)], NOW)
    assert [(h["state"], h["state_details"]) for h in doc["tasks"][0]["state_history"]] == [
        ("sent", "Sent"), ("received-by-gateway", "Errored"), ("sent", "Sent")]


def test_cht_time_writes_like_javascript_to_iso_string():
    from datetime import UTC, datetime

    from transitions.cht.states import format_timestamp
    from transitions.cht.timestamps import cht_time

    # A formatting vector: the literal is the point.
    assert cht_time(1764000000.1239) == "2025-11-24T16:00:00.123Z"
    assert cht_time(1764000000.1239) == format_timestamp(datetime.fromtimestamp(1764000000.1239, UTC))

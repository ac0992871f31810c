"""Status tracking against the real test CouchDB server and the fake RapidPro.

`StatusTracker` is built from real parts (Database, RapidProClient, RateBudget, Ledger). One
FakeClock drives the fake RapidPro, the budget and the tracker's schedule, so hours pass in an
instant and nothing depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from config.env import parse_couch_url
from config.settings import Settings
from playground.fake_rapidpro import DEFAULT_TOKEN, FakeClock, FakeRapidPro
from tests.support.couch_fixtures import MedicDb, create_db
from tests.support.waiting import eventually
from transitions.status import Policy
from worker.couch.client import CouchServer, Database
from worker.outgoing.ledger import Ledger
from worker.rapidpro.budget import Priority, RateBudget
from worker.rapidpro.client import RapidProClient
from worker.status.tracker import StatusTracker

MESSAGES = "/api/v2/messages.json"
BROADCASTS = "/api/v2/broadcasts.json"
HOUR = 3600.0


class StaticToken:
    async def get(self) -> str | None:
        return DEFAULT_TOKEN


# The fake clock starts at a fixed time, just after the hour: the older tiers run on grids aligned
# to the clock, so a start at the real time would make what a test sees depend on the time of day.
CLOCK_START = float(1_789_999_200 + 5)


@dataclass
class Env:
    clock: FakeClock
    fake: FakeRapidPro
    medic: Database
    own: Database
    budget: RateBudget
    client: RapidProClient
    tracker: StatusTracker
    ledger: Ledger
    settings: dict[str, Settings] = field(default_factory=dict)

    def iso(self, ts: float | None = None) -> str:
        t = self.clock() if ts is None else ts
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.budget.wake()

    async def send(self, count: int, fake: FakeRapidPro | None = None) -> list[int]:
        """Real broadcasts on the fake (POSTs; not counted as status calls)."""
        target = fake or self.fake
        ids = []
        for i in range(count):
            b = await self.client.send_broadcast(target.url, DEFAULT_TOKEN, f"tel:+2547000{i:05d}", f"m{i}")
            ids.append(b.id)
        return ids

    async def put_tasks(self, specs: list[tuple[str, dict[str, Any]]], *, sent_ago: float = 600.0) -> None:
        """(doc_id, task) pairs; each task gets a message uuid and CHT-like history."""
        docs = []
        for doc_id, task in specs:
            docs.append({"_id": doc_id, "type": "data_record", "tasks": [task]})
        result = await self.medic.bulk(docs)
        assert all("error" not in item for item in result), result

    def task(self, state: str, gateway_ref: Any = None, details: str | None = None, *,
             sent_ago: float = 600.0) -> dict[str, Any]:
        then = self.iso(self.clock() - sent_ago)
        history = [{"state": "pending", "timestamp": self.iso(self.clock() - sent_ago - 5)}]
        task: dict[str, Any] = {"state": state,
                                "messages": [{"uuid": str(uuidlib.uuid4()), "to": "+254700000001",
                                              "message": "hi"}]}
        if state != "pending":
            entry = {"state": state, "timestamp": then}
            if details:
                entry["state_details"] = details
            history.append(entry)
        task["state_history"] = history
        if details:
            task["state_details"] = details
        if gateway_ref is not None:
            task["gateway_ref"] = gateway_ref
        return task

    async def doc_task(self, doc_id: str) -> dict[str, Any]:
        return (await self.medic.get(doc_id))["tasks"][0]

    def status_calls(self, fake: FakeRapidPro | None = None) -> int:
        target = fake or self.fake
        return target.call_count("GET", MESSAGES) + target.call_count("GET", BROADCASTS)

    async def rounds_until(self, done: Callable[[], Any], *, step: float = HOUR, limit: int = 60) -> int:
        """Run rounds, moving the clock `step` between them, until `done()`; returns rounds run."""
        for n in range(1, limit + 1):
            result = await self.tracker.run_round()
            value = done()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return n
            self.advance(max(result.retry_in, 1.0) if result.retry_in is not None else step)
        raise AssertionError("condition not reached")


@pytest.fixture
async def env(medic_db: MedicDb, fake_rapidpro_factory: Any) -> AsyncIterator[Env]:
    clock = FakeClock(start=CLOCK_START)
    # The fake's dates follow the fake clock, so created_on and the tracker's windows agree.
    fake = await fake_rapidpro_factory(clock=clock, wall_start=clock())
    fake.rate_limit = 10**9
    await asyncio.to_thread(create_db, f"{medic_db.url}-rapidpro")
    couch = CouchServer(parse_couch_url(medic_db.url), timeout=10.0)
    medic = couch.db(medic_db.name)
    own = couch.db(f"{medic_db.name}-rapidpro")
    budget = RateBudget(10**9, clock=clock)
    client = RapidProClient(budget, timeout=5.0)
    settings = {"current": Settings(outgoing_service="rapidpro", rapidpro_url=fake.url)}
    tracker = StatusTracker(medic=medic, own_db=own, client=client, token=StaticToken(),
                            settings=lambda: settings["current"], clock=clock, max_wait=0.0,
                            policy=Policy())
    ledger = Ledger(own, clock=clock)
    try:
        yield Env(clock, fake, medic, own, budget, client, tracker, ledger, settings)
    finally:
        await client.close()
        await couch.close()


async def own_message(env: Env, doc_id: str, task: dict[str, Any], broadcast: int) -> None:
    """A ledger entry as the sender leaves it: the message is the worker's own."""
    message = task["messages"][0]
    claim = await env.ledger.claim(message["uuid"], doc_id, "tel:+254700000001")
    assert claim is not None
    await env.ledger.record_sent(claim, broadcast, None, "pending")


# ---------------------------------------------------------------------------- mapping


async def test_every_status_mapping_in_one_sync(env: Env) -> None:
    statuses = ["queued", "wired", "sent", "delivered", "read", "errored", "failed", "resent",
                "initializing"]
    ids = await env.send(len(statuses))
    env.fake.advance_scripts_on_poll = False
    for bid, status in zip(ids, statuses, strict=True):
        env.fake.set_status(bid, status)
    await env.put_tasks([(f"d-{s}", env.task("received-by-gateway", bid, "Queued"))
                         for bid, s in zip(ids, statuses, strict=True)])

    result = await env.tracker.run_round()  # found at start: asked at once, in one sync
    assert result.plan == "sync" and result.finished
    expected = {
        "queued": ("received-by-gateway", "Queued"),
        "wired": ("forwarded-by-gateway", "Wired"),
        "sent": ("sent", "Sent"),
        "delivered": ("delivered", "Delivered"),
        "read": ("delivered", "Read"),
        "errored": ("received-by-gateway", "Errored"),
        "failed": ("failed", "Failed"),
        "resent": ("sent", "Resent"),
        "initializing": ("received-by-gateway", "Queued"),  # older than Queued: no step back
    }
    for status, (state, details) in expected.items():
        task = await env.doc_task(f"d-{status}")
        assert (task["state"], task.get("state_details")) == (state, details), status
        if status in ("queued", "initializing"):
            assert len(task["state_history"]) == 2  # nothing new: nothing appended
        else:
            assert task["state_history"][-1]["state"] == state
            assert task["state_history"][-1]["state_details"] == details
    assert env.tracker.stats.final == 3
    # sent folder; outbox (some are still queued there); the one failed, asked on its own
    assert env.status_calls() == 3


@pytest.mark.parametrize("status", ["weird-new-status", None, "handled"])
async def test_unknown_status_changes_nothing_and_is_counted(env: Env, status: str | None) -> None:
    [bid] = await env.send(1)
    env.fake.advance_scripts_on_poll = False
    env.fake.set_status(bid, status)
    await env.put_tasks([("u1", env.task("forwarded-by-gateway", bid, "Wired"))])
    await env.rounds_until(lambda: env.tracker.stats.unknown_statuses >= 1, step=60)
    task = await env.doc_task("u1")
    assert (task["state"], task["state_details"], len(task["state_history"])) == \
        ("forwarded-by-gateway", "Wired", 2)
    assert env.tracker.stats.updates_written == 0
    assert env.tracker.tracked()  # still followed


# ---------------------------------------------------------------------------- progression


async def test_progression_recorded_in_order_then_no_more_calls(env: Env) -> None:
    [bid] = await env.send(1)
    task = env.task("received-by-gateway", bid, "Queued", sent_ago=5)
    await env.put_tasks([("p1", task)])
    await own_message(env, "p1", task, bid)
    env.fake.script_statuses(bid, ["wired", "sent", "errored", "sent", "delivered"])

    async def delivered() -> bool:
        return (await env.doc_task("p1"))["state"] == "delivered"

    await env.rounds_until(delivered, step=120)
    final = await env.doc_task("p1")
    steps = [(h["state"], h.get("state_details")) for h in final["state_history"]]
    assert steps == [("pending", None), ("received-by-gateway", "Queued"),
                     ("forwarded-by-gateway", "Wired"), ("sent", "Sent"),
                     ("received-by-gateway", "Errored"), ("sent", "Sent"), ("delivered", "Delivered")]
    assert final["gateway_ref"] == bid
    entry = await env.ledger.get(task["messages"][0]["uuid"])
    assert entry is not None
    assert (entry["task_state"], entry["task_state_details"]) == ("delivered", "Delivered")
    assert entry["state"] == "sent" and entry["broadcast_id"] == bid

    calls = env.status_calls()
    assert calls == 5  # one per-broadcast query per step
    for _ in range(10):
        env.advance(24 * HOUR)
        await env.tracker.run_round()
    assert env.status_calls() == calls
    assert env.tracker.tracked() == {}


# ---------------------------------------------------------------------------- many messages


async def test_ninety_messages_reach_final_states_then_polling_stops(env: Env) -> None:
    env.fake.page_size = 40  # several pages per folder: cursors are followed
    env.tracker.policy = Policy(page_size=40)
    ids = await env.send(90)
    env.fake.advance_scripts_on_poll = False
    states = [("queued", "received-by-gateway", "Queued"), ("wired", "forwarded-by-gateway", "Wired"),
              ("sent", "sent", "Sent")]
    specs = []
    for i, bid in enumerate(ids):
        status, state, details = states[i % 3]
        env.fake.set_status(bid, status)
        specs.append((f"m{i:02d}", env.task(state, bid, details)))
    await env.put_tasks(specs)

    first = await env.tracker.run_round()
    assert first.plan == "sync" and first.updates == 0
    assert len(env.tracker.tracked()) == 90

    finals = ["delivered", "read", "failed"]
    for i, bid in enumerate(ids):
        env.fake.set_status(bid, finals[i % 3] if i % 2 == 0 else "sent")
    env.advance(60)
    await env.tracker.run_round()
    for i, bid in enumerate(ids):
        if i % 2:
            env.fake.set_status(bid, "delivered")
    rounds = await env.rounds_until(lambda: not env.tracker.tracked(), step=60)
    assert rounds <= 2

    docs = {doc_id: await env.doc_task(doc_id) for doc_id, _ in specs}
    assert all(t["state"] in ("delivered", "failed") for t in docs.values())
    for t in docs.values():
        pairs = [(h["state"], h.get("state_details")) for h in t["state_history"]]
        assert all(a != b for a, b in itertools.pairwise(pairs))  # no repeated entries
    assert env.tracker.stats.final == 90
    calls = env.status_calls()
    assert calls <= 20, calls  # CHT: 90 per minute
    for _ in range(5):
        env.advance(24 * HOUR)
        assert (await env.tracker.run_round()).calls == 0
    assert env.status_calls() == calls


async def test_ineligible_tasks_are_never_polled(env: Env) -> None:
    ids = await env.send(12)
    env.fake.advance_scripts_on_poll = False
    ineligible = [
        ("pending", ids[0], None), ("scheduled", ids[1], None), ("muted", ids[2], None),
        ("duplicate", ids[3], None), ("cleared", ids[4], None), ("delivered", ids[5], "Delivered"),
        ("failed", ids[6], "Failed"), ("denied", ids[7], None), ("forwarded-to-gateway", ids[8], None),
        ("sent", None, "Sent"), ("sent", "ATXid_abc123", "Sent"),  # no / another gateway's ref
    ]
    specs = [(f"x{i}", env.task(state, ref, details)) for i, (state, ref, details) in enumerate(ineligible)]
    specs.append(("ok", env.task("sent", str(ids[11]), "Sent")))  # CHT may store it as a string
    await env.put_tasks(specs)
    for bid in ids:
        env.fake.set_status(bid, "delivered")
    before = {doc_id: await env.doc_task(doc_id) for doc_id, _ in specs if doc_id != "ok"}

    await env.rounds_until(lambda: not env.tracker.tracked(), step=HOUR)
    queried = [r.query.get("broadcast") for r in env.fake.requests_to(MESSAGES)]
    assert queried == [[str(ids[11])]]
    assert env.fake.requests_to(BROADCASTS, "GET") == []
    for doc_id, task in before.items():
        assert await env.doc_task(doc_id) == task
    ok = await env.doc_task("ok")
    assert (ok["state"], ok["gateway_ref"]) == ("delivered", str(ids[11]))


# ---------------------------------------------------------------------------- 429


@pytest.mark.parametrize("retry_after_header", [True, False])
async def test_throttled_round_resumes_where_it_stopped(env: Env, retry_after_header: bool) -> None:
    env.fake.page_size = 10
    env.tracker.policy = Policy(page_size=10)
    ids = await env.send(60)
    env.fake.advance_scripts_on_poll = False
    await env.put_tasks([(f"t{i:02d}", env.task("sent", bid, "Sent")) for i, bid in enumerate(ids)])
    for i, bid in enumerate(ids):
        env.fake.set_status(bid, "failed" if i < 10 else "delivered")
    env.advance(600)  # the sends leave the fake's window
    env.fake.rate_window = 300.0
    env.fake.rate_limit = 3
    env.fake.retry_after_header = retry_after_header

    results = []
    for _ in range(200):
        result = await env.tracker.run_round()
        results.append(result)
        if not env.tracker.tracked():
            break
        env.advance(HOUR if result.retry_in is None else max(result.retry_in, 1.0))
    assert not env.tracker.tracked()
    assert env.tracker.stats.final == 60
    assert any(not r.finished for r in results) and env.tracker.stats.throttled >= 1
    assert any(r.plan == "sync" for r in results) and any(r.plan == "resumed" for r in results)

    answered = [r for r in env.fake.requests_to(MESSAGES) if r.status == 200]
    pages = [tuple(sorted((k, tuple(v)) for k, v in r.query.items())) for r in answered]
    assert len(pages) == len(set(pages))  # no page fetched twice: resumed, not restarted
    assert len(pages) == 5 + 1  # sent folder: 5 pages; failed folder: 1
    for i in range(60):
        assert (await env.doc_task(f"t{i:02d}"))["state"] == ("failed" if i < 10 else "delivered")


async def test_throttled_per_broadcast_queries_resume(env: Env) -> None:
    [bid] = await env.send(1)
    env.fake.advance_scripts_on_poll = False
    await env.put_tasks([("a", env.task("received-by-gateway", bid, "Queued"))])
    env.fake.set_status(bid, "delivered")
    env.fake.throttle_next(1, retry_after=90, path=MESSAGES)
    result = await env.tracker.run_round()  # one message: one per-broadcast query (a sync: 2 pages)
    assert result.plan == "broadcasts" and not result.finished and result.retry_in == 90
    env.advance(90)
    result = await env.tracker.run_round()
    assert result.plan == "resumed" and result.finished
    assert not env.tracker.tracked()
    asked = [r.query["broadcast"] for r in env.fake.requests_to(MESSAGES)]
    assert asked == [[str(bid)], [str(bid)]]


# ---------------------------------------------------------------------------- host change


async def test_url_change_rescans_on_the_new_host(env: Env, fake_rapidpro_factory: Any) -> None:
    old_ids = await env.send(5)
    await env.put_tasks([(f"old{i}", env.task("received-by-gateway", bid, "Queued"))
                         for i, bid in enumerate(old_ids)])
    env.fake.advance_scripts_on_poll = False
    await env.tracker.run_round()
    assert len(env.tracker.tracked()) == 5

    new = await fake_rapidpro_factory(clock=env.clock)
    new.rate_limit = 10**9
    new._next_broadcast_id = 900_000  # ids of another host do not collide in this test
    [new_id] = await env.send(1, fake=new)
    new.advance_scripts_on_poll = False
    new.set_status(new_id, "delivered")
    await env.put_tasks([("new0", env.task("received-by-gateway", new_id, "Queued", sent_ago=300))])
    old_calls = env.status_calls()

    env.settings["current"] = Settings(outgoing_service="rapidpro", rapidpro_url=new.url)
    env.tracker.trigger_rescan()
    result = await env.tracker.run_round()
    assert env.tracker.stats.rescans == 1
    assert result.calls >= 1 and env.status_calls() == old_calls  # the old host is not asked
    assert (await env.doc_task("new0"))["state"] == "delivered"

    await env.rounds_until(lambda: not env.tracker.tracked(), step=HOUR)
    assert env.tracker.stats.missing_gave_up == 5
    lookups = new.requests_to(BROADCASTS, "GET")
    assert len(lookups) == 5 * env.tracker.policy.max_missing  # a few tries each, then no more
    calls = env.status_calls(new)
    for _ in range(5):
        env.advance(24 * HOUR)
        await env.tracker.run_round()
    assert env.status_calls(new) == calls
    for i in range(5):
        assert (await env.doc_task(f"old{i}"))["state"] == "received-by-gateway"  # left as it was


async def test_url_change_detected_without_a_trigger(env: Env, fake_rapidpro_factory: Any) -> None:
    [bid] = await env.send(1)
    await env.put_tasks([("o", env.task("sent", bid, "Sent"))])
    await env.tracker.run_round()
    new = await fake_rapidpro_factory(clock=env.clock)
    env.settings["current"] = Settings(outgoing_service="rapidpro", rapidpro_url=new.url)
    await env.tracker.run_round()
    assert env.tracker.stats.rescans == 1
    assert env.status_calls(new) >= 1


async def test_rescan_trigger_runs_a_round_at_once(env: Env) -> None:
    [bid] = await env.send(1)
    await env.put_tasks([("r", env.task("sent", bid, "Sent"))])
    runner = asyncio.create_task(env.tracker.run(interval=3600))
    try:
        # the first round (at start, asked at once) has had its answer: still sent
        await eventually(lambda: any(i.checks for i in env.tracker.tracked().values()))
        env.fake.advance_scripts_on_poll = False
        env.fake.set_status(bid, "delivered")
        env.tracker.trigger_rescan()
        await eventually(lambda: env.tracker.stats.final == 1)
        assert env.tracker.stats.rescans == 1
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_not_in_charge_asks_nothing(env: Env) -> None:
    [bid] = await env.send(1)
    await env.put_tasks([("n", env.task("sent", bid, "Sent"))])
    env.settings["current"] = Settings(outgoing_service="medic-gateway", rapidpro_url=env.fake.url)
    result = await env.tracker.run_round()
    assert result.skipped_reason and "medic-gateway" in result.skipped_reason
    assert env.status_calls() == 0


# ---------------------------------------------------------------------------- broadcasts


@pytest.mark.parametrize("status", ["failed", "interrupted"])
async def test_failed_broadcast_ends_the_task(env: Env, status: str) -> None:
    [bid] = await env.send(1)
    env.fake.fail_broadcast(bid, status)
    await env.put_tasks([("f", env.task("received-by-gateway", bid, "Queued", sent_ago=30))])
    await env.rounds_until(lambda: not env.tracker.tracked(), step=120)
    task = await env.doc_task("f")
    assert task["state"] == "failed"
    assert task["state_details"] == f"Broadcast {status}"
    assert env.fake.call_count("GET", BROADCASTS) == 1


async def test_broadcast_still_sending_is_asked_again_later(env: Env) -> None:
    [bid] = await env.send(1)
    env.fake.fail_broadcast(bid, "started")  # no messages yet, broadcast still running
    await env.put_tasks([("s", env.task("received-by-gateway", bid, "Queued", sent_ago=300))])
    await env.rounds_until(lambda: env.fake.call_count("GET", BROADCASTS) >= 2, step=HOUR)
    task = await env.doc_task("s")
    assert task["state"] == "received-by-gateway" and env.tracker.tracked()
    assert env.tracker.stats.missing_gave_up == 0


# ---------------------------------------------------------------------------- recording


async def test_conflicting_writer_keeps_its_change_and_ours_is_reapplied(env: Env) -> None:
    [bid] = await env.send(1)
    env.fake.advance_scripts_on_poll = False
    env.fake.set_status(bid, "delivered")
    await env.put_tasks([("c", env.task("sent", bid, "Sent"))])
    original_bulk = env.medic.bulk
    interfered = False

    async def bulk_after_another_writer(docs: Any) -> list[dict[str, Any]]:
        nonlocal interfered
        docs = list(docs)
        if not interfered and any(d["_id"] == "c" for d in docs):
            interfered = True
            current = await env.medic.get("c")
            current["fields"] = {"edited": "by a phone"}
            await env.medic.put(current)
        return await original_bulk(docs)

    env.medic.bulk = bulk_after_another_writer  # type: ignore[method-assign]
    await env.rounds_until(lambda: not env.tracker.tracked(), step=HOUR)
    doc = await env.medic.get("c")
    assert interfered
    assert doc["fields"] == {"edited": "by a phone"}
    assert doc["tasks"][0]["state"] == "delivered"
    assert [h["state"] for h in doc["tasks"][0]["state_history"]] == ["pending", "sent", "delivered"]


async def test_task_moved_by_another_writer_is_left_alone(env: Env) -> None:
    [bid] = await env.send(1)
    env.fake.advance_scripts_on_poll = False
    await env.put_tasks([("m", env.task("sent", bid, "Sent"))])
    await env.tracker.run_round()
    doc = await env.medic.get("m")
    doc["tasks"][0]["state"] = "cleared"  # CHT cleared it meanwhile
    await env.medic.put(doc)
    env.fake.set_status(bid, "delivered")
    env.advance(HOUR)
    await env.tracker.run_round()
    assert (await env.doc_task("m"))["state"] == "cleared"
    assert not env.tracker.tracked()


async def test_horizon_stops_tracking_and_leaves_the_state(env: Env) -> None:
    [bid] = await env.send(1)
    await env.put_tasks([("h", env.task("sent", bid, "Sent"))])
    env.fake.advance_scripts_on_poll = False
    await env.rounds_until(lambda: env.tracker.stats.expired == 1, step=12 * HOUR, limit=30)
    calls = env.status_calls()
    assert 3 <= calls <= 25  # one per round here (rounds 12 h apart); never after the horizon
    env.advance(24 * HOUR)
    await env.tracker.run_round()
    assert env.status_calls() == calls
    assert (await env.doc_task("h"))["state"] == "sent"


async def test_old_messages_beyond_the_horizon_are_not_asked_at_start(env: Env) -> None:
    [bid] = await env.send(1)
    await env.put_tasks([("old", env.task("sent", bid, "Sent", sent_ago=8 * 24 * HOUR))])
    result = await env.tracker.run_round()
    assert result.calls == 0 and env.tracker.stats.expired == 1


async def test_priority_is_status(env: Env) -> None:
    # Sends and status share the budget; status calls must queue behind sends.
    assert Priority.STATUS > Priority.SEND


# ---------------------------------------------------------------------------- freshness tiers


@pytest.mark.parametrize(("age", "bound"), [(0.0, 2 * 60.0), (20 * 60.0, 6 * 60.0), (3 * HOUR, HOUR)],
                         ids=["fresh", "up-to-an-hour", "older"])
async def test_a_change_is_recorded_within_its_tiers_bound(env: Env, age: float, bound: float) -> None:
    """Default interval (60 s), a round every interval. The change comes just after a check of
    the message: the worst case."""
    ids = await env.send(3)
    env.fake.advance_scripts_on_poll = False
    for bid in ids:
        env.fake.set_status(bid, "sent")
    await env.put_tasks([(f"t{i}", env.task("sent", bid, "Sent", sent_ago=0)) for i, bid in enumerate(ids)])
    await env.tracker.run_round()
    uuid = next(i.uuid for i in env.tracker.tracked().values() if i.doc_id == "t0")
    started = env.clock()
    while env.clock() - started < age:  # growing older, asked as its tier says
        env.advance(60 if age < HOUR else HOUR / 2)
        await env.tracker.run_round()
    checks = env.tracker.tracked()[uuid].checks
    for _ in range(100):  # until the next check of t0
        env.advance(60)
        await env.tracker.run_round()
        if env.tracker.tracked()[uuid].checks > checks:
            break
    env.advance(1)
    changed_at = env.clock()
    env.fake.set_status(ids[0], "delivered")
    while (await env.doc_task("t0"))["state"] != "delivered":
        assert env.clock() - changed_at <= bound
        env.advance(59)
        await env.tracker.run_round()
    recorded = datetime.fromisoformat(
        (await env.doc_task("t0"))["state_history"][-1]["timestamp"].replace("Z", "+00:00")).timestamp()
    assert 0 < recorded - changed_at <= bound
    assert [(await env.doc_task(f"t{i}"))["state"] for i in (1, 2)] == ["sent", "sent"]


async def test_a_fresh_message_is_asked_every_interval_and_an_empty_answer_costs_no_delay(env: Env) -> None:
    env.fake.message_delay = 90.0  # RapidPro creates the message late: the first answers are empty
    [bid] = await env.send(1)
    env.fake.advance_scripts_on_poll = False
    await env.put_tasks([("e", env.task("received-by-gateway", bid, "Queued", sent_ago=0))])
    assert (await env.tracker.run_round()).plan == "idle"  # first ask one interval after sending
    for _ in range(2):
        env.advance(60)
        result = await env.tracker.run_round()
        assert result.plan == "broadcasts" and result.calls == 1  # empty, and asked again next interval
    env.fake.set_status(bid, "delivered")
    env.advance(60)
    await env.tracker.run_round()
    assert (await env.doc_task("e"))["state"] == "delivered"
    assert env.fake.call_count("GET", BROADCASTS) == 0  # an empty answer this early is no failure


async def test_short_budget_delays_status_never_sends_and_healthz_says_so(env: Env) -> None:
    env.fake.page_size = 1
    ids = await env.send(30)
    env.fake.advance_scripts_on_poll = False
    for bid in ids:
        env.fake.set_status(bid, "delivered")
    await env.put_tasks([(f"b{i:02d}", env.task("sent", bid, "Sent", sent_ago=(i + 1) * 4 * HOUR))
                         for i, bid in enumerate(ids)])
    # Status may use 20 of 40 (half an hour of sends kept back; no floor, which is not the subject).
    budget = RateBudget(40, clock=env.clock, start_seconds=HOUR, send_reserve_seconds=HOUR / 2, floor_share=0)
    client = RapidProClient(budget, timeout=5.0)
    tracker = StatusTracker(medic=env.medic, own_db=env.own, client=client, token=StaticToken(),
                            settings=lambda: env.settings["current"], clock=env.clock, max_wait=0.0,
                            policy=Policy(page_size=1))
    try:
        result = await tracker.run_round()
        assert not result.finished and result.retry_in is not None and result.retry_in > 0
        assert result.calls == 20 and env.status_calls() == 20
        freshness = tracker.health()["freshness"]
        assert freshness["degraded"] and freshness["reason"] == "rapidpro_budget_short"
        # sending does not wait for status tracking: its reserve is there
        sent = await client.send_broadcast(env.fake.url, DEFAULT_TOKEN, "tel:+254700000999", "urgent",
                                           max_wait=0.0)
        assert sent.id > 0
        for _ in range(200):  # the budget refills (40 an hour): status catches up, resuming
            if not tracker.tracked():
                break
            env.advance(max(result.retry_in or 60.0, 1.0))
            result = await tracker.run_round()
        assert not tracker.tracked() and tracker.stats.final == 30
        assert tracker.health()["freshness"]["degraded"] is False
    finally:
        await client.close()


async def test_remembered_messages_are_forgotten_once_the_view_drops_them(env: Env) -> None:
    [bid] = await env.send(1)
    await env.put_tasks([("gone", env.task("sent", bid, "Sent", sent_ago=8 * 24 * HOUR))])
    await env.tracker.run_round()
    assert env.tracker.health()["remembered"] == {"past_horizon": 1, "unknown_to_rapidpro": 0}
    doc = await env.medic.get("gone")
    doc["tasks"][0]["state"] = "cleared"
    await env.medic.put(doc)
    await env.tracker.run_round()
    assert env.tracker.health()["remembered"] == {"past_horizon": 0, "unknown_to_rapidpro": 0}


async def test_after_a_restart_old_messages_cost_one_round_then_go_by_their_age(env: Env) -> None:
    ids = await env.send(40)
    env.fake.advance_scripts_on_poll = False
    for bid in ids:
        env.fake.set_status(bid, "sent")
    await env.put_tasks([(f"r{i:02d}", env.task("sent", bid, "Sent", sent_ago=24 * HOUR + i * 60))
                         for i, bid in enumerate(ids)])
    first = await env.tracker.run_round()  # at start: every one asked about at once
    assert first.calls >= 1 and all(i.checks == 1 for i in env.tracker.tracked().values())
    later = 0
    for _ in range(20):  # the next 20 minutes: hourly tier, nothing asked yet
        env.advance(60)
        later += (await env.tracker.run_round()).calls
    assert later == 0
    env.fake.set_status(ids[7], "delivered")
    await env.rounds_until(lambda: env.tracker.stats.final == 1, step=60, limit=61)
    assert (await env.doc_task("r07"))["state"] == "delivered"

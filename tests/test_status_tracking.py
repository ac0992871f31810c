"""Status tracking against the real test CouchDB server and the fake RapidPro, as each RapidPro
version answers (every test runs against each profile of playground/rapidpro_profiles.py).

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
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from config.env import parse_couch_url
from config.settings import Settings
from playground.fake_rapidpro import DEFAULT_TOKEN, FakeClock, FakeRapidPro, RecordedBroadcast
from playground.rapidpro_profiles import PROFILE_NAMES
from tests.support.couch_fixtures import MedicDb, create_db
from tests.support.waiting import eventually
from transitions.outgoing.broadcasts import BroadcastKey, gateway_ref, ledger_ref
from transitions.status.rules import Policy
from worker.couch.client import CouchServer, Database
from worker.outgoing.ledger import Ledger
from worker.rapidpro.budget import Priority, RateBudget
from worker.rapidpro.client import RapidProClient
from worker.status.report import StatusReport
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


@pytest.fixture(params=PROFILE_NAMES)
def rapidpro_profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
    fakes: list[FakeRapidPro] = field(default_factory=list)  # every fake a test sends through

    def iso(self, ts: float | None = None) -> str:
        t = self.clock() if ts is None else ts
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.budget.wake()

    @property
    def ids(self) -> bool:
        """This RapidPro names broadcasts by an integer id (every version but the future one)."""
        return "id" in self.fake.profile.broadcast_fields

    async def send(self, count: int, fake: FakeRapidPro | None = None) -> list[BroadcastKey]:
        """Real broadcasts on the fake (POSTs; not counted as status calls); what the worker would
        store as gateway_ref for each: the id, or the uuid on a server without ids."""
        target = fake or self.fake
        refs: list[BroadcastKey] = []
        for i in range(count):
            b = await self.client.send_broadcast(target.url, DEFAULT_TOKEN, f"tel:+2547000{i:05d}", f"m{i}")
            ref = gateway_ref(b.id, b.uuid)
            assert ref is not None
            refs.append(ref)
        return refs

    def sent_broadcast(self, ref: Any) -> RecordedBroadcast | None:
        for fake in self.fakes:
            try:
                return fake.broadcast(ref if not isinstance(ref, str) or not ref.isdigit() else int(ref))
            except KeyError:
                continue
        return None

    def recipient(self, ref: Any, sent_ago: float) -> tuple[str, str]:
        """(to, text) of the message a broadcast sent, as CHT's task holds them. The broadcast and
        its messages are dated as the task says it was sent, so RapidPro's records and CHT's
        history agree (they come from the same send)."""
        b = self.backdate(ref, sent_ago)
        if b is None:
            return "+254700000001", "hi"
        return b.urns[0].removeprefix("tel:"), b.raw_text if isinstance(b.raw_text, str) else "hi"

    def backdate(self, ref: Any, ago: float) -> RecordedBroadcast | None:
        """Date a broadcast sent through the fake (and its messages) `ago` seconds back."""
        b = self.sent_broadcast(ref)
        if b is None:
            return None
        created = datetime.fromtimestamp(self.clock() - ago, UTC)
        b.created_on = created
        for m in b.messages:
            m.created_on = m.modified_on = created + timedelta(seconds=1)
            m.sent_on = m.sent_on and m.created_on
        return b

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
        to, text = self.recipient(gateway_ref, sent_ago)
        task: dict[str, Any] = {"state": state,
                                "messages": [{"uuid": str(uuidlib.uuid4()), "to": to, "message": text}]}
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
        yield Env(clock, fake, medic, own, budget, client, tracker, ledger, settings, [fake])
    finally:
        await client.close()
        await couch.close()


async def own_message(env: Env, doc_id: str, task: dict[str, Any], broadcast: BroadcastKey) -> None:
    """A ledger entry as the sender leaves it: the message is the worker's own, with the id and
    the uuid its RapidPro answered."""
    message = task["messages"][0]
    claim = await env.ledger.claim(message["uuid"], doc_id, f"tel:{message['to']}")
    assert claim is not None
    sent = env.fake.broadcast(broadcast)
    fields = env.fake.profile.broadcast_fields
    await env.ledger.record_sent(claim, sent.id if "id" in fields else None,
                                 sent.uuid if "uuid" in fields else None, "pending")


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
    mapping = {
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
    # What this version reports for each (2020 and 2023 have no `read`; 2023 no `resent`, …).
    expected = {status: mapping[env.fake.profile.statuses.get(status, status)] for status in statuses}
    for status, (state, details) in expected.items():
        task = await env.doc_task(f"d-{status}")
        assert (task["state"], task.get("state_details")) == (state, details), status
        if status in ("queued", "initializing"):
            assert len(task["state_history"]) == 2  # nothing new: nothing appended
        else:
            assert task["state_history"][-1]["state"] == state
            assert task["state_history"][-1]["state_details"] == details
    assert env.tracker.stats.final == 3
    # sent folder; outbox (some are still queued there); the one failed, asked on its own (on a
    # server without ids, where it cannot be, the failed folder)
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
    assert entry["state"] == "sent" and ledger_ref(entry) == bid

    # One query per step: by broadcast id, then — once its uuid is known, on servers that give
    # one — by the message's uuid. A server without ids: a sync finds it first (sent, outbox).
    asked = [sorted(r.query) for r in env.fake.requests_to(MESSAGES)]
    first = [["after", "folder"]] * 2 if not env.ids else [["broadcast"]]
    later = [["uuid"]] if env.fake.profile.name in ("current", "future") else [["broadcast"]]
    assert asked == first + later * 4
    calls = env.status_calls()
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
    assert queried == ([[str(ids[11])]] if env.ids else [None])  # else one sync
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
    # (A server without ids: only a sync can find it.)
    assert result.plan == ("broadcasts" if env.ids else "sync")
    assert not result.finished and result.retry_in == 90
    env.advance(90)
    result = await env.tracker.run_round()
    assert result.plan == "resumed" and result.finished
    assert not env.tracker.tracked()
    asked = [r.query.get("broadcast", r.query.get("folder")) for r in env.fake.requests_to(MESSAGES)]
    assert asked == ([[str(bid)], [str(bid)]] if env.ids else [["sent"], ["sent"]])


# ---------------------------------------------------------------------------- host change


async def test_url_change_rescans_on_the_new_host(env: Env, fake_rapidpro_factory: Any) -> None:
    old_ids = await env.send(5)
    await env.put_tasks([(f"old{i}", env.task("received-by-gateway", bid, "Queued"))
                         for i, bid in enumerate(old_ids)])
    env.fake.advance_scripts_on_poll = False
    await env.tracker.run_round()
    assert len(env.tracker.tracked()) == 5

    new = await fake_rapidpro_factory(clock=env.clock)
    env.fakes.append(new)
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
    # RapidPro before Sept 2024 reports an interrupted broadcast as failed.
    legacy = env.fake.profile.legacy_broadcast_statuses
    assert task["state_details"] == ("Broadcast failed" if legacy else f"Broadcast {status}")
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
    """A message that stays `sent` for ever (cht-core #9002: a channel that never reports): asked
    about until STATUS_TRACKING_HORIZON, then left `sent` and counted apart from final states."""
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
    part = (await StatusReport(env.tracker).health())
    ended = {s.labels["how"]: s.value for family in StatusReport(env.tracker).metrics(part)
             if family.name == "cht_rapidpro_status_tracking_ended" for s in family.samples
             if s.name.endswith("_total")}
    assert ended == {"final": 0, "past_horizon": 1, "unknown_to_rapidpro": 0}


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
    task = env.task("received-by-gateway", bid, "Queued", sent_ago=0)
    await env.put_tasks([("e", task)])
    await own_message(env, "e", task, bid)  # the worker's own send: it knows when it sent it
    assert (await env.tracker.run_round()).plan == "idle"  # first ask one interval after sending
    for _ in range(2):
        env.advance(60)
        result = await env.tracker.run_round()
        # empty, and asked again next interval (a server without ids: a sync of sent and outbox)
        assert (result.plan, result.calls) == (("broadcasts", 1) if env.ids else ("sync", 2))
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
        assert sent.id or sent.uuid
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
    ids = await env.send(41)
    env.fake.advance_scripts_on_poll = False
    for bid in ids:
        env.fake.set_status(bid, "sent")
    # The channel reports delivery (one of its messages of that time was delivered): messages
    # `sent` on it are not parked (see test_a_channel_that_never_reports_delivery_…).
    reported = ids.pop()
    env.fake.set_status(reported, "delivered")
    env.backdate(reported, 24 * HOUR + 20 * 60)
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


# ---------------------------------------------------------------------------- another sender's


async def test_messages_another_sender_sent_show_their_state_from_their_first_round(env: Env) -> None:
    """Tasks that reach the worker already in received-by-gateway with a gateway_ref (CHT's own
    sender's just before a switch, another tool's): their send time is not the worker's to know,
    so the first round asks RapidPro about every one, and learns its created_on."""
    statuses = ["queued", "wired", "sent", "delivered", "read", "errored", "failed"]
    ids = await env.send(len(statuses))
    env.fake.advance_scripts_on_poll = False
    for ref, status in zip(ids, statuses, strict=True):
        env.fake.set_status(ref, status)
    assert (await env.tracker.run_round()).plan == "idle"  # the worker runs; then they appear
    env.advance(30)
    await env.put_tasks([(f"o-{status}", env.task("received-by-gateway", ref, "Queued", sent_ago=5))
                         for ref, status in zip(ids, statuses, strict=True)])
    await env.tracker.run_round()
    for status in statuses:
        reported = env.fake.profile.statuses.get(status, status)
        task = await env.doc_task(f"o-{status}")
        expected = {"queued": "received-by-gateway", "errored": "received-by-gateway", "wired":
                    "forwarded-by-gateway", "sent": "sent", "delivered": "delivered", "read": "delivered",
                    "failed": "failed"}[reported]
        assert task["state"] == expected, status
    known = [item for item in env.tracker.tracked().values()]
    assert known and all(item.created_on is not None for item in known)  # windows exact from now on
    calls = env.status_calls()
    env.advance(60)
    await env.tracker.run_round()  # the three left, by their created_on: one sync or a query each
    assert env.status_calls() - calls <= 3


# ---------------------------------------------------------------------------- delivery reports

RELAYER = ("0d9a4b1c-2e3f-4a5b-8c7d-6e5f4a3b2c1d", "Android relayer")


async def test_a_channel_that_never_reports_delivery_is_learnt_and_its_sent_messages_parked(env: Env) -> None:
    """Messages of a channel that never reports delivery stay `sent`: past the up-to-an-hour tier
    they are parked, and only the hourly sync of the failed folder looks for them; /healthz
    names the channel. A later failure still shows; a report from the channel resumes them."""
    env.fake.channel_for = lambda urn: RELAYER if int(urn[-5:]) < 30 else None
    ids = await env.send(60)
    env.fake.advance_scripts_on_poll = False
    tasks = []
    for ref in ids:
        env.fake.set_status(ref, "sent")
        task = env.task("sent", ref, "Sent", sent_ago=0)
        tasks.append((f"c{len(tasks):02d}", task))
    await env.put_tasks(tasks)
    for (doc_id, task), ref in zip(tasks, ids, strict=True):
        await own_message(env, doc_id, task, ref)
    relayed, reported = ids[:30], ids[30:]
    for _ in range(90):  # an hour and a half: the other channel's reports come in
        env.advance(60)
        await env.tracker.run_round()
        if env.clock() - CLOCK_START > 600:
            for ref in reported:
                env.fake.set_status(ref, "delivered")
    assert env.tracker.stats.final == 30
    [channel] = env.tracker.health()["channels_without_delivery_reports"]
    assert (channel["uuid"], channel["name"], channel["messages_parked"]) == (*RELAYER, 30)
    tracked = env.tracker.tracked()
    assert len(tracked) == 30 and all(item.parked for item in tracked.values())

    # A day later: one call an hour, to the failed folder only.
    env.fake.requests.clear()
    for _ in range(24):
        env.advance(HOUR)
        await env.tracker.run_round()
    folders = [r.query.get("folder") for r in env.fake.requests if r.method == "GET"]
    assert folders == [["failed"]] * 24

    env.fake.set_status(relayed[0], "failed")  # a late failure still shows within the hour
    env.advance(HOUR)
    await env.tracker.run_round()
    assert (await env.doc_task("c00"))["state"] == "failed"

    # The channel reports after all (a new message through it is delivered): the parked ones are
    # asked about hourly again, and their reports show.
    [new] = await env.send(1)  # to +254700000000: through the relayer
    new_task = env.task("received-by-gateway", new, "Queued", sent_ago=0)
    await env.put_tasks([("new", new_task)])
    await own_message(env, "new", new_task, new)
    env.fake.set_status(new, "delivered")
    env.fake.set_status(relayed[1], "delivered")
    env.fake.set_status(relayed[2], "delivered")
    await env.rounds_until(lambda: env.tracker.stats.final == 32, step=60, limit=3)  # the new one
    assert env.tracker.health()["channels_without_delivery_reports"] == []
    assert not any(item.parked for item in env.tracker.tracked().values())
    await env.rounds_until(lambda: env.tracker.stats.final == 34, step=60, limit=61)


# ---------------------------------------------------------------------------- incremental tracking


async def test_changes_are_followed_without_reading_the_view_again(env: Env) -> None:
    """After the start-up load, a newly sent message, a state another writer wrote, a message
    that leaves and a deleted doc are all learnt from `_changes`; the view is not read again."""
    ids = await env.send(5)
    env.fake.advance_scripts_on_poll = False
    for bid, status in zip(ids, ["queued", "sent", "sent", "sent", "sent"], strict=True):
        env.fake.set_status(bid, status)
    await env.put_tasks([("a", env.task("received-by-gateway", ids[0], "Queued")),
                         ("b", env.task("sent", ids[1], "Sent")),
                         ("gone", env.task("sent", ids[2], "Sent"))])
    await env.tracker.run_round()
    loaded = env.tracker.stats.view_pages
    assert loaded >= 1
    uuid_of = {item.doc_id: item.uuid for item in env.tracker.tracked().values()}
    assert set(uuid_of) == {"a", "b", "gone"}

    # newly sent: a new doc, and a new task on a doc already tracked
    await env.put_tasks([("c", env.task("sent", ids[3], "Sent"))])
    doc_b = await env.medic.get("b")
    doc_b["tasks"].append(env.task("sent", ids[4], "Sent"))
    new_on_b = doc_b["tasks"][1]["messages"][0]["uuid"]
    # a state written by another writer, a message leaving, a doc deleted
    doc_a = await env.medic.get("a")
    doc_a["tasks"][0]["state"], doc_a["tasks"][0]["state_details"] = "sent", "Sent"
    gone = await env.medic.get("gone")
    gone["_deleted"] = True
    result = await env.medic.bulk([doc_a, doc_b, gone])
    assert all("error" not in item for item in result), result
    doc_b2 = await env.medic.get("b")
    doc_b2["tasks"][0]["state"] = "delivered"  # delivered as another writer saw it: leaves
    await env.medic.bulk([doc_b2])

    env.advance(HOUR)
    await env.tracker.run_round()
    tracked = env.tracker.tracked()
    by_doc = {(item.doc_id, item.state) for item in tracked.values()}
    assert by_doc == {("a", "sent"), ("b", "sent"), ("c", "sent")}
    assert uuid_of["b"] not in tracked and new_on_b in tracked
    assert tracked[uuid_of["a"]].details == "Sent"
    assert env.tracker.stats.view_pages == loaded  # no full re-read


async def test_the_view_is_paged_by_key_and_every_message_loaded_once(env: Env) -> None:
    """Pages smaller than a doc's messages: paged by start_key_doc_id, every row once."""
    ids = await env.send(7)
    env.fake.advance_scripts_on_poll = False
    for bid in ids:
        env.fake.set_status(bid, "sent")
    specs = []
    for n, doc_id in enumerate(["p1", "p2", "p3"]):
        specs.append((doc_id, env.task("sent", ids[n], "Sent")))
    await env.put_tasks(specs)
    # a doc with three messages in one task, between the others
    three = env.task("sent", ids[3], "Sent")
    three["messages"] += [{"uuid": str(uuidlib.uuid4()), "to": "+254700000077", "message": f"x{i}"}
                          for i in range(2)]
    await env.put_tasks([("p2b", three)])
    tracker = StatusTracker(medic=env.medic, own_db=env.own, client=env.client, token=StaticToken(),
                            settings=lambda: env.settings["current"], clock=env.clock, max_wait=0.0,
                            view_page_size=2)
    await tracker.run_round()
    assert tracker.stats.view_pages >= 4
    assert sorted(item.doc_id for item in tracker.tracked().values()) == \
        ["p1", "p2", "p2b", "p2b", "p2b", "p3"]


async def test_own_messages_load_from_the_ledger_without_reading_their_docs(env: Env) -> None:
    """The worker's own message in the state its ledger projected: its doc is not read at load."""
    if not env.ids:
        pytest.skip("a server without ids: messages are recognised by text, which is in the doc")
    [bid] = await env.send(1)
    env.fake.advance_scripts_on_poll = False
    env.fake.set_status(bid, "queued")
    task = env.task("received-by-gateway", bid, "Queued", sent_ago=300)
    await env.put_tasks([("own", task)])
    await own_message(env, "own", task, bid)
    await env.ledger.ensure_views()
    reads: list[Any] = []
    all_docs = env.medic.all_docs

    async def counting(**params: Any) -> dict[str, Any]:
        reads.append(params.get("keys"))
        return await all_docs(**params)

    env.medic.all_docs = counting  # type: ignore[method-assign]
    try:
        await env.tracker.run_round()
    finally:
        del env.medic.all_docs
    [item] = env.tracker.tracked().values()
    assert (item.doc_id, item.state, item.details, item.own) == \
        ("own", "received-by-gateway", "Queued", True)
    assert ["own"] not in reads

"""High availability: two and three worker processes on one CHT, one active through the lease.

Each worker runs as a subprocess (tests/support/daemon.py) with its own INSTANCE_ID, which its
RapidPro requests carry in their User-Agent: the fake RapidPro's log tells who asked what.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from playground.fake_rapidpro import BROADCASTS_PATH, DEFAULT_TOKEN
from tests.support.couch_fixtures import couch_request, create_db, delete_db, put_settings, seed_design_docs
from tests.support.daemon import Daemon
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.daemon]

TTL = 3.0
INCOMING_KEY = "ha-incoming-key"


def worker_env(db_url: str, name: str, **extra: str) -> dict[str, str]:
    return {"COUCH_URL": db_url, "INSTANCE_ID": name, "LEASE_TTL": str(TTL),
            "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "RAPIDPRO_INCOMING_KEY": INCOMING_KEY,
            "RAPIDPRO_TIMEOUT": "2", "COUCH_TIMEOUT": "3", "IN_DOUBT_CHECK_AFTER": "4",
            "STATUS_POLL_INTERVAL": "0.5", "SHUTDOWN_TIMEOUT": "3", **extra}


def pending_doc(prefix: str, i: int) -> dict[str, Any]:
    return {"_id": f"{prefix}-{i:03d}", "type": "data_record",
            "tasks": [{"state": "pending", "messages": [
                {"uuid": str(uuid.uuid4()), "to": f"+2547001{i:05d}", "message": f"{prefix} {i}"}]}]}


async def add_pending(db_url: str, prefix: str, count: int) -> list[str]:
    docs = [pending_doc(prefix, i) for i in range(count)]
    status, _ = await asyncio.to_thread(couch_request, "POST", f"{db_url}/_bulk_docs", {"docs": docs})
    assert status == 201
    return [d["_id"] for d in docs]


def tasks_of(db_url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    status, body = couch_request("POST", f"{db_url}/_all_docs?include_docs=true", {"keys": ids})
    assert status == 200
    return {row["id"]: row["doc"]["tasks"][0] for row in body["rows"] if row.get("doc")}


async def all_sent(db_url: str, ids: list[str]) -> bool:
    tasks = await asyncio.to_thread(tasks_of, db_url, ids)
    return len(tasks) == len(ids) and all(t["state"] == "received-by-gateway" for t in tasks.values())


def healthz(daemon: Daemon) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=10) as response:
        return json.loads(response.read())


def instance(request: Any) -> str | None:
    """The instance id in `cht-rapidpro-worker/<version> (<instance id>)`."""
    agent = request.user_agent or ""
    if not agent.startswith("cht-rapidpro-worker/") or not agent.endswith(")"):
        return None
    return agent[agent.rindex("(") + 1:-1]


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def started(daemon: Daemon) -> dict[str, Any]:
    return daemon.wait_event("worker_started", timeout=30)


@pytest.fixture
async def settings_for(medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, {
        "sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake_rapidpro.url}},
        "default_country_code": 254})
    return fake_rapidpro


@pytest.fixture
def daemons():
    running: list[Daemon] = []

    def start(env: dict[str, str]) -> Daemon:
        daemon = Daemon(env).start()
        running.append(daemon)
        return daemon

    yield start
    for daemon in running:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.signal(signal.SIGCONT)  # a test may have left one paused
        daemon.kill()


async def start_pair(medic_db, daemons, *names: str, **extra: str) -> list[Daemon]:
    """Start the workers one after the other: the first takes the lease, the others stand by."""
    started_ones = []
    for name in names:
        daemon = daemons(worker_env(medic_db.url, name, **extra))
        event = await asyncio.to_thread(started, daemon)
        assert event["role"] == ("active" if not started_ones else "standby"), event
        started_ones.append(daemon)
    return started_ones


async def test_two_workers_one_sends_and_tracks_the_other_stands_by(medic_db, settings_for, daemons):
    fake = settings_for
    a, b = await start_pair(medic_db, daemons, "worker-a", "worker-b")
    ids = await add_pending(medic_db.url, "two", 20)
    await eventually(lambda: all_sent(medic_db.url, ids), timeout=60)

    texts = Counter(b.raw_text for b in fake.broadcasts)
    assert sorted(texts) == sorted(f"two {i}" for i in range(20)) and max(texts.values()) == 1
    askers = Counter(instance(r) for r in fake.requests)
    assert set(askers) == {"worker-a"}, askers  # the standby never called RapidPro
    health_a, health_b = await asyncio.to_thread(healthz, a), await asyncio.to_thread(healthz, b)
    assert (health_a["role"], health_a["lease_holder"]) == ("active", "worker-a")
    assert (health_b["role"], health_b["lease_holder"]) == ("standby", "worker-a")
    def readyz() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{b.port}/readyz", timeout=10) as response:
            return json.loads(response.read())
    assert (await asyncio.to_thread(readyz))["ready"] is True

    # Every worker serves the webhook: the standby stores an incoming SMS.
    body = json.dumps({"id": str(uuid.uuid4()), "from": "+254700000009", "content": "hello"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{b.port}/api/v2/sms/rapidpro/incoming-messages", data=body, method="POST",
        headers={"Authorization": f"Token {INCOMING_KEY}", "Content-Type": "application/json"})
    def post() -> int:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    assert await asyncio.to_thread(post) == 200


async def sent_an_hour_ago(fake: Any, db_url: str, prefix: str, count: int) -> list[str]:
    """Messages another sender sent an hour ago, delivered since: due for a status query now."""
    when = datetime.fromtimestamp(time.time() - 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    docs = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Token {DEFAULT_TOKEN}"}) as http:
        for i in range(count):
            to, text = f"+2547002{i:05d}", f"{prefix} {i}"
            body = {"urns": [f"tel:{to}"], "text": text}
            async with http.post(fake.url + BROADCASTS_PATH, json=body) as answer:
                assert answer.status == 201
                broadcast = (await answer.json())["id"]
            fake.set_status(broadcast, "delivered")
            docs.append({"_id": f"{prefix}-{i:03d}", "type": "data_record", "tasks": [{
                "state": "received-by-gateway", "gateway_ref": broadcast,
                "state_history": [{"state": "received-by-gateway", "timestamp": when}],
                "messages": [{"uuid": str(uuid.uuid4()), "to": to, "message": text}]}]})
    status, _ = await asyncio.to_thread(couch_request, "POST", f"{db_url}/_bulk_docs", {"docs": docs})
    assert status == 201
    return [d["_id"] for d in docs]


async def all_delivered(db_url: str, ids: list[str]) -> bool:
    tasks = await asyncio.to_thread(tasks_of, db_url, ids)
    return len(tasks) == len(ids) and all(t["state"] == "delivered" for t in tasks.values())


async def test_status_queries_are_as_many_as_with_one_worker(medic_db, settings_for, daemons):
    """One worker on one CHT and three on another, side by side on one RapidPro, follow the same
    messages to delivery: the three ask RapidPro as often as the one (±10% + 5), all through
    their holder."""
    fake = settings_for
    trio_db = f"{medic_db.url}-trio"
    await asyncio.to_thread(create_db, trio_db)
    try:
        await asyncio.to_thread(seed_design_docs, trio_db)
        await asyncio.to_thread(put_settings, trio_db, {
            "sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake.url}},
            "default_country_code": 254})
        not_yet = {"sms": {"outgoing_service": "medic-gateway", "rapidpro": {"url": fake.url}},
                   "default_country_code": 254}
        for db in (medic_db.url, trio_db):
            await asyncio.to_thread(put_settings, db, not_yet)
        solo_ids = await sent_an_hour_ago(fake, medic_db.url, "solo", 10)
        trio_ids = await sent_an_hour_ago(fake, trio_db, "trio", 10)
        await start_pair(medic_db, daemons, "solo")
        for name in ("trio-a", "trio-b", "trio-c"):
            await asyncio.to_thread(started, daemons(worker_env(trio_db, name)))
        # Sending switched to the worker: as CHT does, every non-final message is asked about.
        for db in (medic_db.url, trio_db):
            await asyncio.to_thread(put_settings, db, {**not_yet, "sms": {**not_yet["sms"],
                                                                          "outgoing_service": "rapidpro"}})
        await eventually(lambda: all_delivered(medic_db.url, solo_ids), timeout=60)
        await eventually(lambda: all_delivered(trio_db, trio_ids), timeout=60)

        asked = Counter(instance(r) for r in fake.requests if r.path.endswith("/messages.json"))
        trio = {name: asked[name] for name in ("trio-a", "trio-b", "trio-c")}
        assert asked["solo"] > 0 and trio["trio-a"] > 0
        assert trio["trio-b"] == trio["trio-c"] == 0, trio  # only the holder asks
        assert abs(sum(trio.values()) - asked["solo"]) <= 0.1 * asked["solo"] + 5, asked
    finally:
        for suffix in ("", "-rapidpro"):
            await asyncio.to_thread(delete_db, trio_db + suffix)


async def test_kill_9_of_the_holder_another_takes_over_and_sends(medic_db, settings_for, daemons):
    fake = settings_for
    a, b, c = await start_pair(medic_db, daemons, "k-a", "k-b", "k-c")
    killed_at = time.time()
    a.kill()
    ids = await add_pending(medic_db.url, "after-kill", 3)

    def acquired(events: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((e for e in events if e.get("event") == "lease_acquired"), None)
    winner = await asyncio.to_thread(lambda: next(
        d for d in eventually_sync(lambda: [d for d in (b, c) if acquired(d.events)], TTL + 20)))
    event = acquired(winner.events)
    assert event is not None and at(event) - killed_at <= TTL + 5, event
    await eventually(lambda: all_sent(medic_db.url, ids), timeout=TTL + 30)
    posts = [r for r in fake.requests if r.method == "POST" and r.path == BROADCASTS_PATH]
    assert {instance(r) for r in posts} == {event["instance_id"]}
    assert Counter(b.raw_text for b in fake.broadcasts) == Counter(f"after-kill {i}" for i in range(3))
    loser = c if winner is b else b
    assert not acquired(loser.events)

    # The old holder restarted: a standby.
    again = daemons(worker_env(medic_db.url, "k-a"))
    assert (await asyncio.to_thread(started, again))["role"] == "standby"
    health = await asyncio.to_thread(healthz, again)
    assert (health["role"], health["lease_holder"]) == ("standby", event["instance_id"])


def eventually_sync(find: Any, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.05)
    raise TimeoutError("nobody took the lease over")


async def test_sigterm_of_the_holder_hands_over_at_once(medic_db, settings_for, daemons):
    fake = settings_for
    a, b = await start_pair(medic_db, daemons, "t-a", "t-b")
    signalled = time.time()
    code, _ = await asyncio.to_thread(a.terminate_and_wait)
    assert code == 0
    released = a.wait_event("lease_released")
    taken = await asyncio.to_thread(b.wait_event, "lease_acquired", 10)
    assert at(released) <= at(taken) and at(taken) - signalled <= 5, (signalled, released, taken)
    ids = await add_pending(medic_db.url, "after-term", 2)
    await eventually(lambda: all_sent(medic_db.url, ids), timeout=30)
    posts = [r for r in fake.requests if r.method == "POST" and r.path == BROADCASTS_PATH]
    assert [instance(r) for r in posts] == ["t-b", "t-b"]


async def test_a_paused_holder_is_replaced_after_the_ttl_and_acts_no_more(medic_db, settings_for, daemons):
    """SIGSTOP: the process lives (no same-host shortcut), so the standby waits out the TTL."""
    fake = settings_for
    a, b = await start_pair(medic_db, daemons, "p-a", "p-b")
    stopped_at = time.time()
    a.signal(signal.SIGSTOP)
    taken = await asyncio.to_thread(b.wait_event, "lease_acquired", TTL + 20)
    # Not before the TTL (counted from the last renewal the standby saw, at most one renew
    # interval, TTL / 3, before the pause), within TTL + 5 s.
    assert TTL * 2 / 3 - 0.2 <= at(taken) - stopped_at <= TTL + 5, taken
    ids = await add_pending(medic_db.url, "paused", 3)
    await eventually(lambda: all_sent(medic_db.url, ids), timeout=30)
    a.signal(signal.SIGCONT)
    lost = await asyncio.to_thread(a.wait_event, "lease_lost", 20)
    assert lost["instance_id"] == "p-a"
    # It stepped down on its own clock (the renewal too old) before it read the lease again:
    # the holder it names is the one its next read finds.
    assert await eventually(lambda: asyncio.to_thread(
        lambda: (lambda h: (h["role"], h["lease_holder"]))(healthz(a)) == ("standby", "p-b")), timeout=10)
    # Resumed, the old holder asked RapidPro nothing: every send since the pause is the new one's.
    await asyncio.to_thread(a.wait_event, "active_session_stopped", 20)
    posts = [r for r in fake.requests if r.method == "POST" and r.path == BROADCASTS_PATH]
    assert [instance(r) for r in posts] == ["p-b"] * 3
    assert Counter(b.raw_text for b in fake.broadcasts) == Counter(f"paused {i}" for i in range(3))


async def test_a_holder_cut_off_from_couchdb_stops_before_another_takes_over(
        medic_db, settings_for, daemons, couch_server_url):
    fake = settings_for
    host_port = couch_server_url.split("@")[-1].split("/")[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    try:
        proxied_url = medic_db.url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
        a = daemons(worker_env(proxied_url, "c-a"))
        assert (await asyncio.to_thread(started, a))["role"] == "active"
        b = daemons(worker_env(medic_db.url, "c-b"))
        assert (await asyncio.to_thread(started, b))["role"] == "standby"
        ids = await add_pending(medic_db.url, "before-cut", 5)
        await eventually(lambda: all_sent(medic_db.url, ids), timeout=30)

        proxy.set_mode("hang")  # connections accepted, nothing forwarded
        lost = await asyncio.to_thread(a.wait_event, "lease_lost", TTL + 20)
        stopped = await asyncio.to_thread(a.wait_event, "active_session_stopped", 10)
        taken = await asyncio.to_thread(b.wait_event, "lease_acquired", TTL + 20)
        assert at(lost) < at(taken) and at(stopped) < at(taken), (lost, stopped, taken)
        ids = await add_pending(medic_db.url, "after-cut", 5)
        await eventually(lambda: all_sent(medic_db.url, ids), timeout=30)
        texts = Counter(b.raw_text for b in fake.broadcasts)
        assert max(texts.values()) == 1 and len(texts) == 10
        after = [r for r in fake.requests if instance(r) == "c-b"]
        assert after and all(instance(r) == "c-b" for r in fake.requests[fake.requests.index(after[0]):])

        proxy.set_mode("up")  # back: the old holder stays a standby
        def is_standby() -> bool:
            health = healthz(a)
            return health["role"] == "standby" and health["lease_holder"] == "c-b"
        await eventually(lambda: asyncio.to_thread(is_standby), timeout=30)
    finally:
        await proxy.stop()

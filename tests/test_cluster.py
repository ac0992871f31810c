"""Exactly once and failover on a clustered CouchDB (n = 3, as CHT's 3-node setup): three worker
processes, worker i connected to node i, pending messages written through every node, while a
node is paused or cut off from the others.

Needs a real 3-node cluster and a command that pauses and partitions its nodes
(TEST_COUCH_CLUSTER_URLS, TEST_COUCH_CLUSTER_CTL: tests/support/cluster.py); skipped without.
Each scenario takes a minute or two.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from tests.support.cluster import Cluster, conflicted_docs
from tests.support.couch_fixtures import couch_request, create_db, delete_db, put_settings, seed_design_docs
from tests.support.daemon import Daemon
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TTL = 5.0
RATE = 5.0  # pending messages a second, through the nodes in turn


@pytest.fixture
def cluster() -> Cluster:
    found = Cluster.from_environment()
    if found is None:
        pytest.skip("no CouchDB cluster given (TEST_COUCH_CLUSTER_URLS, TEST_COUCH_CLUSTER_CTL)")
    return found


@dataclass
class ClusterDb:
    name: str
    node_urls: list[str]  # the database through node 1, 2, 3

    @property
    def url(self) -> str:
        return self.node_urls[0]


@pytest.fixture
async def cluster_db(cluster: Cluster, fake_rapidpro: FakeRapidPro) -> AsyncIterator[ClusterDb]:
    name = f"medic-c{uuid.uuid4().hex[:8]}"
    db = ClusterDb(name, [f"{url}/{name}" for url in cluster.urls])
    await asyncio.to_thread(cluster.restore)
    await asyncio.to_thread(create_db, db.url)
    await asyncio.to_thread(seed_design_docs, db.url)
    await asyncio.to_thread(put_settings, db.url, {
        "sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake_rapidpro.url}},
        "default_country_code": 254})
    try:
        yield db
    finally:
        await asyncio.to_thread(cluster.restore)
        for suffix in ("", "-rapidpro"):
            await asyncio.to_thread(delete_db, db.url + suffix)


def worker_env(db_url: str, name: str) -> dict[str, str]:
    return {"COUCH_URL": db_url, "INSTANCE_ID": name, "LEASE_TTL": str(TTL), "LOG_LEVEL": "info",
            "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "RAPIDPRO_TIMEOUT": "2", "COUCH_TIMEOUT": "3",
            "IN_DOUBT_CHECK_AFTER": "4", "SWEEP_INTERVAL": "5", "STATUS_POLL_INTERVAL": "1",
            "SHUTDOWN_TIMEOUT": "3", "RAPIDPRO_CALLS_PER_HOUR": "1000000"}


@dataclass
class Load:
    """Pending messages written at RATE through the nodes in turn; a write through a node that
    does not answer goes through the next one (the same doc: the same revision either way)."""

    db: ClusterDb
    written: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        nodes = itertools.cycle(range(3))
        for i in itertools.count():
            if stop.is_set():
                return
            doc = {"_id": f"m-{i:04d}", "type": "data_record", "tasks": [{"state": "pending", "messages": [
                {"uuid": str(uuid.uuid4()), "to": f"+2547002{i:05d}", "message": f"m-{i:04d}"}]}]}
            await self._put(doc, next(nodes))
            self.written.append(doc["_id"])
            with_timeout = asyncio.create_task(stop.wait())
            await asyncio.wait({with_timeout}, timeout=1 / RATE)
            with_timeout.cancel()

    async def _put(self, doc: dict[str, Any], first: int) -> None:
        for attempt in range(30):
            url = self.db.node_urls[(first + attempt) % 3]
            try:
                status, _ = await asyncio.to_thread(couch_request, "PUT", f"{url}/{doc['_id']}", doc, 5.0)
            except OSError:
                continue
            if status in (201, 202, 409):
                return
        raise AssertionError(f"could not write {doc['_id']}")


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def active_spans(daemons: dict[str, Daemon], killed_at: dict[str, float]) -> list[tuple[str, float, float]]:
    """(worker, from, to) of each time a worker held the lease, from its own log."""
    spans = []
    for name, daemon in daemons.items():
        began: float | None = None
        for event in daemon.events:
            if event.get("event") == "lease_acquired":
                began = at(event)
            elif event.get("event") == "lease_lost" and began is not None:
                spans.append((name, began, at(event)))
                began = None
        if began is not None:
            spans.append((name, began, killed_at.get(name, time.time())))
    return spans


def overlap(spans: list[tuple[str, float, float]]) -> float:
    total = 0.0
    for (a, a0, a1), (b, b0, b1) in itertools.combinations(spans, 2):
        if a != b:
            total += max(0.0, min(a1, b1) - max(a0, b0))
    return total


def docs(db_url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    status, body = couch_request("POST", f"{db_url}/_all_docs?include_docs=true", {"keys": ids}, timeout=60)
    assert status == 200, body
    return {row["id"]: row["doc"] for row in body["rows"] if row.get("doc")}


async def scenario(cluster: Cluster, db: ClusterDb, fake: FakeRapidPro,
                   fault: Callable[[dict[str, Daemon], dict[str, float]], Awaitable[None]]) -> dict[str, Any]:
    """Three workers, the load during `fault`, then the checks every scenario shares."""
    daemons: dict[str, Daemon] = {}
    killed_at: dict[str, float] = {}
    try:
        for i, name in enumerate(("w1", "w2", "w3")):
            daemons[name] = Daemon(worker_env(db.node_urls[i], name)).start()
            event = await asyncio.to_thread(daemons[name].wait_event, "worker_started", 60)
            assert event["role"] == ("active" if i == 0 else "standby"), event
        load, stop = Load(db), asyncio.Event()
        writer = asyncio.create_task(load.run(stop))
        await eventually(lambda: len(fake.broadcasts) >= 5, timeout=30)
        began = time.time()
        await fault(daemons, killed_at)
        await asyncio.to_thread(cluster.restore)
        stop.set()
        await writer
        ids = list(load.written)

        def settled() -> bool:
            found = docs(db.url, ids)
            return len(found) == len(ids) and all(
                doc["tasks"][0]["state"] not in ("pending", "forwarded-to-gateway") for doc in found.values())

        await eventually(lambda: asyncio.to_thread(settled), timeout=180, interval=1.0)
        sent = Counter(b.raw_text for b in fake.broadcasts)
        assert not [text for text, n in sent.items() if n > 1], "sent twice"
        assert sorted(sent) == sorted(ids), "a message was lost (or one not written was sent)"
        spans = active_spans(daemons, killed_at)
        assert overlap(spans) == 0.0, spans

        def no_conflicts() -> bool:
            return not conflicted_docs(f"{db.url}-rapidpro", couch_request)

        try:
            await eventually(lambda: asyncio.to_thread(no_conflicts), timeout=90, interval=1.0)
        except TimeoutError:
            left = await asyncio.to_thread(conflicted_docs, f"{db.url}-rapidpro", couch_request)
            raise AssertionError(f"conflicts left in the worker's database: {left}") from None
        return {"began": began, "spans": spans, "daemons": daemons}
    finally:
        for daemon in daemons.values():
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.signal(signal.SIGCONT)
            daemon.kill()


def takeover_after(spans: list[tuple[str, float, float]], name: str, since: float) -> float:
    """Seconds from `since` until another worker than `name` took the lease."""
    return min(b0 for worker, b0, _ in spans if worker != name and b0 >= since) - since


async def test_a_paused_node_neither_doubles_nor_loses_a_message(cluster, cluster_db, fake_rapidpro):
    async def pause_node_3(_daemons: dict[str, Daemon], _killed: dict[str, float]) -> None:
        await asyncio.to_thread(cluster.pause, 3)
        await asyncio.sleep(30)
        await asyncio.to_thread(cluster.resume, 3)

    result = await scenario(cluster, cluster_db, fake_rapidpro, pause_node_3)
    assert {name for name, _, _ in result["spans"]} == {"w1"}  # the holder's node stayed whole


async def test_the_holders_node_cut_off_hands_over_within_the_ttl(cluster, cluster_db, fake_rapidpro):
    cut: dict[str, float] = {}

    async def partition_node_1(_daemons: dict[str, Daemon], _killed: dict[str, float]) -> None:
        await asyncio.to_thread(cluster.partition, 1)
        cut["at"] = time.time()
        await asyncio.sleep(60)
        await asyncio.to_thread(cluster.heal)

    result = await scenario(cluster, cluster_db, fake_rapidpro, partition_node_1)
    spans = result["spans"]
    w1_stopped = min(end for name, began, end in spans if name == "w1" and end >= cut["at"])
    assert w1_stopped - cut["at"] <= TTL  # the minority holder stops acting within the TTL
    assert takeover_after(spans, "w1", cut["at"]) <= TTL + 5


async def test_the_holder_killed_while_cut_off_is_replaced_and_nothing_is_lost(
        cluster, cluster_db, fake_rapidpro):
    cut: dict[str, float] = {}

    async def partition_then_kill(daemons: dict[str, Daemon], killed: dict[str, float]) -> None:
        await asyncio.to_thread(cluster.partition, 1)
        cut["at"] = time.time()
        await asyncio.sleep(10)
        daemons["w1"].kill()
        killed["w1"] = time.time()
        await asyncio.sleep(50)
        await asyncio.to_thread(cluster.heal)

    result = await scenario(cluster, cluster_db, fake_rapidpro, partition_then_kill)
    assert takeover_after(result["spans"], "w1", cut["at"]) <= TTL + 5

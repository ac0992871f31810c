"""Writes a clustered CouchDB stores on too few copies (202, `accepted`) decide nothing, and
conflicting revisions are settled — played on any server: a proxy answers chosen writes as a
coordinator answers when too few copies took them, and conflicts are made with `new_edits: false`.
The same behaviours on a real 3-node cluster: tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from playground.fake_rapidpro import DEFAULT_TOKEN
from tests.support.couch_fixtures import couch_request, put_settings
from tests.support.http_proxy import CountingProxy
from tests.support.outgoing import get_doc, put_doc, rapidpro_settings, task, wait_state
from tests.support.waiting import eventually
from transitions.cht.timestamps import cht_time
from transitions.lease.rules import LEASE_DOC_ID
from transitions.outgoing.dispatch import CLAIMED, SENT
from worker.outgoing.ledger import LEDGER_PREFIX

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture
async def proxy(couch_server_url: str) -> AsyncIterator[CountingProxy]:
    proxy = CountingProxy(couch_server_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


def proxied(medic_db: Any, proxy: CountingProxy) -> str:
    user, password = "admin", "pass"
    base = medic_db.server_url.split("@")[0].removeprefix("http://")
    if ":" in base:
        user, password = base.split(":", 1)
    return proxy.url(user, password, medic_db.name)


def env(db_url: str, **extra: str) -> dict[str, str]:
    return {"COUCH_URL": db_url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN,
            "CHECKPOINT_INTERVAL": "0.2", "RAPIDPRO_TIMEOUT": "2", "RAPIDPRO_CALLS_PER_HOUR": "1000000",
            **extra}


def leaves(db_url: str, doc_id: str) -> list[dict[str, Any]]:
    status, doc = couch_request("GET", f"{db_url}/{doc_id}?conflicts=true")
    assert status == 200, doc
    return [doc, *doc.get("_conflicts", [])]


async def test_a_claim_stored_on_too_few_copies_is_never_sent_on_then_sent_once(
        proxy, medic_db, fake_rapidpro, in_process_workers):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    own = f"{medic_db.name}-rapidpro"
    proxy.accept_only = lambda db, doc_id: db == own and doc_id.startswith(LEDGER_PREFIX)
    worker = await in_process_workers.start(env(proxied(medic_db, proxy)))
    message = task("pending", text="only once")
    await put_doc(medic_db.url, {"_id": "q1", "type": "data_record", "tasks": [message]})
    # The claim is written, answered "accepted", and tried again: never sent on.
    await eventually(lambda: len(proxy.accepted) >= 2, timeout=20)
    assert fake_rapidpro.broadcasts == []
    assert worker.sender.stats.sent == 0

    proxy.accept_only = None  # the cluster answers with a quorum again
    await wait_state(medic_db.url, "q1", "received-by-gateway", timeout=30)
    assert [b.raw_text for b in fake_rapidpro.broadcasts] == ["only once"]
    entry = await asyncio.to_thread(get_doc, f"{medic_db.url}-rapidpro",
                                    LEDGER_PREFIX + message["messages"][0]["uuid"])
    assert entry["state"] == SENT and entry["attempts"] >= 2  # our own unsent claim, taken over
    assert "_conflicts" not in entry


async def test_a_holder_whose_renewal_is_only_accepted_steps_down_at_once(
        proxy, medic_db, in_process_workers):
    own = f"{medic_db.name}-rapidpro"
    worker = await in_process_workers.start(env(proxied(medic_db, proxy), LEASE_TTL="6", INSTANCE_ID="solo"))
    assert worker.lease.role == "active"
    generation = worker.lease.generation
    proxy.accept_only = lambda db, doc_id: db == own and doc_id == LEASE_DOC_ID
    stepped = time.monotonic()
    await eventually(lambda: worker.lease.role == "standby", timeout=10)
    # At its first renewal (every LEASE_TTL / 3), not when the TTL runs out.
    assert time.monotonic() - stepped <= 2 + 1
    assert not worker.lease.may_act()
    # A take-over answered "accepted" is no take-over either.
    await eventually(lambda: len(proxy.accepted) >= 3, timeout=10)
    assert worker.lease.role == "standby"

    proxy.accept_only = None
    await eventually(lambda: worker.lease.role == "active", timeout=20)
    assert worker.lease.generation > generation
    status, doc = await asyncio.to_thread(couch_request, "GET",
                                          f"{medic_db.url}-rapidpro/{LEASE_DOC_ID}?conflicts=true")
    assert status == 200 and "_conflicts" not in doc


def conflicting(db_url: str, doc_id: str, revisions: list[dict[str, Any]]) -> None:
    """Writes sibling revisions of one doc as a cluster's copies can leave them."""
    docs = []
    for i, body in enumerate(revisions):
        docs.append({"_id": doc_id, "_rev": f"1-{uuidlib.uuid4().hex}", **body, "n": i})
    status, result = couch_request("POST", f"{db_url}/_bulk_docs", {"docs": docs, "new_edits": False})
    assert status in (201, 202), result


def claim(uuid: str, owner: str, age: float, **extra: Any) -> dict[str, Any]:
    at = time.time() - age
    return {"type": "dispatch", "uuid": uuid, "doc_id": "c1", "urn": "tel:+254700000001", "state": CLAIMED,
            "claimed_at": cht_time(at), "claimed_at_epoch": at, "owner": owner, "attempts": 1,
            "writer": {"instance": owner, "nonce": uuidlib.uuid4().hex}, **extra}


async def contested(medic_db: Any, fake: Any, state: str, text: str, *, ages: tuple[float, float]
                    ) -> tuple[str, dict[str, Any], str]:
    """A message whose ledger entry holds two claims of other workers, `ages` seconds old, as a
    cluster's copies can leave them: (the worker db's URL, the task, the message uuid)."""
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake.url))
    own = f"{medic_db.url}-rapidpro"
    message = task(state, text=text)
    uuid = message["messages"][0]["uuid"]
    await asyncio.to_thread(couch_request, "PUT", own)
    await asyncio.to_thread(conflicting, own, LEDGER_PREFIX + uuid, [
        claim(uuid, f"elsewhere:{i}", age) for i, age in enumerate(ages, start=1)])
    return own, message, uuid


async def test_an_outcome_among_conflicting_revisions_is_what_the_task_shows(
        medic_db, fake_rapidpro, in_process_workers):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    worker = await in_process_workers.start(env(medic_db.url))
    own = f"{medic_db.url}-rapidpro"
    message = task("pending", text="sent by another")
    uuid = message["messages"][0]["uuid"]
    await asyncio.to_thread(conflicting, own, LEDGER_PREFIX + uuid, [
        claim(uuid, "elsewhere:1", 5.0),
        claim(uuid, "elsewhere:2", 5.0, state=SENT, broadcast_id=4242, broadcast_status="queued"),
    ])
    await put_doc(medic_db.url, {"_id": "c1", "type": "data_record", "tasks": [message]})
    await wait_state(medic_db.url, "c1", "received-by-gateway", timeout=20)
    assert (await asyncio.to_thread(get_doc, medic_db.url, "c1"))["tasks"][0]["gateway_ref"] == 4242
    assert fake_rapidpro.broadcasts == []
    assert len(await asyncio.to_thread(leaves, own, LEDGER_PREFIX + uuid)) == 1  # the claim deleted
    assert worker.sender.stats.reprojected >= 1  # (the sweep may find the doc too)


async def test_conflicting_stale_claims_are_merged_in_doubt_and_rapidpro_decides(
        medic_db, fake_rapidpro, in_process_workers):
    own, message, uuid = await contested(medic_db, fake_rapidpro, "forwarded-to-gateway", "nobody knows",
                                         ages=(300.0, 300.0))
    await put_doc(medic_db.url, {"_id": "c1", "type": "data_record", "tasks": [message]})
    await in_process_workers.start(env(medic_db.url, IN_DOUBT_CHECK_AFTER="4"))
    # Neither claim recorded an outcome and either may have sent: merged in doubt, RapidPro has
    # no broadcast for it, so it is sent now, once.
    await wait_state(medic_db.url, "c1", "received-by-gateway", timeout=60)
    assert [b.raw_text for b in fake_rapidpro.broadcasts] == ["nobody knows"]
    remaining = await asyncio.to_thread(leaves, own, LEDGER_PREFIX + uuid)
    assert len(remaining) == 1 and remaining[0]["state"] == SENT
    assert sorted(h["owner"] for h in remaining[0]["history"][:2]) == ["elsewhere:1", "elsewhere:2"]


async def test_a_fresh_conflicting_claim_of_someone_else_holds_the_message_back(
        proxy, medic_db, fake_rapidpro, in_process_workers):
    # Another worker's claim, just made (it may be sending right now), beside a stale one.
    own, message, uuid = await contested(medic_db, fake_rapidpro, "pending", "wait for it", ages=(0.0, 300.0))
    # COUCH_TIMEOUT 3: a claim is stale after 2 x RAPIDPRO_TIMEOUT + 3 + 10 = 17 s.
    await in_process_workers.start(env(proxied(medic_db, proxy), COUCH_TIMEOUT="3", IN_DOUBT_CHECK_AFTER="4"))
    await put_doc(medic_db.url, {"_id": "c1", "type": "data_record", "tasks": [message]})
    entry_path = f"/{medic_db.name}-rapidpro/{LEDGER_PREFIX}{uuid}"

    def reads() -> int:
        return sum(1 for method, path in proxy.requests if method == "GET" and path == entry_path)

    # Read, found contested, and read again later (the change is retried, not dropped) ...
    await eventually(lambda: reads() >= 2, timeout=20)
    assert fake_rapidpro.broadcasts == []
    # ... until the other claim has gone stale: then neither is known to have sent nothing, so
    # RapidPro is asked, finds nothing, and the message goes out once.
    await wait_state(medic_db.url, "c1", "received-by-gateway", timeout=60)
    assert [b.raw_text for b in fake_rapidpro.broadcasts] == ["wait for it"]
    assert len(await asyncio.to_thread(leaves, own, LEDGER_PREFIX + uuid)) == 1

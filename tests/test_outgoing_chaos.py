"""Chaos: the daemon killed with SIGKILL again and again during a burst of sends."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from tests.support.couch_fixtures import couch_request, put_settings
from tests.support.daemon import Daemon
from tests.support.fake_rapidpro import DEFAULT_TOKEN
from tests.support.waiting import eventually
from transitions.dispatch import IN_DOUBT_DETAILS

COUNT = 300


def pending_doc(i: int) -> dict:
    return {"_id": f"burst-{i:03d}", "type": "data_record",
            "tasks": [{"state": "pending", "messages": [
                {"uuid": str(uuid.uuid4()), "to": f"+2547000{i:05d}", "message": f"msg-{i:03d}"}]}]}


def all_tasks(db_url: str) -> dict[str, dict]:
    status, body = couch_request("POST", f"{db_url}/_all_docs?include_docs=true",
                                 {"keys": [f"burst-{i:03d}" for i in range(COUNT)]})
    assert status == 200
    return {row["id"]: row["doc"]["tasks"][0] for row in body["rows"] if row.get("doc")}


async def test_kill_9_during_a_burst_never_sends_a_message_twice(medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, {
        "sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake_rapidpro.url}},
        "default_country_code": 254})
    env = {"COUCH_URL": medic_db.url, "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "LOG_LEVEL": "info",
           "RAPIDPRO_TIMEOUT": "2", "COUCH_TIMEOUT": "3", "SWEEP_INTERVAL": "1"}
    docs = [pending_doc(i) for i in range(COUNT)]
    # Half is pending before the first start (found by the sweep), half arrives through the feed.
    await asyncio.to_thread(couch_request, "POST", f"{medic_db.url}/_bulk_docs", {"docs": docs[:150]})

    for kill_after in (40, 140):
        daemon = Daemon(env).start()
        try:
            if kill_after == 40:
                await asyncio.to_thread(daemon.wait_event, "worker_started")
                await asyncio.to_thread(couch_request, "POST", f"{medic_db.url}/_bulk_docs",
                                        {"docs": docs[150:]})
            await eventually(lambda n=kill_after: len(fake_rapidpro.broadcasts) >= n, timeout=60)
        finally:
            daemon.kill()  # SIGKILL, mid-burst

    final = Daemon(env).start()
    try:
        def settled() -> bool:
            return all(t["state"] != "pending" for t in all_tasks(medic_db.url).values())
        await eventually(lambda: asyncio.to_thread(settled), timeout=90, interval=0.2)
    finally:
        final.kill()

    sent_texts = Counter(b.raw_text for b in fake_rapidpro.broadcasts)
    assert max(sent_texts.values()) == 1, "a message was sent twice"
    by_text = {b.raw_text: b.id for b in fake_rapidpro.broadcasts}
    tasks = await asyncio.to_thread(all_tasks, medic_db.url)
    in_doubt = 0
    for i in range(COUNT):
        task = tasks[f"burst-{i:03d}"]
        text = f"msg-{i:03d}"
        if task["state"] == "forwarded-to-gateway":
            assert task["state_details"] == IN_DOUBT_DETAILS
            in_doubt += 1
        else:
            assert task["state"] == "received-by-gateway", task
            assert task["gateway_ref"] == by_text[text]
    assert in_doubt <= 2 * 8  # at most what was in flight at the two kills
    print(f"chaos: {len(by_text)} broadcasts, {in_doubt} in doubt")

"""Chaos: the daemon killed with SIGKILL again and again during a burst of sends."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from playground.fake_rapidpro import DEFAULT_TOKEN
from tests.support.couch_fixtures import couch_request, put_settings
from tests.support.daemon import Daemon
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.daemon]

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
    # IN_DOUBT_CHECK_AFTER at its lowest (twice RAPIDPRO_TIMEOUT): claims the kills left without
    # an outcome are looked up in RapidPro within seconds.
    env = {"COUCH_URL": medic_db.url, "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "LOG_LEVEL": "info",
           "RAPIDPRO_TIMEOUT": "2", "COUCH_TIMEOUT": "3", "SWEEP_INTERVAL": "1", "IN_DOUBT_CHECK_AFTER": "4",
           # 300 sends in a burst; a fresh worker has ten seconds of its budget (the rate is not
           # the subject here).
           "RAPIDPRO_CALLS_PER_HOUR": "1000000"}
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
            # Nothing pending, and nothing left in doubt: every claim found or re-sent.
            return all(t["state"] == "received-by-gateway" for t in all_tasks(medic_db.url).values())
        try:
            await eventually(lambda: asyncio.to_thread(settled), timeout=120, interval=0.2)
        except TimeoutError:
            pass  # the checks below say what is left
        resolved = [e for e in final.events if e.get("event") == "in_doubt_resolved"]
    finally:
        final.kill()

    sent_texts = Counter(b.raw_text for b in fake_rapidpro.broadcasts)
    assert max(sent_texts.values()) == 1, "a message was sent twice"
    by_text = {b.raw_text: b.id for b in fake_rapidpro.broadcasts}
    tasks = await asyncio.to_thread(all_tasks, medic_db.url)
    in_doubt = [t for t in tasks.values() if t["state"] == "forwarded-to-gateway"]
    assert in_doubt == [], f"{len(in_doubt)} left in doubt: {in_doubt[0]['state_details']}"
    for i in range(COUNT):
        task = tasks[f"burst-{i:03d}"]
        assert task["state"] == "received-by-gateway", task
        assert task["gateway_ref"] == by_text[f"msg-{i:03d}"]  # none lost: each has its broadcast
    assert len(by_text) == COUNT
    how = Counter(e.get("resolution") for e in resolved)
    print(f"chaos: {len(by_text)} broadcasts, 0 double, 0 in doubt; resolved by the last run: {dict(how)}")

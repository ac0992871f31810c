"""/metrics (parsed with prometheus_client's own parser) and /readyz, on the worker in-process."""

from __future__ import annotations

import asyncio
import json
import uuid as uuidlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from playground.fake_rapidpro import DEFAULT_TOKEN
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import couch_request, put_settings
from tests.support.metrics import Scraper
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually
from tests.support.workers import InProcessWorkers
from worker.app import Worker
from worker.outgoing.report import PAUSE_REASONS, pause_reason_label
from worker.rapidpro.budget import RateBudget
from worker.rapidpro.client import RapidProClient

KEY = "incoming-test-key"


def settings_for(url: str) -> dict[str, Any]:
    return {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": url}}, "default_country_code": 254}


def pending_doc(doc_id: str, text: str) -> dict[str, Any]:
    return {"_id": doc_id, "type": "data_record",
            "tasks": [{"state": "pending", "messages": [{"uuid": str(uuidlib.uuid4()), "to": "+254700000001",
                                                         "message": text}],
                       "state_history": [{"state": "pending", "timestamp": iso_ago()}]}]}


async def put_tracked(medic_db: Any, fake: Any, text: str, *, sent_ago: float) -> int:
    """A message another sender sent `sent_ago` seconds ago, now tracked in CHT: its broadcast id."""
    async with RapidProClient(RateBudget(3600)) as client:
        broadcast = await client.send_broadcast(fake.url, DEFAULT_TOKEN, "tel:+254700000009", text)
    tracked = {"_id": "tracked", "type": "data_record", "tasks": [{
        "state": "received-by-gateway", "state_details": "Queued", "gateway_ref": broadcast.id,
        "messages": [{"uuid": str(uuidlib.uuid4()), "to": "+254700000009", "message": text}],
        "state_history": [{"state": "received-by-gateway", "timestamp": iso_ago(sent_ago)}]}]}
    status, body = await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/tracked", tracked)
    assert status in (201, 202), body
    return broadcast.id


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def start(workers: InProcessWorkers, couch_url: str, **env: str) -> Worker:
    values = {"COUCH_URL": couch_url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN,
              "RAPIDPRO_INCOMING_KEY": KEY, "CHECKPOINT_INTERVAL": "0.2", "RAPIDPRO_TIMEOUT": "2",
              "STATUS_POLL_INTERVAL": "0.3", **env}
    return await workers.start(values)


async def test_metrics_move_as_messages_are_sent_tracked_and_received(medic_db, fake_rapidpro, http,
                                                                     in_process_workers):
    await asyncio.to_thread(put_settings, medic_db.url, settings_for(fake_rapidpro.url))
    # A message sent an hour ago by someone, now delivered: status tracking will learn it.
    earlier = await put_tracked(medic_db, fake_rapidpro, "earlier", sent_ago=3600)
    fake_rapidpro.set_status(earlier, "delivered")

    worker = await start(in_process_workers, medic_db.url)
    assert worker.http is not None
    metrics = Scraper(http, f"http://127.0.0.1:{worker.http.port}")
    first = await metrics.scrape()
    assert first[("cht_rapidpro_messages_total", (("outcome", "sent"),))] == 0
    assert first[("cht_rapidpro_ready", ())] == 1
    assert first[("cht_rapidpro_sending_paused", (("reason", "other_gateway"),))] == 0
    assert sum(v for (name, _), v in first.items() if name == "cht_rapidpro_sending_paused") == 0
    for name in ("cht_rapidpro_feed_backlog", "cht_rapidpro_checkpoint_age_seconds",
                 "cht_rapidpro_status_tracked",
                 "cht_rapidpro_incoming_reconciled_total", "cht_rapidpro_webhook_duration_seconds_count",
                 "cht_rapidpro_status_freshness_seconds_count"):
        assert (name, ()) in first, name
    # One budget per RapidPro throttle scope; broadcasts.json is in `v2` until a broadcast says
    # the server counts it apart.
    for scope in ("v2", "v2.messages"):
        assert ("cht_rapidpro_rate_budget_remaining", (("scope", scope),)) in first, scope
        assert ("cht_rapidpro_rate_budget_calls_per_hour", (("scope", scope),)) in first, scope

    # Status tracking learns "delivered" (a rescan asks at once, whatever the schedule says):
    # the freshness histogram gets an observation.
    worker.status.trigger_rescan()
    assert await eventually(
        lambda: metrics.value("cht_rapidpro_status_freshness_seconds_count"), timeout=15) == 1
    samples = await metrics.scrape()
    assert samples[("cht_rapidpro_status_freshness_seconds_bucket", (("le", "+Inf"),))] == 1
    assert samples[("cht_rapidpro_status_freshness_seconds_sum", ())] >= 0
    # Delivered is final: no longer tracked (the count is refreshed by the next round).
    assert await eventually(lambda: _equals(metrics.value("cht_rapidpro_status_tracked"), 0), timeout=15)
    assert samples[("cht_rapidpro_rapidpro_requests_total",
                    (("endpoint", "messages"), ("status", "200")))] >= 1

    # A message sent: the outcome, the RapidPro call and the feed's changes all count it.
    await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/out1", pending_doc("out1", "hello"))
    assert await eventually(
        lambda: metrics.value("cht_rapidpro_messages_total", outcome="sent"), timeout=15) == 1
    samples = await metrics.scrape()
    assert samples[("cht_rapidpro_rapidpro_requests_total",
                    (("endpoint", "broadcasts"), ("status", "201")))] == 1
    assert samples[("cht_rapidpro_changes_total", (("result", "processed"),))] >= 1
    # The send was counted in the broadcasts' scope (`v2` on a current server), not in messages'.
    assert samples[("cht_rapidpro_rate_budget_used_last_hour", (("scope", "v2"),))] >= 1

    # Webhook requests: counted by outcome, and timed.
    url = f"http://127.0.0.1:{worker.http.port}/api/v2/sms/rapidpro/incoming-messages"
    body = {"id": str(uuidlib.uuid4()), "from": "+254700000002", "content": "hi"}
    for authorization in (f"Token {KEY}", "Token wrong"):
        async with http.post(url, data=json.dumps(body), headers={"Authorization": authorization}):
            pass
    samples = await metrics.scrape()
    assert samples[("cht_rapidpro_webhook_requests_total", (("outcome", "saved"),))] == 1
    assert samples[("cht_rapidpro_webhook_requests_total", (("outcome", "wrong_token"),))] == 1
    assert samples[("cht_rapidpro_webhook_duration_seconds_count", ())] == 2


async def test_sending_paused_names_the_reason(medic_db, fake_rapidpro, http, in_process_workers):
    await asyncio.to_thread(put_settings, medic_db.url,
                            {"sms": {"outgoing_service": "medic-gateway"}, "default_country_code": 254})
    worker = await start(in_process_workers, medic_db.url)
    assert worker.http is not None
    metrics = Scraper(http, f"http://127.0.0.1:{worker.http.port}")
    assert await metrics.value("cht_rapidpro_sending_paused", reason="other_gateway") == 1
    assert await metrics.value("cht_rapidpro_sending_paused", reason="no_token") == 0


def test_pause_reasons_are_a_bounded_set() -> None:
    assert pause_reason_label({"sending": True}) is None
    assert pause_reason_label({"paused_reason": "RapidProUnauthorized: 403: Invalid token"}) == "unauthorized"
    assert pause_reason_label({"paused_reason": "Something new: x"}) == "other"
    assert pause_reason_label({"not_sending_reason": "sms.rapidpro.url is not set"}) == "no_rapidpro_url"
    assert pause_reason_label({"not_sending_reason": "no RapidPro API token: set ..."}) == "no_token"
    assert {pause_reason_label({"not_sending_reason": r}) for r in ("x", "y")} <= set(PAUSE_REASONS)


async def test_readyz_is_503_while_couchdb_is_down_then_200(medic_db, http, in_process_workers):
    target = urlsplit(medic_db.server_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5984)
    await proxy.start()
    credentials = f"{target.username}:{target.password}@" if target.username else ""
    worker = await start(in_process_workers, f"http://{credentials}127.0.0.1:{proxy.port}/{medic_db.name}",
                               COUCH_TIMEOUT="2")
    try:
        assert worker.http is not None
        readyz = f"http://127.0.0.1:{worker.http.port}/readyz"

        async def get() -> tuple[int, dict[str, Any]]:
            async with http.get(readyz) as response:
                return response.status, await response.json()

        assert await get() == (200, {"ready": True, "problems": []})
        proxy.set_mode("down")
        status, body = await get()
        assert status == 503 and body["ready"] is False
        assert any("CouchDB does not answer" in p for p in body["problems"]), body
        async with http.get(f"http://127.0.0.1:{worker.http.port}/healthz") as response:
            assert response.status == 200  # liveness stays: the process is fine, CouchDB is not
        # The probe Kubernetes restarts on (the watchdog's signal): it never waits on CouchDB.
        async with http.get(f"http://127.0.0.1:{worker.http.port}/livez",
                            timeout=aiohttp.ClientTimeout(total=1)) as response:
            assert (response.status, await response.json()) == (200, {"alive": True})
        proxy.set_mode("up")
        assert await eventually(lambda: _ok(get), timeout=10)
    finally:
        proxy.set_mode("up")
        await in_process_workers.stop_all()  # the worker stops while CouchDB still answers
        await proxy.stop()


async def _ok(get: Any) -> bool:
    status, _ = await get()
    return status == 200


async def _equals(value: Any, expected: float) -> bool:
    return await value == expected


async def test_a_status_tracking_stall_shows_in_healthz_and_metrics_and_clears(
        medic_db, fake_rapidpro, http, in_process_workers):
    await asyncio.to_thread(put_settings, medic_db.url, settings_for(fake_rapidpro.url))
    await put_tracked(medic_db, fake_rapidpro, "x", sent_ago=60)
    # RapidPro answers every status question with a 500: rounds never complete, nothing crashes.
    fault = fake_rapidpro.fail_next(10**6, path="/api/v2/messages.json")
    worker = await start(in_process_workers, medic_db.url, STATUS_POLL_INTERVAL="0.3")
    assert worker.http is not None
    metrics = Scraper(http, f"http://127.0.0.1:{worker.http.port}")

    async def healthz() -> dict[str, Any]:
        async with http.get(f"http://127.0.0.1:{worker.http.port}/healthz") as response:
            return await response.json()

    async def stalled() -> bool:
        return (await healthz())["status_tracking"]["progress"]["stalled"]

    assert await eventually(stalled, timeout=15)
    progress = (await healthz())["status_tracking"]["progress"]
    assert progress["age_s"] > progress["stall_after_s"] == pytest.approx(0.9)
    assert await metrics.value("cht_rapidpro_stalled", part="status_tracking") == 1
    assert await metrics.value("cht_rapidpro_stalled", part="in_doubt") == 0
    assert (await metrics.value("cht_rapidpro_progress_age_seconds", part="status_tracking") or 0) >= 0.9

    fake_rapidpro.faults.remove(fault)  # RapidPro answers again: the next round completes
    assert await eventually(lambda: _equals(metrics.value("cht_rapidpro_stalled", part="status_tracking"), 0),
                            timeout=15)
    assert (await healthz())["status_tracking"]["progress"]["last_completed_at"] is not None

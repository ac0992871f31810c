"""Outgoing dispatch end to end: the real test server, the fake RapidPro, the worker in-process —
against every RapidPro version of playground/rapidpro_profiles.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from config.credentials import encrypt_credential
from playground.fake_rapidpro import DEFAULT_TOKEN
from playground.rapidpro_profiles import PROFILE_NAMES
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import (
    couch_request,
    create_db,
    delete_vault_credential,
    put_settings,
    put_vault_credential,
)
from tests.support.outgoing import (
    get_doc,
    put_doc,
    rapidpro_settings,
    task,
    task_state,
    wait_state,
    worker_env,
)
from tests.support.waiting import eventually
from tests.support.workers import InProcessWorkers
from transitions.outgoing.dispatch import IN_DOUBT_DETAILS
from worker.app import Worker

SECRET = "test-couch-secret"


@pytest.fixture(params=PROFILE_NAMES)
def rapidpro_profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)
FIRST_BACKOFF_STEP = 1.0  # the sending gate's backoff base: its first pause is at most this


@pytest.fixture
def run_worker(medic_db, in_process_workers: InProcessWorkers) -> Callable[..., Awaitable[Worker]]:
    async def start(**env: str) -> Worker:
        return await in_process_workers.start(worker_env(medic_db, **env))
    return start


async def test_sendable_tasks_are_sent_once_each_and_recorded(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    await run_worker()
    doc = {"_id": "r1", "type": "data_record",
           "tasks": [task("pending", to="0700000001", text="one"), task("forwarded-to-gateway", text="two"),
                     task("sent", text="not me"), task("delivered", text="nor me")],
           "scheduled_tasks": [task("pending", to="+254700000003", text="three"),
                               task("scheduled", text="later")]}
    await put_doc(medic_db.url, doc)
    await fake_rapidpro.wait_for(lambda: len(fake_rapidpro.broadcasts) >= 3, timeout=10)
    first = await wait_state(medic_db.url, "r1", "received-by-gateway", index=0)
    await wait_state(medic_db.url, "r1", "received-by-gateway", index=1)
    third = await wait_state(medic_db.url, "r1", "received-by-gateway", kind="scheduled_tasks")

    sent = sorted((b.urns[0], b.raw_text) for b in fake_rapidpro.broadcasts)
    assert sent == [("tel:+254700000001", "one"), ("tel:+254700000001", "two"),
                    ("tel:+254700000003", "three")]
    assert {b.token for b in fake_rapidpro.broadcasts} == {DEFAULT_TOKEN}
    by_text = {b.raw_text: b for b in fake_rapidpro.broadcasts}
    # The broadcast's id, as CHT stores it; its uuid from a RapidPro without ids.
    assert first["gateway_ref"] == fake_rapidpro.ref(by_text["one"])
    assert first["state_details"] == "Queued"
    assert [h["state"] for h in first["state_history"]] == ["pending", "received-by-gateway"]
    assert third["gateway_ref"] == fake_rapidpro.ref(by_text["three"])
    final = await asyncio.to_thread(get_doc, medic_db.url, "r1")
    assert final["tasks"][2]["state"] == "sent" and "gateway_ref" not in final["tasks"][2]
    assert final["tasks"][3]["state"] == "delivered"
    assert final["scheduled_tasks"][1]["state"] == "scheduled"
    assert len(fake_rapidpro.broadcasts) == 3


async def test_denied_recipient_is_not_sent(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(
        fake_rapidpro.url, outgoing_deny_list="800,SAFARICOM", outgoing_deny_with_alphas=True))
    await run_worker()
    await put_doc(medic_db.url, {"_id": "d1", "tasks": [task("pending", to="SAFARICOM"),
                                                        task("pending", to="800123456"),
                                                        task("pending", to="+254700000009")]})
    await wait_state(medic_db.url, "d1", "denied", index=0)
    await wait_state(medic_db.url, "d1", "denied", index=1)
    await wait_state(medic_db.url, "d1", "received-by-gateway", index=2)
    assert [b.urns for b in fake_rapidpro.broadcasts] == [["tel:+254700000009"]]


async def test_nothing_sent_while_another_service_owns_sending_then_backlog_after_switch(
        run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, {"sms": {"outgoing_service": "medic-gateway",
                                                                 "rapidpro": {"url": fake_rapidpro.url}}})
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "b1", "tasks": [task("pending")]})
    await eventually(lambda: worker.dispatcher.stats.processed >= 1)  # b1 seen
    health = await worker.health()
    assert health["outgoing"]["sending"] is False
    assert "medic-gateway" in health["outgoing"]["not_sending_reason"]
    assert fake_rapidpro.broadcasts == []

    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    await wait_state(medic_db.url, "b1", "received-by-gateway")
    assert len(fake_rapidpro.broadcasts) == 1


async def test_invalid_number_is_failed_and_never_retried(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "bad", "tasks": [task("pending", to="0712")]})
    failed = await wait_state(medic_db.url, "bad", "failed")
    assert "Invalid URN" in failed["state_details"]
    posts = fake_rapidpro.call_count("POST", "/api/v2/broadcasts.json")
    # Re-pend it: the ledger remembers the rejection; the worker does not ask RapidPro again.
    doc = await asyncio.to_thread(get_doc, medic_db.url, "bad")
    doc["tasks"][0]["state"] = "pending"
    await put_doc(medic_db.url, doc)
    await wait_state(medic_db.url, "bad", "failed")
    assert fake_rapidpro.call_count("POST", "/api/v2/broadcasts.json") == posts
    assert worker.sender.stats.rejected == 1


async def test_bad_token_pauses_without_failing_then_sends(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    fake_rapidpro.valid_tokens.clear()
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "p1", "tasks": [task("pending")]})
    await eventually(lambda: worker.sender.gate.pause_reason is not None)
    assert (await task_state(medic_db.url, "p1"))["state"] == "pending"
    health = await worker.health()
    assert health["outgoing"]["paused_reason"] is not None
    fake_rapidpro.valid_tokens.add(DEFAULT_TOKEN)
    await wait_state(medic_db.url, "p1", "received-by-gateway", timeout=20)
    assert len(fake_rapidpro.broadcasts) == 1


async def test_lost_response_gives_one_broadcast_and_an_in_doubt_mark(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    fake_rapidpro.lose_next_response(1, how="drop")
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "lost", "tasks": [task("pending")]})
    doubtful = await wait_state(medic_db.url, "lost", "forwarded-to-gateway")
    assert doubtful["state_details"] == IN_DOUBT_DETAILS
    assert len(fake_rapidpro.broadcasts) == 1
    # Seen again (any later change of the doc, or the sweep): still not re-sent.
    await worker.sweep.run_once()
    doc = await asyncio.to_thread(get_doc, medic_db.url, "lost")
    doc["touched"] = True
    await put_doc(medic_db.url, doc)
    await eventually(lambda: worker.sender.stats.reprojected >= 1)
    assert len(fake_rapidpro.broadcasts) == 1
    assert worker.sender.stats.in_doubt == 1


async def test_task_re_pended_after_sending_is_not_sent_again(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    await run_worker()
    await put_doc(medic_db.url, {"_id": "again", "tasks": [task("pending")]})
    sent = await wait_state(medic_db.url, "again", "received-by-gateway")
    doc = await asyncio.to_thread(get_doc, medic_db.url, "again")
    doc["tasks"][0]["state"] = "pending"  # an offline phone's old revision won
    await put_doc(medic_db.url, doc)
    back = await wait_state(medic_db.url, "again", "received-by-gateway")
    assert back["gateway_ref"] == sent["gateway_ref"]
    assert len(fake_rapidpro.broadcasts) == 1


async def test_a_sent_scheduled_message_set_back_to_pending_again_and_again_goes_out_once(
        run_worker, medic_db, fake_rapidpro):
    """cht-core #10802: sentinel sets an already sent scheduled message back to `pending` (two
    tasks due together, one stuck `scheduled`), every 5 minutes for days; CHT's own senders sent it
    each time. The worker sends a message uuid once and writes the recorded outcome back instead.
    CHT has no way to send the same message again: sending again from CHT makes a new message,
    with a new uuid, which is sent."""
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    worker = await run_worker()
    reminder = task("pending", text="ANC visit due")
    await put_doc(medic_db.url, {"_id": "sched", "type": "data_record",
                                 "scheduled_tasks": [reminder, task("scheduled", text="stuck")]})
    sent = await wait_state(medic_db.url, "sched", "received-by-gateway", kind="scheduled_tasks")
    for repeat in range(1, 6):  # sentinel's due-tasks runs, as in the report
        doc = await asyncio.to_thread(get_doc, medic_db.url, "sched")
        doc["scheduled_tasks"][0]["state"] = "pending"
        doc["scheduled_tasks"][0]["state_history"].append({"state": "pending", "timestamp": iso_ago()})
        await put_doc(medic_db.url, doc)
        await eventually(lambda n=repeat: worker.sender.stats.reprojected >= n)
        back = await wait_state(medic_db.url, "sched", "received-by-gateway", kind="scheduled_tasks")
        assert back["gateway_ref"] == sent["gateway_ref"]
    assert len(fake_rapidpro.broadcasts) == 1
    # Sent again from CHT: a new message (new uuid), same text and recipient.
    doc = await asyncio.to_thread(get_doc, medic_db.url, "sched")
    doc["scheduled_tasks"].append(task("pending", text="ANC visit due"))
    await put_doc(medic_db.url, doc)
    await wait_state(medic_db.url, "sched", "received-by-gateway", kind="scheduled_tasks", index=2)
    assert [b.raw_text for b in fake_rapidpro.broadcasts] == ["ANC visit due", "ANC visit due"]


async def test_a_broadcast_answer_without_a_status_is_queued_and_sent_once(run_worker, medic_db,
                                                                        fake_rapidpro):
    """cht-core #9467: RapidPro answered the broadcast without a status and CHT sent it again and
    again. The answer's 201 is what counts: the message is `received-by-gateway`, never resent."""
    fields = tuple(f for f in fake_rapidpro.profile.broadcast_fields if f != "status")
    fake_rapidpro.profile = dataclasses.replace(fake_rapidpro.profile, broadcast_fields=fields)
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "nostatus", "tasks": [task("pending")]})
    sent = await wait_state(medic_db.url, "nostatus", "received-by-gateway")
    assert sent["state_details"] == "Queued" and sent["gateway_ref"]
    doc = await asyncio.to_thread(get_doc, medic_db.url, "nostatus")
    doc["tasks"][0]["state"] = "pending"
    await put_doc(medic_db.url, doc)
    await eventually(lambda: worker.sender.stats.reprojected >= 1)
    assert len(fake_rapidpro.broadcasts) == 1


async def test_a_doc_deleted_while_its_task_is_written_loses_nothing_and_sends_once(
        run_worker, medic_db, fake_rapidpro):
    """cht-core #10944: the doc goes while the send is in flight. The outcome stays in the ledger;
    when the doc comes back (an old revision replicated from a phone) it is written back, not
    sent again."""
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    worker = await run_worker()
    fake_rapidpro.hold = asyncio.Event()  # RapidPro takes its time answering
    pending = task("pending")
    uuid = pending["messages"][0]["uuid"]
    await put_doc(medic_db.url, {"_id": "gone", "tasks": [pending]})
    await fake_rapidpro.wait_for(lambda: bool(fake_rapidpro.requests_to("/api/v2/broadcasts.json", "POST")))
    current = await asyncio.to_thread(get_doc, medic_db.url, "gone")
    status, _ = await asyncio.to_thread(couch_request, "DELETE", f"{medic_db.url}/gone?rev={current['_rev']}")
    assert status in (200, 202)
    fake_rapidpro.hold.set()
    await eventually(lambda: worker.sender.stats.sent >= 1)
    entry = await worker.ledger.get(uuid)
    assert entry is not None and entry["state"] == "sent"  # the outcome is kept

    await put_doc(medic_db.url, {"_id": "gone", "tasks": [pending]})  # back, as it was
    back = await wait_state(medic_db.url, "gone", "received-by-gateway")
    assert back["gateway_ref"] == fake_rapidpro.ref(fake_rapidpro.broadcasts[0])
    assert len(fake_rapidpro.broadcasts) == 1


async def test_a_sent_message_re_pended_to_a_now_denied_number_shows_its_recorded_outcome(
        run_worker, medic_db, fake_rapidpro):
    # The claim is tried first only for numbers that may be sent to; a denied one still reads the
    # ledger, so what was sent stays what the task shows.
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "was-sent", "tasks": [task("pending", to="+254700000077")]})
    sent = await wait_state(medic_db.url, "was-sent", "received-by-gateway")
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(
        fake_rapidpro.url, outgoing_deny_list="+254700000077"))
    await eventually(lambda: worker.settings.current is not None
                     and worker.settings.current.outgoing_deny_list == "+254700000077")
    doc = await asyncio.to_thread(get_doc, medic_db.url, "was-sent")
    doc["tasks"][0]["state"] = "pending"
    await put_doc(medic_db.url, doc)
    await eventually(lambda: worker.sender.stats.reprojected >= 1)
    back = await wait_state(medic_db.url, "was-sent", "received-by-gateway")
    assert back["gateway_ref"] == sent["gateway_ref"]
    assert worker.sender.stats.denied == 0
    assert len(fake_rapidpro.broadcasts) == 1


async def test_two_workers_on_one_cht_send_each_message_once(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    await run_worker()
    await run_worker()
    docs = [{"_id": f"two-{i}", "tasks": [task("pending", text=f"m{i}")]} for i in range(30)]
    status, _ = await asyncio.to_thread(couch_request, "POST", f"{medic_db.url}/_bulk_docs", {"docs": docs})
    assert status == 201
    for i in range(30):
        await wait_state(medic_db.url, f"two-{i}", "received-by-gateway")
    texts = sorted(b.raw_text for b in fake_rapidpro.broadcasts)
    assert texts == sorted(f"m{i}" for i in range(30))


async def test_token_from_the_vault_and_its_rotation(run_worker, medic_db, fake_rapidpro):
    settings = rapidpro_settings(fake_rapidpro.url)
    settings["sms"]["outgoing_service"] = "rapidpro-worker"
    await asyncio.to_thread(put_settings, medic_db.url, settings)
    vault = medic_db.vault_url
    await asyncio.to_thread(create_db, vault)
    # Stored as CHT's api stores it: the doc is credential:rapidpro:outgoing.
    await asyncio.to_thread(put_vault_credential, vault, "rapidpro:outgoing",
                            encrypt_credential("old-token", SECRET))
    fake_rapidpro.valid_tokens.update({"old-token", "new-token"})
    # A worker with a service name of its own: CHT's sender (service 'rapidpro') stays off.
    worker = await run_worker(RAPIDPRO_API_TOKEN="", COUCH_SECRET=SECRET,
                              OUTGOING_SERVICE_NAME="rapidpro-worker")
    await put_doc(medic_db.url, {"_id": "v1", "tasks": [task("pending")]})
    await wait_state(medic_db.url, "v1", "received-by-gateway")
    assert fake_rapidpro.broadcasts[-1].token == "old-token"
    health = await worker.health()
    assert health["outgoing"]["token_source"] == "vault"

    await asyncio.to_thread(put_vault_credential, vault, "rapidpro:outgoing",
                            encrypt_credential("new-token", SECRET))
    await put_doc(medic_db.url, {"_id": "v2", "tasks": [task("pending")]})
    await wait_state(medic_db.url, "v2", "received-by-gateway")
    assert fake_rapidpro.broadcasts[-1].token == "new-token"


@pytest.mark.parametrize("fault", ["flagged", "server_error", "wrong_url"])
async def test_workspace_and_server_errors_pause_without_failing(run_worker, medic_db, fake_rapidpro, fault):
    url = fake_rapidpro.url
    if fault == "flagged":
        fake_rapidpro.workspace_state = "flagged"
    elif fault == "server_error":
        fake_rapidpro.fail_next(2)
    else:
        url = fake_rapidpro.url + "/wrong-prefix"
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(url))
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "e1", "tasks": [task("pending")]})
    await eventually(lambda: worker.sender.gate.pause_reason is not None)
    assert (await task_state(medic_db.url, "e1"))["state"] == "pending"  # never marked failed
    assert worker.sender.stats.rejected == 0
    # The problem goes away: the message goes out, once.
    fake_rapidpro.workspace_state = None
    if fault == "wrong_url":
        await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    await wait_state(medic_db.url, "e1", "received-by-gateway", timeout=20)
    assert len(fake_rapidpro.broadcasts) == 1


async def test_429_waits_and_goes_on(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    fake_rapidpro.throttle_next(1, retry_after=1)
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "t1", "tasks": [task("pending")]})
    await wait_state(medic_db.url, "t1", "received-by-gateway", timeout=20)
    assert len(fake_rapidpro.broadcasts) == 1
    assert worker.sender.stats.rejected == 0


async def test_concurrent_writer_loses_none_of_its_changes(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    await run_worker()
    ids = [f"cw-{i}" for i in range(20)]
    docs = [{"_id": doc_id, "edits": 0, "tasks": [task("pending", text=doc_id)]} for doc_id in ids]
    status, _ = await asyncio.to_thread(couch_request, "POST", f"{medic_db.url}/_bulk_docs", {"docs": docs})
    assert status == 201

    def other_writer(rounds: int) -> None:
        # Another writer (a phone, CHT api) edits the same docs while the worker writes states.
        for _ in range(rounds):
            for doc_id in ids:
                while True:
                    status, doc = couch_request("GET", f"{medic_db.url}/{doc_id}")
                    doc["edits"] += 1
                    status, _ = couch_request("PUT", f"{medic_db.url}/{doc_id}", doc)
                    if status != 409:
                        assert status == 201
                        break

    await asyncio.to_thread(other_writer, 5)
    for doc_id in ids:
        await wait_state(medic_db.url, doc_id, "received-by-gateway")
    for doc_id in ids:
        assert (await asyncio.to_thread(get_doc, medic_db.url, doc_id))["edits"] == 5
    assert sorted(b.raw_text for b in fake_rapidpro.broadcasts) == sorted(ids)


async def test_outage_with_every_slot_in_flight_pauses_one_backoff_step(run_worker, medic_db, fake_rapidpro):
    """CONCURRENCY sends in flight all get RapidPro's 500: one failure episode, so the pause is the
    backoff's first step (not one step more per failed send), and the first probe after it
    resumes sending for every waiting message."""
    concurrency = 4
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    fake_rapidpro.hold = asyncio.Event()  # RapidPro stalls, then answers 500 to all of them at once
    fake_rapidpro.fail_next(concurrency, path="/api/v2/broadcasts.json")
    worker = await run_worker(CONCURRENCY=str(concurrency))
    gate = worker.sender.gate
    steps: list[tuple[float, float]] = []  # (decided at, paused until) after every failure
    failed = gate.failed

    def recording_failed(*args: Any, **kwargs: Any) -> float:
        remaining = failed(*args, **kwargs)
        assert gate.paused_at is not None and gate.paused_until is not None
        steps.append((gate.paused_at, gate.paused_until))
        return remaining

    gate.failed = recording_failed  # type: ignore[method-assign]
    ids = [f"out-{i}" for i in range(3 * concurrency)]
    docs = [{"_id": doc_id, "tasks": [task("pending", text=doc_id)]} for doc_id in ids]
    status, _ = await asyncio.to_thread(couch_request, "POST", f"{medic_db.url}/_bulk_docs", {"docs": docs})
    assert status == 201
    await eventually(lambda: len(fake_rapidpro.requests_to("/api/v2/broadcasts.json")) == concurrency)
    fake_rapidpro.hold.set()  # the outage ends: the held sends get their 500s, later ones succeed

    for doc_id in ids:
        await wait_state(medic_db.url, doc_id, "received-by-gateway", timeout=20)
    assert len(steps) == concurrency
    assert len({step for step in steps}) == 1, f"the pause changed with each failure: {steps}"
    decided_at, paused_until = steps[0]
    assert 0 < paused_until - decided_at <= FIRST_BACKOFF_STEP
    posts = fake_rapidpro.requests_to("/api/v2/broadcasts.json")
    after = posts[concurrency:]
    assert all(r.status == 201 for r in after)  # the first probe after the pause got through
    assert min(r.time for r in after) >= paused_until  # and nothing was sent during the pause
    assert gate.remaining_pause() == 0 and gate.pause_reason is None
    assert sorted(b.raw_text for b in fake_rapidpro.broadcasts) == sorted(ids)


async def gauge_value(worker: Worker, name: str) -> float:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{worker.http.port}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no {name} in /metrics")


@pytest.mark.parametrize("switch_off", ["vault", "settings"])
async def test_the_worker_stands_down_while_chts_own_sender_runs(run_worker, medic_db, fake_rapidpro,
                                                                 switch_off):
    """CHT's sender runs (service 'rapidpro', a URL, rapidpro:outgoing in the vault): the worker
    POSTs nothing, says why (/healthz, metrics, log), and sends once CHT's sender is off."""
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    await asyncio.to_thread(create_db, medic_db.vault_url)
    await asyncio.to_thread(put_vault_credential, medic_db.vault_url, "rapidpro:outgoing",
                            encrypt_credential("chts-token", SECRET))
    name = "rapidpro" if switch_off == "vault" else "rapidpro-worker"
    with structlog.testing.capture_logs() as logs:
        worker = await run_worker(COUCH_SECRET=SECRET, CREDENTIALS_TTL="1", OUTGOING_SERVICE_NAME=name)
        assert worker.dispatcher is not None
        before = worker.dispatcher.stats.processed
        await put_doc(medic_db.url, {"_id": "cs1", "tasks": [task("pending")]})
        await eventually(lambda: worker.dispatcher.stats.processed > before)  # seen, and left alone
        health = await worker.health()
        assert health["outgoing"]["cht_sender_on"] is True
        assert health["outgoing"]["sending"] is False
        assert "CHT's own RapidPro sender is on" in health["outgoing"]["not_sending_reason"]
        assert await gauge_value(worker, "cht_rapidpro_cht_sender_on") == 1
        # A log line at every check (each CREDENTIALS_TTL; each minute by default).
        await eventually(lambda: sum(e["event"] == "cht_sender_on" for e in logs) >= 2)
    assert fake_rapidpro.broadcasts == []
    assert fake_rapidpro.requests_to("/api/v2/messages.json") == []  # CHT's sender polls statuses
    assert worker.status.stats.rounds == 0
    assert (await task_state(medic_db.url, "cs1"))["state"] == "pending"

    if switch_off == "vault":  # the operator deletes CHT's token: the worker's own is configured
        await asyncio.to_thread(delete_vault_credential, medic_db.vault_url, "rapidpro:outgoing")
    else:  # or switches CHT to the worker's own service name
        settings = rapidpro_settings(fake_rapidpro.url)
        settings["sms"]["outgoing_service"] = "rapidpro-worker"
        await asyncio.to_thread(put_settings, medic_db.url, settings)
    await wait_state(medic_db.url, "cs1", "received-by-gateway")
    assert [b.raw_text for b in fake_rapidpro.broadcasts] == ["Visit due"]
    assert (await worker.health())["outgoing"]["cht_sender_on"] is False
    assert await gauge_value(worker, "cht_rapidpro_cht_sender_on") == 0

"""In-doubt sends resolved through RapidPro's broadcast listing, and by the operator's command:
the real test server, the fake RapidPro (every version of playground/rapidpro_profiles.py),
workers in-process, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from playground.fake_rapidpro import BROADCASTS_PATH, DEFAULT_TOKEN
from playground.rapidpro_profiles import PROFILE_NAMES
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import couch_request, put_settings
from tests.support.in_doubt import URN, cli, doc_with_stale_claim, ledger_url
from tests.support.outgoing import get_doc, put_doc, rapidpro_settings, task, wait_state
from tests.support.waiting import eventually
from tests.support.workers import InProcessWorkers
from transitions.cht.phone import mask_phone
from transitions.cht.timestamps import cht_time
from worker.app import Worker
from worker.identity import HOSTNAME

pytestmark = [pytest.mark.slow]

FAST = {"RAPIDPRO_TIMEOUT": "2", "COUCH_TIMEOUT": "3", "IN_DOUBT_CHECK_AFTER": "4"}


@pytest.fixture(params=PROFILE_NAMES)
def rapidpro_profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def worker_env(medic_db, **env: str) -> dict[str, str]:
    return {"COUCH_URL": medic_db.url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN,
            "CHECKPOINT_INTERVAL": "0.2", "CREDENTIALS_TTL": "0", **FAST, **env}


@pytest.fixture
def run_worker(medic_db, in_process_workers: InProcessWorkers) -> Callable[..., Awaitable[Worker]]:
    async def start(**env: str) -> Worker:
        return await in_process_workers.start(worker_env(medic_db, **env))
    return start


def ledger_entry(medic_db, message_uuid: str) -> dict[str, Any] | None:
    status, body = couch_request("GET", ledger_url(medic_db, message_uuid))
    return body if status == 200 else None


def texts_sent(fake) -> list[Any]:
    return [b.raw_text for b in fake.broadcasts]


async def test_commit_then_hang_ends_with_the_created_broadcast(run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    fake_rapidpro.lose_next_response(1, how="hang")  # RapidPro commits, then never answers
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "hang", "tasks": [task("pending", text="committed")]})
    done = await wait_state(medic_db.url, "hang", "received-by-gateway", timeout=30)
    assert texts_sent(fake_rapidpro) == ["committed"]
    assert done["gateway_ref"] == fake_rapidpro.ref(fake_rapidpro.broadcasts[0])
    # (In doubt first — unless the resolver's write overtook the dispatcher's on a busy machine.)
    assert done["state_history"][-1]["state"] == "received-by-gateway"
    entry = ledger_entry(medic_db, done["messages"][0]["uuid"])
    assert entry["state"] == "sent" and entry["resolution"]["how"] == "found"
    assert worker.in_doubt.totals["found"] == 1
    # Looked up by listing, not sent again.
    assert fake_rapidpro.call_count("GET", BROADCASTS_PATH) >= 1
    assert fake_rapidpro.call_count("POST", BROADCASTS_PATH) == 1


@pytest.mark.parametrize("who", ["stale claim of another host", "process on this host that died"])
async def test_a_post_that_never_reached_rapidpro_is_sent_once_after_the_check(
        run_worker, medic_db, fake_rapidpro, who):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    if who.startswith("stale"):
        message_uuid = await doc_with_stale_claim(medic_db, "never", "never posted")
    else:
        dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await dead.wait()
        message_uuid = await doc_with_stale_claim(medic_db, "never", "never posted",
                                                  owner=f"{HOSTNAME}:{dead.pid}", age=5)
    worker = await run_worker()
    done = await wait_state(medic_db.url, "never", "received-by-gateway", timeout=30)
    assert texts_sent(fake_rapidpro) == ["never posted"]
    assert done["gateway_ref"] == fake_rapidpro.ref(fake_rapidpro.broadcasts[0])
    entry = ledger_entry(medic_db, message_uuid)
    assert entry["state"] == "sent" and entry["attempts"] == 2
    assert entry["resolution"]["how"] == "resent"
    assert entry["history"][0]["owner"].endswith(":1") or entry["history"][0]["owner"].startswith(HOSTNAME)
    assert worker.in_doubt.totals["resent"] == 1
    # The sweep and later rounds see it again: still one broadcast.
    await worker.sweep.run_once()
    await worker.in_doubt.run_once()
    assert len(fake_rapidpro.broadcasts) == 1


async def test_two_workers_resolving_the_same_claims_send_each_once(run_worker, medic_db, fake_rapidpro):
    # Another service sends while the claims are set up; then the workers take over at once.
    # With the lease only the holder resolves; the ledger would still decide between two.
    other = rapidpro_settings(fake_rapidpro.url)
    other["sms"]["outgoing_service"] = "medic-gateway"
    await asyncio.to_thread(put_settings, medic_db.url, other)
    first = await run_worker(INSTANCE_ID="first")
    second = await run_worker(INSTANCE_ID="second")
    assert (first.lease.role, second.lease.role) == ("active", "standby")
    uuids = [await doc_with_stale_claim(medic_db, f"race-{i}", f"race {i}") for i in range(5)]
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    await eventually(lambda: first.sender.gate.not_in_charge is None)
    assert first.in_doubt is not None and second.in_doubt is None
    # A round at the same moment as the holder's own periodic one.
    await first.in_doubt.run_once()
    for i in range(5):
        await wait_state(medic_db.url, f"race-{i}", "received-by-gateway", timeout=30)
    assert sorted(texts_sent(fake_rapidpro)) == [f"race {i}" for i in range(5)]
    assert {r.user_agent.rsplit("(", 1)[-1] for r in fake_rapidpro.requests} == {"first)"}
    for message_uuid in uuids:
        assert ledger_entry(medic_db, message_uuid)["attempts"] == 2


@pytest.mark.parametrize("case", ["two candidates", "anonymous workspace"])
async def test_ambiguous_cases_stay_in_doubt_for_an_operator(run_worker, medic_db, fake_rapidpro, case):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    import aiohttp
    async with aiohttp.ClientSession(headers={"Authorization": f"Token {DEFAULT_TOKEN}"}) as http:
        for _ in range(2 if case == "two candidates" else 1):
            async with http.post(fake_rapidpro.url + BROADCASTS_PATH,
                                 json={"urns": [URN], "text": "ambiguous"}) as response:
                assert response.status == 201
    fake_rapidpro.anonymous = case == "anonymous workspace"
    message_uuid = await doc_with_stale_claim(medic_db, "amb", "ambiguous", age=30)
    worker = await run_worker()

    async def waiting() -> dict[str, Any] | None:
        entry = await asyncio.to_thread(ledger_entry, medic_db, message_uuid)
        return entry if entry and entry.get("needs_operator") else None
    entry = await eventually(waiting, timeout=30)
    expected = "2 broadcasts" if case == "two candidates" else "anonymous"
    assert expected in entry["needs_operator"]["reason"]
    assert entry["state"] == "in-doubt"
    current = await wait_state(medic_db.url, "amb", "forwarded-to-gateway")
    await eventually(lambda: asyncio.to_thread(
        lambda: "cht-rapidpro-worker in-doubt" in get_doc(medic_db.url, "amb")["tasks"][0]["state_details"]))
    assert current["state"] == "forwarded-to-gateway"
    await eventually(lambda: worker.in_doubt.last and worker.in_doubt.last.waiting_operator == 1)
    health = await worker.health()
    assert health["outgoing"]["in_doubt_waiting_operator"] == 1
    # Later rounds leave it to the operator: nothing sent, no second mark.
    await worker.in_doubt.run_once()
    assert len(fake_rapidpro.broadcasts) == (2 if case == "two candidates" else 1)
    assert (await asyncio.to_thread(ledger_entry, medic_db, message_uuid))["_rev"] == entry["_rev"]


async def test_the_operator_command_lists_and_resolves_each_kind_while_the_daemon_runs(
        run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    reason = {"reason": "2 broadcasts to this number", "since": iso_ago()}
    waiting = {"state": "in-doubt", "needs_operator": reason}
    sent = await doc_with_stale_claim(medic_db, "op-sent", "went out", **waiting)
    resend = await doc_with_stale_claim(medic_db, "op-resend", "never went", **waiting)
    failed = await doc_with_stale_claim(medic_db, "op-failed", "give up", **waiting)
    await run_worker()

    listed = await asyncio.to_thread(cli, medic_db, "in-doubt")
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(line["message_uuid"] for line in lines) == sorted([sent, resend, failed])
    assert {line["to"] for line in lines} == {mask_phone("+254700000001")}  # as in the logs
    assert "700000001" not in listed.stdout
    assert all(line["reason"] == "2 broadcasts to this number" and line["claimed_at"] for line in lines)

    # --sent: the operator found the broadcast in RapidPro.
    broadcast_id = 991234
    result = await asyncio.to_thread(cli, medic_db, "in-doubt", "resolve", sent, "--sent", str(broadcast_id))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decision"] == "sent"
    done = await wait_state(medic_db.url, "op-sent", "received-by-gateway")
    assert done["gateway_ref"] == broadcast_id
    entry = ledger_entry(medic_db, sent)
    assert entry["resolution"]["how"] == "operator" and entry["resolution"]["by"]

    # --resend: the running daemon sends it, once.
    result = await asyncio.to_thread(cli, medic_db, "in-doubt", "resolve", resend, "--resend")
    assert result.returncode == 0, result.stderr
    await wait_state(medic_db.url, "op-resend", "received-by-gateway", timeout=30)
    assert texts_sent(fake_rapidpro) == ["never went"]

    # --failed
    result = await asyncio.to_thread(cli, medic_db, "in-doubt", "resolve", failed, "--failed", "wrong number")
    assert result.returncode == 0, result.stderr
    assert (await wait_state(medic_db.url, "op-failed", "failed"))["state_details"] == "wrong number"

    # A second resolve of the same message is refused, clearly.
    again = await asyncio.to_thread(cli, medic_db, "in-doubt", "resolve", sent, "--failed", "oops")
    assert again.returncode != 0
    assert "not in doubt" in again.stderr and "already resolved" in again.stderr
    assert ledger_entry(medic_db, sent)["state"] == "sent"
    unknown = await asyncio.to_thread(cli, medic_db, "in-doubt", "resolve", str(uuidlib.uuid4()), "--resend")
    assert unknown.returncode != 0 and "never claimed" in unknown.stderr

    listed = await asyncio.to_thread(cli, medic_db, "in-doubt", "--all")
    assert listed.returncode == 0 and listed.stdout == ""
    assert len(fake_rapidpro.broadcasts) == 1


async def test_a_late_outcome_never_overwrites_a_decision_taken_meanwhile(
        run_worker, medic_db, fake_rapidpro):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    worker = await run_worker(OUTGOING_SERVICE_NAME="not-me")  # nothing sends or resolves by itself
    message_uuid = await doc_with_stale_claim(medic_db, "late", "late")
    stale = await worker.ledger.get(message_uuid)
    resolved = await worker.ledger.resolve_sent(stale, 42, None, None, worker.ledger.resolution("found"))
    assert resolved is not None
    # A dispatcher that read the claim before the resolution marks it in doubt: it gets the
    # resolution back, unchanged, instead of turning `sent` into `in-doubt`.
    current = await worker.ledger.record_in_doubt(stale, "stale claim")
    assert current["state"] == "sent" and current["broadcast_id"] == 42
    # And a decision based on what was read before is refused.
    assert await worker.ledger.release_for_resend(stale, "x", worker.ledger.resolution("resent")) is None
    assert (await worker.ledger.get(message_uuid))["_rev"] == resolved["_rev"]


@pytest.mark.parametrize(("to", "text", "country_code"), [
    ("+254712345678", "  padded text \r\n", 254),
    ("0712345678", "\u00a0a local number\t", None),  # CHT cannot normalise it: sent as typed
    ("254712345678", "no plus", None),
    ("+254 712-345 678", "spaced and dashed", 254),
])
async def test_a_lost_answer_is_found_under_the_forms_rapidpro_stored(run_worker, medic_db, fake_rapidpro,
                                                                     to, text, country_code):
    """RapidPro stores the text trimmed and the number in E.164 of the workspace's country; the
    in-doubt lookup compares those forms, so the message is found, not sent a second time."""
    settings = rapidpro_settings(fake_rapidpro.url)
    if country_code is None:
        settings.pop("default_country_code")
    await asyncio.to_thread(put_settings, medic_db.url, settings)
    fake_rapidpro.lose_next_response(1, how="drop")
    worker = await run_worker()
    await put_doc(medic_db.url, {"_id": "normalised", "tasks": [task("pending", to=to, text=text)]})
    done = await wait_state(medic_db.url, "normalised", "received-by-gateway", timeout=30)
    assert done["state_history"][-1]["state"] == "received-by-gateway"
    assert await eventually(lambda: worker.in_doubt.totals["found"], timeout=30) == 1
    assert fake_rapidpro.call_count("POST", BROADCASTS_PATH) == 1
    assert [b.urns for b in fake_rapidpro.broadcasts] == [["tel:+254712345678"]]
    assert done["gateway_ref"] == fake_rapidpro.ref(fake_rapidpro.broadcasts[0])


@pytest.mark.parametrize("text", [" \r\n\t\u00a0", "a\x00b"])
async def test_a_text_rapidpro_refuses_ends_failed_with_its_reason_even_after_a_lost_answer(
        run_worker, medic_db, fake_rapidpro, text):
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    fake_rapidpro.lose_next_response(1, how="drop")  # the 400 is lost: in doubt, nothing created
    await run_worker()
    await put_doc(medic_db.url, {"_id": "refused", "tasks": [task("pending", text=text)]})
    done = await wait_state(medic_db.url, "refused", "failed", timeout=30)
    reason = "This field may not be blank." if not text.strip() else "Null characters are not allowed."
    assert reason in done["state_history"][-1].get("details", "") + json.dumps(done)
    assert fake_rapidpro.broadcasts == []
    assert fake_rapidpro.call_count("POST", BROADCASTS_PATH) == 2  # the lost one, then the one refused
    await asyncio.sleep(0)  # nothing left to retry: the ledger says rejected
    entry = ledger_entry(medic_db, done["messages"][0]["uuid"])
    assert entry["state"] == "rejected" and reason in entry["error"]


async def test_a_fresh_worker_rebuilds_the_sends_window_from_the_ledger(run_worker, medic_db, fake_rapidpro):
    """RapidPro counts the last hour's calls: the ledger's claims of that hour are its sends."""
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    status, _ = await asyncio.to_thread(couch_request, "PUT", ledger_url(medic_db))
    assert status in (201, 202, 412)
    now = time.time()
    for i, (age, state) in enumerate([(100, "sent"), (200, "rejected"), (3000, "in-doubt"), (300, "released"),
                                      (4000, "sent")]):
        entry = {"type": "dispatch", "uuid": f"old-{i}", "doc_id": "x", "urn": URN, "state": state,
                 "claimed_at": cht_time(now - age), "claimed_at_epoch": now - age}
        status, body = await asyncio.to_thread(couch_request, "PUT", ledger_url(medic_db, f"old-{i}"), entry)
        assert status == 201, body
    worker = await run_worker()
    sends = worker.budget.for_path(BROADCASTS_PATH)
    # Released sent nothing; the oldest is out of the hour. Where broadcasts share `v2` the
    # worker's own calls since its start (the channel watcher) count there too.
    scope = worker.budget.scope_of(BROADCASTS_PATH)
    own = sum(1 for r in fake_rapidpro.requests if fake_rapidpro.scope_of(r.path) == scope)
    assert 3 <= sends.window_count() <= 3 + own + 1
    assert sends.tokens() >= sends.calls_per_hour - own - 1  # the rest of the hour is known

"""The incoming-SMS webhook and the incoming reconciliation against a real CouchDB-protocol server.

The webhook app runs on aiohttp's AppRunner + TCPSite (port 0) and is called with a real
ClientSession; CouchDB is the `medic_db` fixture's server (the test server, or the external
Apache CouchDB 3 given by TEST_COUCH_URL). "CouchDB down" goes through a small TCP proxy the
test stops and restarts.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
import pytest_asyncio
import structlog
from aiohttp import web

from config.env import parse_couch_url
from config.settings import Settings, parse_settings
from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from playground.rapidpro_profiles import PROFILE_NAMES
from tests.support.couch_fixtures import MedicDb, create_db, load_example_settings, put_settings
from tests.support.tcp_proxy import TcpProxy
from transitions.incoming.record import doc_id_for
from worker.couch.client import CouchServer, Database
from worker.incoming.reconcile import WATERMARK_DOC_ID, IncomingReconciler
from worker.incoming.webhook import V1_PATH, V2_PATH, IncomingWebhook
from worker.rapidpro.budget import RateBudget
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.credentials import Credential

KEY = "the-incoming-key"
PATHS = [V2_PATH, V1_PATH]
NOT_SAVED = b'{"code":400,"error":"Message was not saved"}'
SAVED = b'{"saved":1}'
REPEAT = b'{"saved":0}'


# ---------------------------------------------------------------------------- harness
@pytest.fixture
def settings(medic_db: MedicDb) -> Settings:
    app_settings = load_example_settings()
    put_settings(medic_db.url, app_settings)
    return parse_settings({"settings": app_settings})


@pytest_asyncio.fixture
async def couch(medic_db: MedicDb) -> AsyncIterator[CouchServer]:
    server = CouchServer(parse_couch_url(medic_db.url), timeout=10.0)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def medic(couch: CouchServer, medic_db: MedicDb) -> Database:
    return couch.db(medic_db.name)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


Serve = Callable[[IncomingWebhook], Awaitable[str]]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a webhook's app on 127.0.0.1:0; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(webhook: IncomingWebhook) -> str:
        app = web.Application()
        webhook.register(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


def configured_key(value: str | None = KEY) -> Credential:
    return Credential(None, "rapidpro:incoming", value=value)


@pytest_asyncio.fixture
async def base(medic: Database, settings: Settings, serve: Serve) -> str:
    return await serve(IncomingWebhook(medic, configured_key(), lambda: settings))


async def post(http: aiohttp.ClientSession, url: str, payload: Any = None, *, raw: bytes | None = None,
               authorization: str | None = f"Token {KEY}",
               content_type: str | None = "application/json") -> tuple[int, bytes]:
    headers: dict[str, str] = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if content_type is not None:
        headers["Content-Type"] = content_type
    data = raw if raw is not None else json.dumps(payload).encode()
    async with http.post(url, data=data, headers=headers,
                         skip_auto_headers=() if content_type else ("Content-Type",)) as response:
        return response.status, await response.read()


def message(message_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": message_id or f"rp-{uuid.uuid4()}", "from": "+254712345678", "content": "Hello CHT",
            **extra}


async def docs_for(couch: CouchServer, db: str, gateway_ref: str) -> list[dict[str, Any]]:
    """Every doc holding `gateway_ref` as an incoming message (view brought up to date)."""
    result = await couch.request_json(
        "POST", f"{quote(db, safe='')}/_design/medic-sms/_view/messages_by_gateway_ref",
        params={"include_docs": "true"}, body={"keys": [gateway_ref]})
    return [row["doc"] for row in result["rows"] if row["value"] is None]


# ---------------------------------------------------------------------------- authentication
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("authorization", [None, "", "Bearer the-incoming-key", "token the-incoming-key",
                                           "Token", "Token   ", KEY])
async def test_a_missing_or_malformed_token_is_refused_as_cht_does(
        base: str, http: aiohttp.ClientSession, path: str, authorization: str | None) -> None:
    status, body = await post(http, base + path, message(), authorization=authorization)
    assert (status, body) == (403, b'{"code":403,"error":"Missing authorization token"}')


@pytest.mark.parametrize("path", PATHS)
async def test_a_wrong_token_is_refused_as_cht_does(
        base: str, http: aiohttp.ClientSession, path: str) -> None:
    for wrong in ("Token nope", f"Token {KEY}x", f"Token {KEY[:-1]}", "Token  " + KEY + "z"):
        status, body = await post(http, base + path, message(), authorization=wrong)
        assert (status, body) == (403, b'{"code":403,"error":"Incorrect token"}')


@pytest.mark.parametrize("path", PATHS)
async def test_no_configured_key_is_refused_as_cht_does(
        medic: Database, settings: Settings, serve: Serve, http: aiohttp.ClientSession, path: str) -> None:
    base = await serve(IncomingWebhook(medic, configured_key(None), lambda: settings))
    status, body = await post(http, base + path, message())
    assert (status, body) == (403, b'{"code":403,"error":"No incoming key configured"}')


async def test_the_key_can_rotate_without_a_restart(
        medic: Database, settings: Settings, serve: Serve, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    key_file = tmp_path / "incoming-key"
    key_file.write_text("first-key\n")
    key = Credential(None, "rapidpro:incoming", file=key_file, ttl=0)
    base = await serve(IncomingWebhook(medic, key, lambda: settings))
    assert (await post(http, base + V2_PATH, message(), authorization="Token first-key"))[0] == 200
    key_file.write_text("second-key\n")
    assert await post(http, base + V2_PATH, message(), authorization="Token first-key") == (
        403, b'{"code":403,"error":"Incorrect token"}')
    assert await post(http, base + V2_PATH, message(), authorization="Token second-key") == (200, SAVED)


# ---------------------------------------------------------------------------- storing
@pytest.mark.parametrize("path", PATHS)
async def test_a_message_is_stored_as_a_cht_data_record(
        base: str, http: aiohttp.ClientSession, couch: CouchServer, medic_db: MedicDb, path: str) -> None:
    payload = message(**{"from": "0712345678"}, content="Hello there")
    async with http.post(base + path, data=json.dumps(payload),
                         headers={"Authorization": f"Token {KEY}", "Content-Type": "application/json"}) as r:
        assert r.status == 200
        assert await r.read() == SAVED
        assert r.content_type == "application/json"
    [doc] = await docs_for(couch, medic_db.name, payload["id"])
    assert doc["_id"] == doc_id_for(payload["id"])
    assert isinstance(doc["reported_date"], int) and doc["reported_date"] > 1_700_000_000_000
    assert {k: v for k, v in doc.items() if k not in ("_rev", "reported_date")} == {
        "_id": doc_id_for(payload["id"]),
        "type": "data_record",
        "from": "+254712345678",
        "errors": [],
        "tasks": [],
        "fields": {},
        "sms_message": {"type": "sms_message", "message": "Hello there", "form": "HELLO",
                        "from": "0712345678", "gateway_ref": payload["id"]},
    }


async def test_a_form_message_becomes_a_report(
        base: str, http: aiohttp.ClientSession, couch: CouchServer, medic_db: MedicDb) -> None:
    payload = message(content="FORM some data")
    assert await post(http, base + V2_PATH, payload) == (200, SAVED)
    [doc] = await docs_for(couch, medic_db.name, payload["id"])
    assert doc["form"] == "FORM" and doc["fields"] == {"some_data": "some data"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_the_body_is_json_whatever_the_content_type(
        base: str, http: aiohttp.ClientSession, content_type: str | None) -> None:
    assert await post(http, base + V2_PATH, message(), content_type=content_type) == (200, SAVED)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("payload", [
    {"from": "+254712345678", "content": "x"},
    {"id": "1", "content": "x"},
    {"id": "1", "from": "+254712345678"},
    {"id": "", "from": "+254712345678", "content": "x"},
    {"id": "1", "from": "", "content": "x"},
    {"id": "1", "from": "+254712345678", "content": ""},
    {"id": 1, "from": "+254712345678", "content": "x"},
    {"id": "1", "from": 254712345678, "content": "x"},
    {"id": "1", "from": "+254712345678", "content": None},
    {},
])
async def test_missing_or_invalid_fields_are_not_saved(
        base: str, http: aiohttp.ClientSession, path: str, payload: dict[str, Any]) -> None:
    assert await post(http, base + path, payload) == (400, NOT_SAVED)


@pytest.mark.parametrize("raw", [
    b"", b"{", b"not json", b"id=1&from=2&content=3", b"[]", b'["x"]', b'"text"', b"7", b"null",
    b'{"id": "\xc3\x28", "from": "+254712345678", "content": "x"}',
    '{"id":"1","from":"+254712345678","content":"x"}'.encode("utf-16"),
    b"[" * 50_000 + b"]" * 10,
])
async def test_malformed_bodies_are_not_saved(base: str, http: aiohttp.ClientSession, raw: bytes) -> None:
    assert await post(http, base + V2_PATH, raw=raw) == (400, NOT_SAVED)


async def test_oversized_bodies_are_refused(
        medic: Database, settings: Settings, serve: Serve, http: aiohttp.ClientSession) -> None:
    base = await serve(IncomingWebhook(medic, configured_key(), lambda: settings, max_body=1024))
    fits = message(content="x" * (1024 - len(json.dumps(message(content=""))) - 10))
    assert await post(http, base + V2_PATH, fits) == (200, SAVED)
    big = json.dumps(message(content="x" * 2000)).encode()
    status, body = await post(http, base + V2_PATH, raw=big)
    assert status == 413 and json.loads(body)["code"] == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
        for start in range(0, len(big), 100):
            yield big[start:start + 100]

    async with http.post(base + V2_PATH, data=chunks(), headers={"Authorization": f"Token {KEY}"}) as r:
        assert r.status == 413


# ---------------------------------------------------------------------------- repeats
async def test_a_repeat_answers_saved_0_and_stores_nothing_more(
        base: str, http: aiohttp.ClientSession, couch: CouchServer, medic_db: MedicDb) -> None:
    payload = message()
    assert await post(http, base + V2_PATH, payload) == (200, SAVED)
    assert await post(http, base + V1_PATH, payload) == (200, REPEAT)
    assert await post(http, base + V2_PATH, {**payload, "content": "changed"}) == (200, REPEAT)
    assert len(await docs_for(couch, medic_db.name, payload["id"])) == 1


async def test_sixteen_concurrent_repeats_store_one_doc(
        base: str, http: aiohttp.ClientSession, couch: CouchServer, medic_db: MedicDb) -> None:
    stored = message()
    assert await post(http, base + V2_PATH, stored) == (200, SAVED)
    answers = await asyncio.gather(*(post(http, base + V2_PATH, stored) for _ in range(16)))
    assert answers == [(200, REPEAT)] * 16
    assert len(await docs_for(couch, medic_db.name, stored["id"])) == 1

    fresh = message()  # sixteen at once, none stored before: exactly one is saved
    answers = await asyncio.gather(*(post(http, base + PATHS[i % 2], fresh) for i in range(16)))
    assert sorted(answers) == [(200, REPEAT)] * 15 + [(200, SAVED)]
    assert len(await docs_for(couch, medic_db.name, fresh["id"])) == 1


async def test_sixteen_concurrent_repeats_store_one_doc_across_two_workers(
        medic: Database, settings: Settings, serve: Serve, http: aiohttp.ClientSession,
        couch: CouchServer, medic_db: MedicDb) -> None:
    bases = [await serve(IncomingWebhook(medic, configured_key(), lambda: settings)) for _ in range(2)]
    fresh = message()
    answers = await asyncio.gather(*(post(http, bases[i % 2] + V2_PATH, fresh) for i in range(16)))
    assert sorted(answers) == [(200, REPEAT)] * 15 + [(200, SAVED)]
    assert len(await docs_for(couch, medic_db.name, fresh["id"])) == 1


async def test_an_id_stored_earlier_by_cht_is_a_repeat(
        medic: Database, settings: Settings, serve: Serve, http: aiohttp.ClientSession,
        couch: CouchServer, medic_db: MedicDb) -> None:
    cht_doc = {"_id": str(uuid.uuid4()), "type": "data_record", "from": "+254712345678", "errors": [],
               # A record CHT stored earlier: its reported_date is data the worker never judges.
               "tasks": [], "fields": {}, "reported_date": 1_700_000_000_000,
               "sms_message": {"type": "sms_message", "message": "Hi", "from": "+254712345678",
                               "gateway_ref": "cht-stored-1"}}
    # An outgoing task whose gateway_ref (a broadcast id) equals an incoming id is not that message.
    outgoing = {"_id": str(uuid.uuid4()), "type": "data_record", "tasks": [
        {"state": "sent", "gateway_ref": "cht-broadcast-7",
         "messages": [{"uuid": str(uuid.uuid4()), "to": "+254712345678", "message": "Visit"}]}]}
    await medic.put(cht_doc)
    await medic.put(outgoing)
    webhook = IncomingWebhook(medic, configured_key(), lambda: settings)
    base = await serve(webhook)
    assert await post(http, base + V2_PATH, message("cht-stored-1")) == (200, REPEAT)
    assert [d["_id"] for d in await docs_for(couch, medic_db.name, "cht-stored-1")] == [cht_doc["_id"]]
    assert await post(http, base + V2_PATH, message("cht-broadcast-7")) == (200, SAVED)
    assert webhook.counters["repeat_cht"] == 1 and webhook.counters["saved"] == 1


# ---------------------------------------------------------------------------- CouchDB away
@pytest_asyncio.fixture
async def proxied(medic_db: MedicDb) -> AsyncIterator[tuple[TcpProxy, Database]]:
    target = urlsplit(medic_db.server_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5984)
    await proxy.start()
    credentials = f"{target.username}:{target.password}@" if target.username else ""
    server = CouchServer(parse_couch_url(f"http://{credentials}127.0.0.1:{proxy.port}/{medic_db.name}"))
    try:
        yield proxy, server.db(medic_db.name)
    finally:
        await server.close()
        await proxy.stop()


async def test_couchdb_down_answers_503_stores_nothing_then_recovers(
        proxied: tuple[TcpProxy, Database], settings: Settings, serve: Serve, http: aiohttp.ClientSession,
        couch: CouchServer, medic_db: MedicDb) -> None:
    proxy, medic = proxied
    webhook = IncomingWebhook(medic, configured_key(), lambda: settings, couch_timeout=1.0)
    base = await serve(webhook)
    assert await post(http, base + V2_PATH, message()) == (200, SAVED)  # connections are open

    proxy.set_mode("down")
    payload = message()
    status, body = await post(http, base + V2_PATH, payload)
    assert status == 503 and json.loads(body)["code"] == 503
    assert await docs_for(couch, medic_db.name, payload["id"]) == []
    assert await couch.db(medic_db.name).get_or_none(doc_id_for(payload["id"])) is None

    proxy.set_mode("hang")  # no answer at all: the deadline, well under RapidPro's 15 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _ = await post(http, base + V2_PATH, payload)
    assert status == 503 and loop.time() - started < 3
    proxy.set_mode("up")

    assert await post(http, base + V2_PATH, payload) == (200, SAVED)
    assert len(await docs_for(couch, medic_db.name, payload["id"])) == 1
    assert webhook.counters["unavailable"] == 2


async def test_an_unreachable_couchdb_answers_503_quickly(
        settings: Settings, serve: Serve, http: aiohttp.ClientSession) -> None:
    server = CouchServer(parse_couch_url("http://admin:pass@127.0.0.1:9/medic"))  # nothing listens
    try:
        base = await serve(IncomingWebhook(server.db("medic"), configured_key(), lambda: settings))
        status, body = await post(http, base + V2_PATH, message())
        assert status == 503
        assert json.loads(body) == {"code": 503, "error": "Message was not saved: database unavailable"}
    finally:
        await server.close()


# ---------------------------------------------------------------------------- observability
async def test_one_log_event_per_request_with_masked_sender_and_no_key(
        base: str, http: aiohttp.ClientSession) -> None:
    payload = message(**{"from": "+254712345678"})
    with structlog.testing.capture_logs() as logs:
        await post(http, base + V2_PATH, payload)
        await post(http, base + V1_PATH, payload)
        await post(http, base + V2_PATH, payload, authorization="Token wrong-key-value")
        await post(http, base + V2_PATH, raw=b"nope")
    events = [e for e in logs if e["event"] == "incoming_sms"]
    assert [e["outcome"] for e in events] == ["saved", "repeat", "wrong_token", "invalid"]
    assert events[0]["id"] == payload["id"] and events[0]["path"] == "v2"
    assert events[1]["path"] == "v1"
    assert events[0]["sender"] == "+2547******78"
    assert all(isinstance(e["duration_ms"], float) for e in events)
    text = repr(logs)
    assert KEY not in text and "wrong-key-value" not in text and "+254712345678" not in text


async def test_counters_count_by_outcome(
        medic: Database, settings: Settings, serve: Serve, http: aiohttp.ClientSession) -> None:
    webhook = IncomingWebhook(medic, configured_key(), lambda: settings)
    base = await serve(webhook)
    payload = message()
    await post(http, base + V2_PATH, payload)
    await post(http, base + V2_PATH, payload)
    await post(http, base + V2_PATH, payload, authorization=None)
    await post(http, base + V2_PATH, {"id": "x"})
    counters = webhook.counters
    assert counters["saved"] == 1 and counters["repeat"] == 1
    assert counters["missing_token"] == 1 and counters["invalid"] == 1
    assert sum(counters.values()) == 4


# ---------------------------------------------------------------------------- reconciliation
@pytest.mark.parametrize("rapidpro_profile", PROFILE_NAMES)
async def test_reconciliation_stores_what_the_webhook_missed_and_nothing_twice(
        medic: Database, settings: Settings, serve: Serve, http: aiohttp.ClientSession,
        couch: CouchServer, medic_db: MedicDb, fake_rapidpro: FakeRapidPro, rapidpro_profile: str) -> None:
    own_db_url = f"{medic_db.url}-rapidpro"
    create_db(own_db_url)
    own_db = couch.db(f"{medic_db.name}-rapidpro")
    rp_settings = parse_settings({"settings": {**load_example_settings(),
                                               "sms": {"rapidpro": {"url": fake_rapidpro.url}}}})
    webhook = IncomingWebhook(medic, configured_key(), lambda: rp_settings)
    base = await serve(webhook)

    delivered = fake_rapidpro.add_incoming("Delivered by the webhook", "tel:+254712345678", "flows")
    missed = fake_rapidpro.add_incoming("Missed while we were down", "tel:+254700000001", "inbox")
    in_a_flow = fake_rapidpro.add_incoming("FORM from a flow", "tel:+254700000002", "flows")
    # The flow's body carries the message uuid: "id": "@input.uuid"
    assert await post(http, base + V2_PATH, {"id": delivered.uuid, "from": "+254712345678",
                                             "content": delivered.text}) == (200, SAVED)

    async with RapidProClient(RateBudget(3600)) as client:
        reconciler = IncomingReconciler(
            client=client, token=Credential(None, "rapidpro:outgoing", value=DEFAULT_TOKEN),
            settings=lambda: rp_settings, store=webhook.store, own_db=own_db, min_age=0)
        first = await reconciler.run_round()
        if "uuid" not in fake_rapidpro.profile.message_fields:
            # RapidPro before v10.3.79 lists no message uuid: nothing to match the webhook's ids
            # with, so nothing is stored (it would all be stored twice) and the round says why.
            assert (first.listed, first.saved) == (3, 0) and "no message uuid" in (first.skipped_reason or "")
            assert len(await docs_for(couch, medic_db.name, delivered.uuid)) == 1
            assert await docs_for(couch, medic_db.name, missed.uuid) == []
            return
        assert (first.listed, first.saved, first.repeats) == (3, 2, 1)
        second = await reconciler.run_round()  # the overlap re-reads them: all repeats now
        assert (second.saved, second.repeats) == (0, 3)

    for msg in (delivered, missed, in_a_flow):
        assert len(await docs_for(couch, medic_db.name, msg.uuid)) == 1
    [doc] = await docs_for(couch, medic_db.name, missed.uuid)
    assert doc["_id"] == doc_id_for(missed.uuid)
    assert doc["from"] == "+254700000001" and doc["sms_message"]["message"] == "Missed while we were down"
    assert doc["reported_date"] == int(missed.created_on.timestamp() * 1000)
    [report] = await docs_for(couch, medic_db.name, in_a_flow.uuid)
    assert report["form"] == "FORM" and report["fields"] == {"some_data": "from a flow"}
    watermark = await own_db.get(WATERMARK_DOC_ID)
    assert watermark["after"].endswith("Z")
    # The webhook meets what the reconciliation stored: a late webhook call is a repeat.
    assert await post(http, base + V2_PATH, {"id": missed.uuid, "from": "+254700000001",
                                             "content": missed.text}) == (200, REPEAT)

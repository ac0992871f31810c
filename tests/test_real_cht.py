"""The worker beside CHT's own api and sentinel (a real CHT, not a stand-in).

Skipped unless given a running CHT: `TEST_CHT_API_URL` (its api, with an admin's credentials, e.g.
http://admin:pass@127.0.0.1:5988) and `TEST_CHT_COUCH_URL` (its CouchDB server, admin credentials).
CHT must be configured as for SMS: the SMS form `P` (LMP weeks, patient name), the `registration`
transition with a reply to the reporting unit, and a contact with the phone `TEST_CHT_PHONE`
(default +254712345678). These tests change `sms.outgoing_service`, `sms.rapidpro.url` and the
vault's `rapidpro:*` credentials, and put the settings back afterwards. Never run in CI: CHT's
source is not there. The README's "Verified against CHT" says what was run, on which version.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from playground.fake_rapidpro import FakeRapidPro
from tests.support.couch_fixtures import couch_request, create_db, delete_db
from tests.support.daemon import child_env
from tests.support.waiting import eventually
from tests.support.workers import InProcessWorkers
from worker.app import Worker
from worker.incoming.webhook import V2_PATH

API_ENV, COUCH_ENV = "TEST_CHT_API_URL", "TEST_CHT_COUCH_URL"
PHONE = os.environ.get("TEST_CHT_PHONE", "+254712345678")
SLOW = 100.0  # CHT's api sends once a minute; sentinel is quick

pytestmark = [
    pytest.mark.slow, pytest.mark.real_cht,
    pytest.mark.skipif(
        not (os.environ.get(API_ENV) and os.environ.get(COUCH_ENV)),
        reason=f"needs a running CHT: set {API_ENV} (CHT's api, admin credentials) and {COUCH_ENV} "
               "(its CouchDB server, admin credentials)"),
]


@pytest.fixture
def rapidpro_profile() -> str:
    return "current"  # one RapidPro is enough beside a real CHT


def _request(method: str, url: str, body: Any = None, *, text: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """JSON or plain text to CHT's api; credentials in `url` become Basic auth."""
    if text is None:
        return couch_request(method, url, body)
    parts = urllib.parse.urlsplit(url)
    auth = base64.b64encode(f"{urllib.parse.unquote(parts.username or '')}:"
                            f"{urllib.parse.unquote(parts.password or '')}".encode()).decode()
    netloc = f"{parts.hostname}:{parts.port}"
    bare = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    request = urllib.request.Request(bare, data=text.encode(), method=method, headers={
        "Authorization": f"Basic {auth}", "Content-Type": "text/plain", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@dataclass
class Cht:
    api: str  # with admin credentials
    couch: str  # server, admin credentials
    medic: str  # couch + /medic

    def settings(self) -> dict[str, Any]:
        status, body = _request("GET", f"{self.api}/api/v1/settings")
        assert status == 200, body
        return body

    def set_sms(self, service: str, url: str) -> None:
        settings = self.settings()
        settings["sms"] = {**(settings.get("sms") or {}), "outgoing_service": service,
                           "rapidpro": {"url": url}}
        status, body = _request("PUT", f"{self.api}/api/v1/settings?replace=1", settings)
        assert status == 200, body

    def put_credential(self, credential_id: str, value: str) -> None:
        """As an operator does: CHT's credentials API, a plain-text body."""
        status, body = _request("PUT", f"{self.api}/api/v1/credentials/{credential_id}", text=value)
        assert status == 200, body

    def delete_credential(self, credential_id: str) -> None:
        url = f"{self.medic}-vault/{urllib.parse.quote('credential:' + credential_id, safe='')}"
        status, doc = couch_request("GET", url)
        if status == 200:
            assert couch_request("DELETE", f"{url}?rev={doc['_rev']}")[0] in (200, 202)

    def find(self, selector: dict[str, Any]) -> list[dict[str, Any]]:
        status, body = couch_request("POST", f"{self.medic}/_find", {"selector": selector, "limit": 50})
        assert status == 200, body
        return body["docs"]

    def doc(self, doc_id: str) -> dict[str, Any] | None:
        status, body = couch_request("GET", f"{self.medic}/{urllib.parse.quote(doc_id, safe='')}")
        return body if status == 200 else None

    def info(self, doc_id: str) -> dict[str, Any] | None:
        status, body = couch_request("GET", f"{self.couch}/medic-sentinel/{doc_id}-info")
        return body if status == 200 else None


@pytest.fixture
def cht() -> Iterator[Cht]:
    api, couch = os.environ[API_ENV].rstrip("/"), os.environ[COUCH_ENV].rstrip("/")
    found = Cht(api, couch, f"{couch}/medic")
    before = found.settings()
    vault = {}
    for credential_id in ("rapidpro:incoming", "rapidpro:outgoing"):
        status, doc = couch_request("GET", f"{found.medic}-vault/credential:{credential_id}")
        vault[credential_id] = doc if status == 200 else None
    try:
        yield found
    finally:
        assert _request("PUT", f"{api}/api/v1/settings?replace=1", before)[0] == 200
        for credential_id, doc in vault.items():  # the vault as it was
            url = f"{found.medic}-vault/credential:{credential_id}"
            status, current = couch_request("GET", url)
            if doc is None and status == 200:
                couch_request("DELETE", f"{url}?rev={current['_rev']}")
            elif doc is not None:
                restored = {k: v for k, v in doc.items() if k != "_rev"}
                if status == 200:
                    restored["_rev"] = current["_rev"]
                couch_request("PUT", url, restored)


@pytest.fixture
async def worker_db(cht: Cht) -> AsyncIterator[str]:
    name = f"medic-rapidpro-t{uuid.uuid4().hex[:8]}"
    yield name
    await asyncio.to_thread(delete_db, f"{cht.couch}/{name}")


@pytest.fixture
def start(cht: Cht, worker_db: str, in_process_workers: InProcessWorkers) -> Callable[..., Awaitable[Worker]]:
    async def start(**env: str) -> Worker:
        values = {"COUCH_URL": cht.medic, "WORKER_DB": worker_db, "LISTEN_PORT": "0",
                  "INSTANCE_ID": f"real-cht-{uuid.uuid4().hex[:6]}", "CREDENTIALS_TTL": "1",
                  "STATUS_POLL_INTERVAL": "1", "CHECKPOINT_INTERVAL": "0.2",
                  "RAPIDPRO_CALLS_PER_HOUR": "100000", **env}
        return await in_process_workers.start({k: v for k, v in values.items() if v != ""})
    return start


async def post_sms(url: str, key: str, text: str, message_id: str | None = None) -> tuple[int, Any]:
    body = {"id": message_id or str(uuid.uuid4()), "from": PHONE, "content": text}
    async with aiohttp.ClientSession() as session, session.post(
            url, data=json.dumps(body), timeout=aiohttp.ClientTimeout(total=30),
            headers={"Authorization": f"Token {key}", "Content-Type": "application/json"}) as response:
        return response.status, await response.json(content_type=None)


def worker_url(worker: Worker) -> str:
    assert worker.http is not None
    return f"http://127.0.0.1:{worker.http.port}{V2_PATH}"


async def processed_report(cht: Cht, message_id: str, timeout: float = SLOW) -> dict[str, Any]:
    """The report stored for this incoming message, once sentinel has added its reply task."""
    async def found() -> dict[str, Any] | None:
        docs = await asyncio.to_thread(cht.find, {"sms_message.gateway_ref": message_id})
        if docs and docs[0].get("tasks") and await asyncio.to_thread(cht.info, docs[0]["_id"]):
            return docs[0]
        return None
    return await eventually(found, timeout)


async def task_in(cht: Cht, doc_id: str, states: set[str], timeout: float = SLOW) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        doc = await asyncio.to_thread(cht.doc, doc_id)
        return doc["tasks"][0] if doc and doc["tasks"][0]["state"] in states else None
    return await eventually(found, timeout)


def posts_of(fake: FakeRapidPro, text: str) -> list[Any]:
    """Every broadcast POSTed with this text (by the worker or by CHT's own sender)."""
    def texts(body: Any) -> list[str]:
        try:
            sent = json.loads(body).get("text")
        except (ValueError, AttributeError):
            return []
        return list(sent.values()) if isinstance(sent, dict) else [sent]
    return [r for r in fake.requests_to("/api/v2/broadcasts.json", "POST") if text in texts(r.body)]


# ---------------------------------------------------------------------------- the tests
async def test_credentials_put_through_chts_api_are_found_and_rotated_without_restart(
        cht, start, fake_rapidpro):
    fake_rapidpro.valid_tokens |= {"cht-token-1", "cht-token-2"}
    await asyncio.to_thread(cht.set_sms, "rapidpro-worker", fake_rapidpro.url)
    await asyncio.to_thread(cht.put_credential, "rapidpro:incoming", "cht-key-1")
    await asyncio.to_thread(cht.put_credential, "rapidpro:outgoing", "cht-token-1")
    worker = await start(OUTGOING_SERVICE_NAME="rapidpro-worker")
    first = f"w-{uuid.uuid4()}"
    assert await post_sms(worker_url(worker), "cht-key-1", "P 12 Vault One", first) == (200, {"saved": 1})
    assert (await post_sms(worker_url(worker), "cht-key-2", "P 12 Nobody"))[0] == 403
    report = await processed_report(cht, first)
    await task_in(cht, report["_id"], {"received-by-gateway", "sent", "delivered"})
    [post] = posts_of(fake_rapidpro, report["tasks"][0]["messages"][0]["message"])
    assert post.token == "cht-token-1"
    health = await worker.health()
    assert health["outgoing"]["token_source"] == "vault"

    # Rotated through CHT's api: in force within CREDENTIALS_TTL, no restart.
    await asyncio.to_thread(cht.put_credential, "rapidpro:incoming", "cht-key-2")
    await asyncio.to_thread(cht.put_credential, "rapidpro:outgoing", "cht-token-2")
    second = f"w-{uuid.uuid4()}"

    async def new_key_works() -> bool:
        return (await post_sms(worker_url(worker), "cht-key-2", "P 12 Vault Two", second))[0] == 200
    await eventually(new_key_works, 10)
    assert (await post_sms(worker_url(worker), "cht-key-1", "P 12 Old Key"))[0] == 403
    report = await processed_report(cht, second)
    await task_in(cht, report["_id"], {"received-by-gateway", "sent", "delivered"})
    [post] = posts_of(fake_rapidpro, report["tasks"][0]["messages"][0]["message"])
    assert post.token == "cht-token-2"


async def test_the_worker_stands_down_while_chts_sender_runs_and_nothing_goes_out_twice(
        cht, start, fake_rapidpro):
    fake_rapidpro.valid_tokens |= {"cht-token-1"}
    await asyncio.to_thread(cht.set_sms, "rapidpro", fake_rapidpro.url)
    await asyncio.to_thread(cht.put_credential, "rapidpro:incoming", "cht-key-1")
    await asyncio.to_thread(cht.put_credential, "rapidpro:outgoing", "cht-token-1")
    worker = await start(RAPIDPRO_API_TOKEN="cht-token-1", OUTGOING_SERVICE_NAME="rapidpro")
    health = await worker.health()
    assert health["outgoing"]["cht_sender_on"] is True and health["outgoing"]["sending"] is False

    first = f"w-{uuid.uuid4()}"
    assert (await post_sms(worker_url(worker), "cht-key-1", "P 12 Sent By Cht", first))[0] == 200
    report = await processed_report(cht, first)
    text = report["tasks"][0]["messages"][0]["message"]
    await task_in(cht, report["_id"], {"received-by-gateway", "sent", "delivered"})  # CHT's minute tick
    posts = posts_of(fake_rapidpro, text)
    assert len(posts) == 1 and not posts[0].user_agent.startswith("cht-rapidpro-worker")

    # The operator switches CHT's sender off (its token out of the vault): the worker takes over.
    await asyncio.to_thread(cht.delete_credential, "rapidpro:outgoing")
    await eventually(lambda: not worker.cht_sender.on, 10)
    await asyncio.to_thread(cht.put_credential, "rapidpro:incoming", "cht-key-1")
    second = f"w-{uuid.uuid4()}"
    assert (await post_sms(worker_url(worker), "cht-key-1", "P 12 Sent By Worker", second))[0] == 200
    report = await processed_report(cht, second)
    text = report["tasks"][0]["messages"][0]["message"]
    await task_in(cht, report["_id"], {"received-by-gateway", "sent", "delivered"}, 20)
    posts = posts_of(fake_rapidpro, text)
    assert len(posts) == 1 and posts[0].user_agent.startswith("cht-rapidpro-worker")


# Fields that differ by nature between two reports of the same text (ids, times, who stored it).
DIFFERENT_BY_NATURE = {"_id", "_rev", "reported_date", "sms_message", "tasks", "scheduled_tasks", "fields",
                       "patient_id", "contact"}


async def test_an_sms_stored_by_the_worker_is_processed_by_sentinel_like_one_stored_by_cht(
        cht, start, fake_rapidpro):
    await asyncio.to_thread(cht.set_sms, "rapidpro-worker", fake_rapidpro.url)
    await asyncio.to_thread(cht.put_credential, "rapidpro:incoming", "cht-key-1")
    worker = await start(OUTGOING_SERVICE_NAME="rapidpro-worker", RAPIDPRO_API_TOKEN="cht-token-1")
    fake_rapidpro.valid_tokens |= {"cht-token-1"}
    by_worker, by_cht = f"w-{uuid.uuid4()}", f"c-{uuid.uuid4()}"
    assert await post_sms(worker_url(worker), "cht-key-1", "P 12 Same Text", by_worker) == (200, {"saved": 1})
    parts = urllib.parse.urlsplit(cht.api)  # CHT's endpoint takes the key alone, as RapidPro sends it
    endpoint = f"{parts.scheme}://{parts.hostname}:{parts.port}/api/v2/sms/rapidpro/incoming-messages"
    assert await post_sms(endpoint, "cht-key-1", "P 12 Same Text", by_cht) == (200, {"saved": 1})
    ours, theirs = await processed_report(cht, by_worker), await processed_report(cht, by_cht)
    for doc in (ours, theirs):  # both replies go out through the worker, once each
        await task_in(cht, doc["_id"], {"received-by-gateway", "sent", "delivered"}, 30)
    ours, theirs = cht.doc(ours["_id"]), cht.doc(theirs["_id"])
    assert ours is not None and theirs is not None
    same = {k: v for k, v in ours.items() if k not in DIFFERENT_BY_NATURE}
    assert same == {k: v for k, v in theirs.items() if k not in DIFFERENT_BY_NATURE}
    assert ours["fields"] == theirs["fields"]
    assert ours["contact"]["_id"] == theirs["contact"]["_id"]
    assert set(ours["sms_message"]) == set(theirs["sms_message"])
    assert {k: v for k, v in ours["sms_message"].items() if k not in ("gateway_ref",)} == \
           {k: v for k, v in theirs["sms_message"].items() if k not in ("gateway_ref",)}
    assert [m["message"] for t in ours["tasks"] for m in t["messages"]] == \
           [m["message"].replace(theirs["patient_id"], ours["patient_id"])
            for t in theirs["tasks"] for m in t["messages"]]
    assert [(t.get("type"), t["state"]) for t in ours["scheduled_tasks"]] == \
           [(t.get("type"), t["state"]) for t in theirs["scheduled_tasks"]]
    our_info, their_info = cht.info(ours["_id"]), cht.info(theirs["_id"])
    assert {k: v["ok"] for k, v in our_info["transitions"].items()} == \
           {k: v["ok"] for k, v in their_info["transitions"].items()}
    assert our_info["transitions"]["registration"]["ok"] is True
    patients = [cht.find({"type": "person", "source_id": d["_id"]}) for d in (ours, theirs)]
    assert [len(p) for p in patients] == [1, 1] and patients[0][0]["name"] == patients[1][0]["name"]
    # The one difference kept (docs/security.md, 'Verified against CHT'): CHT's api records when a doc was
    # written through it; sentinel says "unknown" for docs written straight to CouchDB.
    assert our_info.get("initial_replication_date") == "unknown"

    # Each reply was sent once, and is followed to `delivered`.
    for doc in (ours, theirs):
        text = doc["tasks"][0]["messages"][0]["message"]
        assert len(posts_of(fake_rapidpro, text)) == 1
        [broadcast] = [b for b in fake_rapidpro.broadcasts if b.raw_text == text]
        fake_rapidpro.set_status(fake_rapidpro.ref(broadcast), "delivered")
    for doc in (ours, theirs):
        assert (await task_in(cht, doc["_id"], {"delivered"}, 30))["gateway_ref"]


async def test_the_worker_runs_as_a_non_admin_cht_user(cht, start, fake_rapidpro, worker_db, tmp_path,
                                                       in_process_workers):
    """A CHT user with the `gateway` role (a member of medic, as CHT's api sets medic's _security),
    and a member and admin of the worker's own database, created by an admin (docs/security.md, 'Minimum
    CouchDB rights'). CHT's vault is for server admins: the token and key are configured."""
    name, password = f"rapidpro-worker-{uuid.uuid4().hex[:6]}", f"Pw-{uuid.uuid4().hex}"
    status, body = await asyncio.to_thread(_request, "POST", f"{cht.api}/api/v1/users",
                                           {"username": name, "password": password, "roles": ["gateway"]})
    assert status == 200, body
    try:
        await asyncio.to_thread(create_db, f"{cht.couch}/{worker_db}")
        security = {"admins": {"names": [name], "roles": []}, "members": {"names": [name], "roles": []}}
        assert (await asyncio.to_thread(couch_request, "PUT", f"{cht.couch}/{worker_db}/_security",
                                        security))[0] == 200
        scheme, rest = cht.couch.split("://", 1)
        as_user = f"{scheme}://{name}:{password}@{rest.split('@', 1)[-1]}/medic"
        fake_rapidpro.valid_tokens |= {"user-token"}
        await asyncio.to_thread(cht.set_sms, "rapidpro-worker", fake_rapidpro.url)
        env = {"COUCH_URL": as_user, "RAPIDPRO_API_TOKEN": "user-token", "RAPIDPRO_INCOMING_KEY": "user-key",
               "OUTGOING_SERVICE_NAME": "rapidpro-worker"}
        worker = await start(**env)
        message_id = f"w-{uuid.uuid4()}"
        assert await post_sms(worker_url(worker), "user-key", "P 12 Least Rights", message_id) == \
               (200, {"saved": 1})
        report = await processed_report(cht, message_id)
        await task_in(cht, report["_id"], {"received-by-gateway", "sent", "delivered"}, 30)
        assert len(posts_of(fake_rapidpro, report["tasks"][0]["messages"][0]["message"])) == 1
        # `check` agrees the rights suffice.
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "worker", "check", "--json"],
            env=child_env({**env, "WORKER_DB": worker_db, "LISTEN_PORT": "0"}), capture_output=True,
            text=True, timeout=60, cwd=tmp_path)
        checks = {f["check"]: f["level"] for f in json.loads(result.stdout)["checks"]}
        assert checks["medic"] == "ok" and checks["worker_db"] == "ok"
        assert checks["double_sender"] != "problem"
    finally:
        await in_process_workers.stop_all()  # while its user still exists: the last checkpoint
        await asyncio.to_thread(_request, "DELETE", f"{cht.api}/api/v1/users/{name}")

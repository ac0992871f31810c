"""The public door (WEBHOOK_LISTEN_HOST/PORT): only the webhook and a minimal /readyz are public,
wrong keys cost CouchDB nothing, and slow or malformed requests are cut off."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from config.credentials import encrypt_credential
from tests.support.couch_fixtures import MedicDb, create_db, put_settings, put_vault_credential
from tests.support.http_proxy import CountingProxy
from tests.support.waiting import eventually
from tests.support.workers import InProcessWorkers
from worker.app import Worker
from worker.incoming.webhook import V1_PATH, V2_PATH

KEY = "incoming-key-for-the-door"
SECRET = "vault-secret-for-the-door"
FORMS = {"V": {"meta": {"code": "V"}, "fields": {"n": {"type": "string", "position": 0}}}}


@pytest.fixture
async def start_worker(medic_db: MedicDb, in_process_workers: InProcessWorkers
                       ) -> Callable[..., Awaitable[Worker]]:
    await asyncio.to_thread(put_settings, medic_db.url, {"default_country_code": 254, "forms": FORMS})

    async def start(**env: str) -> Worker:
        return await in_process_workers.start({
            "COUCH_URL": medic_db.url, "LISTEN_PORT": "0", "WEBHOOK_LISTEN_HOST": "0.0.0.0",
            "WEBHOOK_LISTEN_PORT": "0", "RAPIDPRO_INCOMING_KEY": KEY, **env})
    return start


def _ports(worker: Worker) -> tuple[int, int]:
    assert worker.http is not None and worker.http.port is not None
    assert worker.public_http is not None and worker.public_http.port is not None
    return worker.http.port, worker.public_http.port


async def _post(session: aiohttp.ClientSession, port: int, key: str, body: dict[str, Any],
                path: str = V2_PATH) -> tuple[int, Any]:
    async with session.post(f"http://127.0.0.1:{port}{path}", data=json.dumps(body),
                            headers={"Authorization": f"Token {key}"}) as response:
        return response.status, await response.json(content_type=None)


async def test_only_the_webhook_and_a_minimal_readyz_are_public(start_worker):
    worker = await start_worker()
    operator, public = _ports(worker)
    assert operator != public
    async with aiohttp.ClientSession() as session:
        for method, path in [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/"), ("GET", "/admin/rescan"),
                             ("POST", "/admin/rescan"), ("POST", "/admin/parked/retry"),
                             ("GET", "/healthz/"), ("GET", "/api/v2/sms/rapidpro"), ("GET", "/_utils")]:
            async with session.request(method, f"http://127.0.0.1:{public}{path}") as response:
                assert response.status == 404, (method, path)
                text = await response.text()
                assert "feed" not in text and "rapidpro_url" not in text
        async with session.get(f"http://127.0.0.1:{public}/readyz") as response:
            assert (response.status, await response.json()) == (200, {"ready": True})
            assert "aiohttp" not in response.headers.get("Server", "")  # no versions for the internet

        assert await _post(session, public, KEY, {"id": "p-1", "from": "+254700000001",
                                                  "content": "V one"}) == (200, {"saved": 1})
        assert await _post(session, public, KEY, {"id": "p-2", "from": "+254700000001", "content": "V two"},
                           path=V1_PATH) == (200, {"saved": 1})
        assert await _post(session, public, "wrong", {"id": "p-3", "from": "+254700000001",
                                                      "content": "x"}) == (
            403, {"code": 403, "error": "Incorrect token"})

        # The operator's door keeps everything.
        async with session.get(f"http://127.0.0.1:{operator}/healthz") as response:
            health = await response.json()
            assert response.status == 200 and health["incoming"]["requests"]["saved"] == 2
        async with session.get(f"http://127.0.0.1:{operator}/metrics") as response:
            assert response.status == 200
            assert 'cht_rapidpro_webhook_requests_total{outcome="saved"} 2.0' in await response.text()
        async with session.get(f"http://127.0.0.1:{operator}/readyz") as response:
            assert (response.status, (await response.json())["ready"]) == (200, True)


async def test_without_the_setting_there_is_no_public_door(start_worker):
    worker = await start_worker(WEBHOOK_LISTEN_HOST="", WEBHOOK_LISTEN_PORT="")
    assert worker.public_http is None


async def test_wrong_keys_cost_no_couchdb_request(start_worker, medic_db, couch_server_url):
    # The key comes from CHT's vault, the costly case: once read, it is cached.
    await asyncio.to_thread(create_db, medic_db.vault_url)
    await asyncio.to_thread(put_vault_credential, medic_db.vault_url, "rapidpro:incoming",
                            encrypt_credential(KEY, SECRET))
    proxy = CountingProxy(couch_server_url)
    await proxy.start()
    try:
        user, password = (couch_server_url.split("//", 1)[1].split("@", 1)[0].split(":", 1))
        worker = await start_worker(
            COUCH_URL=proxy.url(user, password, medic_db.name), RAPIDPRO_INCOMING_KEY="", COUCH_SECRET=SECRET,
            CREDENTIALS_TTL="60", STATUS_POLL_INTERVAL="3600", SWEEP_INTERVAL="3600",
            CHECKPOINT_INTERVAL="3600")
        _, public = _ports(worker)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
            # A good request reads the key (and stores its message).
            assert await _post(session, public, KEY, {"id": "f-0", "from": "+254700000001",
                                                      "content": "V first"}) == (200, {"saved": 1})
            assert worker.incoming_key.source == "vault"
            before = len(proxy.requests)

            async def wrong(i: int) -> int:
                body = {"id": f"w-{i}", "from": "+254700000001", "content": "x"}
                status, _ = await _post(session, public, f"wrong-{i}", body)
                return status

            async def good(i: int) -> tuple[int, Any]:
                await asyncio.sleep(0)
                return await _post(session, public, KEY, {"id": f"g-{i}", "from": "+254700000001",
                                                          "content": f"V {i}"})

            flood = asyncio.gather(*(wrong(i) for i in range(1000)))
            await asyncio.sleep(0.05)
            # The flood cost nothing: every request the worker made meanwhile was the feed's (or
            # the lease's renewal, which a slow machine's flood can outlast).
            statuses = await flood
            during = proxy.requests[before:]
            assert statuses == [403] * 1000
            assert [r for r in during if not r[1].endswith(("/_changes", "/lease:active-worker"))] == []
            assert worker.incoming.counters["wrong_token"] == 1000

            # Good requests made during a flood are answered (RapidPro gives up after 15 s).
            flood = asyncio.gather(*(wrong(i) for i in range(300)))
            goods = await asyncio.wait_for(asyncio.gather(*(good(i) for i in range(5))), 15)
            assert goods == [(200, {"saved": 1})] * 5
            assert await flood == [403] * 300
    finally:
        await proxy.stop()


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_while_trickling(port: int, head: bytes, trickle: bytes, every: float = 0.1) -> bytes:
    """Send `head`, then `trickle` a byte at a time; return what the server answered once it
    closed the connection (fails if it let the whole trickle through)."""
    reader, writer = await _open(port)
    writer.write(head)
    await writer.drain()
    received = asyncio.ensure_future(reader.read())
    try:
        for byte in trickle:
            if received.done():
                return received.result()
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                return await received
            await asyncio.sleep(every)
        raise AssertionError("the server took the whole trickled request")
    finally:
        writer.close()
        received.cancel()


async def test_a_trickled_request_is_dropped(start_worker):
    worker = await start_worker(WEBHOOK_READ_TIMEOUT="1")
    _, public = _ports(worker)
    # The body: 400 bytes at 10 a second would take 40 s; the server gives it 1 s.
    head = (f"POST {V2_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Token {KEY}\r\n"
            "Content-Length: 400\r\n\r\n").encode()
    answer = await asyncio.wait_for(_closed_while_trickling(public, head, b"x" * 400), 30)
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    # The headers, trickled the same way (one endless but valid header line: no parse error).
    head = f"POST {V2_PATH} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode()
    answer = await asyncio.wait_for(_closed_while_trickling(public, head, b"a" * 400), 30)
    assert answer == b""  # nothing to answer: the request never began
    # Meanwhile and after, good requests are answered.
    async with aiohttp.ClientSession() as session:
        assert await _post(session, public, KEY, {"id": "t-1", "from": "+254700000001",
                                                  "content": "V x"}) == (200, {"saved": 1})


async def test_slow_clients_do_not_hold_up_others(start_worker):
    worker = await start_worker(WEBHOOK_READ_TIMEOUT="20", WEBHOOK_CLIENT_CONCURRENCY="4")
    _, public = _ports(worker)
    # Many connections each stuck mid-body (beyond this client's 4 slots + 4 waiting)...
    stuck = [await _open(public) for _ in range(12)]
    answers: list[asyncio.Future[bytes]] = []
    try:
        for _, writer in stuck:
            writer.write(f"POST {V2_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Token {KEY}\r\n"
                         "Content-Length: 100\r\n\r\nab".encode())
            await writer.drain()
        # ...the ones beyond the client's share are refused at once, not queued for ever...
        answers.extend(asyncio.ensure_future(reader.readline()) for reader, _ in stuck)
        await eventually(lambda: sum(a.done() for a in answers) >= 4)
        # (the others wait for the body or a slot for up to 20 s: longer than this test runs)
        assert sorted(a.result()[:12] for a in answers if a.done()) == [b"HTTP/1.1 429"] * 4
        # ...and another client (here: a different X-Real-IP through a local proxy) is served.
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{public}{V2_PATH}", headers={
                    "Authorization": f"Token {KEY}", "X-Real-IP": "198.51.100.7"},
                    data=json.dumps({"id": "s-1", "from": "+254700000001", "content": "V y"})) as response:
                assert (response.status, await response.json()) == (200, {"saved": 1})
    finally:
        for _, writer in stuck:
            writer.close()
        for answer in answers:
            answer.cancel()


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"POST /api/v2/sms/rapidpro/incoming-messages HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000
    + b"\r\n\r\n",
    b"POST /api/v2/sms/rapidpro/incoming-messages HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /api/v2/sms/rapidpro/incoming-messages HTTP/1.1\r\nHost: x\r\nAuthorization: Token "
    + KEY.encode() + b"\r\nContent-Length: 10000000\r\n\r\n{",
    b"POST /api/v2/sms/rapidpro/incoming-messages HTTP/1.1\r\nHost: x\r\nAuthorization: Token "
    + KEY.encode() + b"\r\nContent-Length: 9\r\n\r\n{\"id\": [}",
], ids=["garbage", "huge-header", "negative-length", "oversized-body", "malformed-json"])
async def test_malformed_requests_get_a_plain_answer(start_worker, raw):
    worker = await start_worker()
    operator, public = _ports(worker)
    for port in (public, operator):
        reader, writer = await _open(port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 15)
        writer.close()
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
        lowered = answer.lower()
        assert b"traceback" not in lowered and b"couch" not in lowered and b".py" not in lowered
    async with aiohttp.ClientSession() as session:
        assert await _post(session, public, KEY, {"id": "m-1", "from": "+254700000001",
                                                  "content": "V z"}) == (200, {"saved": 1})

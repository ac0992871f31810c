"""The playground's RapidPro stand-in: a live workspace's timeline and flow on top of the fake."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

from playground.rapidpro_standin import RapidProStandIn
from tests.support.waiting import eventually
from transitions.rapidpro.relay_flow import relay_export

TOKEN = "standin-token"
KEY = "incoming-key"


@pytest_asyncio.fixture
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for the worker's webhook: records each call, answers like the worker."""
    calls: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append({"headers": dict(request.headers), "body": await request.read()})
        return web.json_response({"saved": 1})

    app = web.Application()
    app.router.add_post("/api/v2/sms/rapidpro/incoming-messages", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/api/v2/sms/rapidpro/incoming-messages", calls
    finally:
        await runner.cleanup()


async def test_messages_move_through_the_timeline_on_their_own() -> None:
    timeline = ((0.05, "wired"), (0.1, "sent"), (0.15, "delivered"))
    async with RapidProStandIn(token=TOKEN, timeline=timeline, message_delay=0) as standin, \
            aiohttp.ClientSession(headers={"Authorization": f"Token {TOKEN}"}) as session:
        async with session.post(f"{standin.url}/api/v2/broadcasts.json",
                                json={"urns": ["tel:+254712345678"], "text": "Hello"}) as r:
            assert r.status == 201
            broadcast = (await r.json())["id"]

        seen: list[str | None] = []

        async def delivered() -> bool:
            async with session.get(f"{standin.url}/api/v2/messages.json",
                                   params={"broadcast": str(broadcast)}) as r:
                results = (await r.json())["results"]
            seen.append(results[0]["status"] if results else None)
            return seen[-1] == "delivered"

        await eventually(delivered, timeout=5)  # polls do not drive it (scripts are off): the clock does
        assert seen[0] == "queued"
        assert set(seen) <= {"queued", "wired", "sent", "delivered"}
        assert standin.fake.messages_of(broadcast)[0].sent_on is not None


async def test_an_sms_received_calls_the_webhook_as_a_flow_does(
        webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, calls = webhook
    async with RapidProStandIn(token=TOKEN, webhook_url=url, webhook_key=KEY) as standin:
        result = await standin.receive("P 12 Mary Atieno", "+254722000111")
        assert (result.status, json.loads(result.body)) == (200, {"saved": 1})
        assert len(calls) == 1
        assert calls[0]["headers"]["Authorization"] == f"Token {KEY}"
        assert json.loads(calls[0]["body"]) == {"id": result.message.uuid, "from": "+254722000111",
                                                "content": "P 12 Mary Atieno"}
        # Stored like RapidPro does, so the worker's reconciliation would find it too.
        message = standin.fake.message(result.message.uuid)
        assert (message.direction, message.folder, message.urn) == ("in", "flows", "tel:+254722000111")

        # The channel's receive URL (what the playground's guide tells people to curl).
        async with aiohttp.ClientSession() as session:
            async with session.post(standin.receive_url,
                                    data={"from": "+254722000112", "text": "N 12345 F 20 Jane Cho"}) as r:
                assert r.status == 200
                answer = (await r.json())["data"][0]
            assert answer["webhook"]["status"] == 200
            assert json.loads(calls[1]["body"])["content"] == "N 12345 F 20 Jane Cho"
            async with session.post(standin.receive_url, data={"text": "no sender"}) as r:
                assert r.status == 400
        assert len(calls) == 2


async def test_a_webhook_that_does_not_answer_takes_the_failure_branch() -> None:
    nowhere = "http://127.0.0.1:1/incoming"
    async with RapidProStandIn(token=TOKEN, webhook_url=nowhere, webhook_key=KEY) as standin:
        result = await standin.receive("hello", "+254722000111")
        assert result.status is None and result.error
        # The message is in RapidPro all the same: only the webhook failed (no retry, as RapidPro).
        assert standin.fake.message(result.message.uuid).text == "hello"


async def test_once_the_file_is_imported_the_workspaces_own_flow_calls_the_webhook(
        webhook: tuple[str, list[dict[str, Any]]]) -> None:
    """The import page takes the file `rapidpro setup` writes; from then on an SMS runs that flow:
    its webhook evaluated with the globals and the message (what RapidPro would send)."""
    url, calls = webhook
    async with RapidProStandIn(token=TOKEN, webhook_url="http://127.0.0.1:1/", webhook_key="x") as standin, \
            aiohttp.ClientSession(headers={"Authorization": f"Token {TOKEN}"}) as session:
        export = relay_export(standin.url)
        async with session.post(f"{standin.url}/orgimport/create/", json=export) as r:  # the file as the body
            assert r.status == 200, await r.text()
        form = aiohttp.FormData()  # or as a form, as the import page sends it
        form.add_field("file", json.dumps(export).encode(), filename="cht-rapidpro-flow.json",
                       content_type="application/json")
        async with session.post(f"{standin.url}/orgimport/create/", data=form) as r:
            assert r.status == 200 and (await r.json())["triggers"] == ["kept"]  # the same flow, updated
        assert len(standin.workspace.flows) == 1
        # RapidPro creates the referenced globals empty; `rapidpro setup` fills them.
        assert {k: g.value for k, g in standin.workspace.globals.items()} == {"cht_url": "",
                                                                              "cht_api_key": ""}
        standin.workspace.set_global("cht_url", url)
        standin.workspace.set_global("cht_api_key", KEY)

        result = await standin.receive('P 12 "Mary" Atieno', "+254722000111")
        assert result.status == 200
        (call,) = calls
        assert call["headers"]["Authorization"] == f"Token {KEY}"
        assert call["headers"]["Content-Type"] == "application/json"
        assert call["body"].startswith(b'{"content":')  # goflow's json(): sorted keys
        assert json.loads(call["body"]) == {"id": result.message.uuid, "from": "+254722000111",
                                            "content": 'P 12 "Mary" Atieno'}

        async with session.post(f"{standin.url}/orgimport/create/", data=b'{"version": "2"}') as r:
            assert r.status == 400 and "no longer valid" in (await r.json())["error"]

"""RapidProClient against the fake RapidPro (real HTTP on loopback): every outcome type.

Odd answers the fake does not produce (HTML 200, 201 with a broken body, 502, redirects) come
from a tiny aiohttp app of our own (`odd_server`).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import structlog
from aiohttp import web

from playground.fake_rapidpro import BROADCASTS_PATH, DEFAULT_TOKEN, MESSAGES_PATH, FakeClock, FakeRapidPro
from worker.backoff import Backoff
from worker.rapidpro.answers import Broadcast
from worker.rapidpro.budget import Priority, RateBudget
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.errors import (
    MessageRejected,
    RapidProError,
    RapidProNoAnswer,
    RapidProServerError,
    RapidProUnauthorized,
    RapidProUnreachable,
    RateLimited,
    SendInDoubt,
    WorkspaceBlocked,
    WrongUrl,
)

pytest_plugins = ["tests.support.rapidpro_fixtures"]

URN = "tel:+254712345678"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[Callable[..., RapidProClient]]:
    clients: list[RapidProClient] = []

    def make(budget: RateBudget | None = None, **kwargs) -> RapidProClient:
        kwargs.setdefault("timeout", 2.0)
        client = RapidProClient(budget or RateBudget(3600), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def client(make_client) -> RapidProClient:
    return make_client()


@pytest_asyncio.fixture
async def odd_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- sending: answers


async def test_201_gives_a_broadcast_and_sends_the_right_request(client, fake_rapidpro: FakeRapidPro):
    broadcast = await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hello")

    assert isinstance(broadcast, Broadcast)
    [recorded] = fake_rapidpro.broadcasts
    assert broadcast.id == recorded.id and broadcast.uuid == recorded.uuid
    assert broadcast.status == "pending" and broadcast.raw["urns"] == [URN]
    assert recorded.urns == [URN] and recorded.raw_text == "Hello" and recorded.token == DEFAULT_TOKEN
    [request] = fake_rapidpro.requests_to(BROADCASTS_PATH, "POST")
    assert json.loads(request.body) == {"urns": [URN], "text": "Hello"}


async def test_base_url_with_trailing_slash_and_legacy_answer(client, fake_rapidpro: FakeRapidPro):
    fake_rapidpro.legacy_broadcasts = True  # older RapidPro: "queued", no uuid
    broadcast = await client.send_broadcast(fake_rapidpro.url + "/", DEFAULT_TOKEN, URN, "Hi")
    assert broadcast.status == "queued" and broadcast.uuid is None
    assert broadcast.id == fake_rapidpro.broadcasts[0].id


async def test_a_broadcast_answered_failed_is_still_a_broadcast(client, fake_rapidpro, monkeypatch):
    monkeypatch.setattr(fake_rapidpro, "_broadcast_status", lambda *_a, **_k: "failed")
    broadcast = await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
    assert broadcast.status == "failed" and len(fake_rapidpro.broadcasts) == 1


async def test_invalid_urn_is_rejected_with_a_readable_reason(client, fake_rapidpro):
    with pytest.raises(MessageRejected) as caught:
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, "tel:0712", "Hi")
    assert caught.value.reason == (
        "urns[0]: Invalid URN: tel:0712. Ensure phone numbers contain country codes.")
    assert not caught.value.transient and caught.value.status == 400
    assert fake_rapidpro.broadcasts == []


async def test_too_long_text_is_rejected(client, fake_rapidpro):
    with pytest.raises(MessageRejected) as caught:
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "x" * 4097)
    assert caught.value.reason == "text[eng]: Ensure this field has no more than 4096 characters."


@pytest.mark.parametrize("state", ["flagged", "suspended"])
async def test_blocked_workspace_is_not_a_message_rejection(client, fake_rapidpro, state):
    fake_rapidpro.workspace_state = state
    with pytest.raises(WorkspaceBlocked) as caught:
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
    assert not isinstance(caught.value, MessageRejected)
    assert state in caught.value.reason
    assert fake_rapidpro.broadcasts == []


async def test_other_400_without_message_fields_is_workspace_blocked(client, odd_server):
    async def handler(_request: web.Request) -> web.Response:
        return web.json_response({"detail": "JSON parse error"}, status=400)

    with pytest.raises(WorkspaceBlocked, match="JSON parse error"):
        await client.send_broadcast(await odd_server(handler), DEFAULT_TOKEN, URN, "Hi")


async def test_bad_token_is_unauthorized(client, fake_rapidpro):
    with pytest.raises(RapidProUnauthorized) as caught:
        await client.send_broadcast(fake_rapidpro.url, "wrong-token", URN, "Hi")
    assert caught.value.reason == "Invalid token" and caught.value.status == 403
    assert "wrong-token" not in str(caught.value)


async def test_404_html_is_wrong_url(client, fake_rapidpro):
    with pytest.raises(WrongUrl):
        await client.send_broadcast(fake_rapidpro.url + "/not-rapidpro", DEFAULT_TOKEN, URN, "Hi")
    assert fake_rapidpro.broadcasts == []


async def test_html_where_json_was_expected_is_wrong_url(client, odd_server):
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><html><body>CHT</body></html>", content_type="text/html")

    url = await odd_server(handler)
    with pytest.raises(WrongUrl, match="HTML"):
        await client.send_broadcast(url, DEFAULT_TOKEN, URN, "Hi")
    with pytest.raises(WrongUrl, match="HTML"):
        await client.list_messages(url, DEFAULT_TOKEN, folder="sent")


async def test_redirect_is_wrong_url_and_not_followed(client, odd_server):
    hits: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        hits.append(f"{request.method} {request.path}")
        raise web.HTTPMovedPermanently("https://elsewhere.invalid/api/v2/broadcasts.json")

    with pytest.raises(WrongUrl, match="redirect"):
        await client.send_broadcast(await odd_server(handler), DEFAULT_TOKEN, URN, "Hi")
    assert hits == ["POST /api/v2/broadcasts.json"]


async def test_500_html_is_a_server_error_and_created_nothing(client, fake_rapidpro):
    fake_rapidpro.fail_next(1, path=BROADCASTS_PATH)
    with pytest.raises(RapidProServerError) as caught:
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
    assert caught.value.status == 500 and caught.value.transient
    assert not isinstance(caught.value, SendInDoubt)
    assert fake_rapidpro.broadcasts == []


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_errors_on_a_send_are_in_doubt(client, odd_server, status):
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, text="<html>Bad Gateway</html>", content_type="text/html")

    with pytest.raises(SendInDoubt):
        await client.send_broadcast(await odd_server(handler), DEFAULT_TOKEN, URN, "Hi")


async def test_bodyless_500_on_a_send_is_in_doubt_but_not_on_a_read(client, odd_server):
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=500)

    url = await odd_server(handler)
    with pytest.raises(SendInDoubt):
        await client.send_broadcast(url, DEFAULT_TOKEN, URN, "Hi")
    with pytest.raises(RapidProServerError):
        await client.list_broadcasts(url, DEFAULT_TOKEN, broadcast_id=1)


async def test_201_with_an_unreadable_body_is_in_doubt(client, odd_server):
    async def not_json(_request: web.Request) -> web.Response:
        return web.Response(status=201, text="{'id': 12")

    async def cut_short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=201, headers={"Content-Type": "application/json"})
        response.content_length = 500
        await response.prepare(request)
        await response.write(b'{"id": 123456, "uuid": ')
        assert request.transport is not None
        request.transport.abort()
        return response

    for handler in (not_json, cut_short):
        with pytest.raises(SendInDoubt):
            await client.send_broadcast(await odd_server(handler), DEFAULT_TOKEN, URN, "Hi")


# ---------------------------------------------------------------------- sending: no answer


async def test_lost_response_is_in_doubt_with_exactly_one_broadcast(make_client, fake_rapidpro):
    client = make_client(timeout=0.3)
    fake_rapidpro.lose_next_response(1)
    with pytest.raises(SendInDoubt):
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
    assert len(fake_rapidpro.broadcasts) == 1
    assert fake_rapidpro.call_count("POST", BROADCASTS_PATH) == 1  # never retried by itself


async def test_dropped_connection_after_processing_is_in_doubt(client, fake_rapidpro):
    fake_rapidpro.lose_next_response(1, how="drop")
    with pytest.raises(SendInDoubt):
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
    assert len(fake_rapidpro.broadcasts) == 1
    assert fake_rapidpro.call_count("POST", BROADCASTS_PATH) == 1


async def test_dropped_connection_before_processing_is_still_in_doubt(client, fake_rapidpro):
    # The client cannot tell this apart from the case above: in doubt, never resent.
    fake_rapidpro.drop_next(1, path=BROADCASTS_PATH)
    with pytest.raises(SendInDoubt):
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
    assert fake_rapidpro.call_count("POST", BROADCASTS_PATH) == 1


async def test_a_hang_is_in_doubt_within_the_configured_timeout(make_client, fake_rapidpro):
    client = make_client(timeout=0.3)
    fake_rapidpro.hang_next(1, path=BROADCASTS_PATH)
    started = time.monotonic()
    with pytest.raises(SendInDoubt):
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
    assert 0.25 <= time.monotonic() - started < 1.5


async def test_connection_refused_is_unreachable(client):
    with pytest.raises(RapidProUnreachable) as caught:
        await client.send_broadcast(f"http://127.0.0.1:{closed_port()}", DEFAULT_TOKEN, URN, "Hi")
    assert caught.value.transient and not isinstance(caught.value, SendInDoubt)


async def test_unresolvable_host_is_unreachable(client):
    with pytest.raises(RapidProUnreachable):
        await client.send_broadcast("http://rapidpro.invalid", DEFAULT_TOKEN, URN, "Hi")


async def test_malformed_url_is_wrong_url(client):
    with pytest.raises(WrongUrl):
        await client.send_broadcast("not a url", DEFAULT_TOKEN, URN, "Hi")


async def test_a_read_without_answer_is_retryable_not_in_doubt(make_client, fake_rapidpro):
    client = make_client(timeout=0.3)
    fake_rapidpro.hang_next(1, path=MESSAGES_PATH)
    with pytest.raises(RapidProNoAnswer) as caught:
        await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, folder="sent")
    assert caught.value.transient and not isinstance(caught.value, SendInDoubt)


# ---------------------------------------------------------------------- 429


async def test_429_with_retry_after_waits_and_retries(make_client, fake_rapidpro_factory):
    fake = await fake_rapidpro_factory(clock=FakeClock())
    budget = RateBudget(3600)
    client = make_client(budget)
    fake.throttle_next(1, retry_after=0.05, path=BROADCASTS_PATH)  # type: ignore[arg-type]
    started = time.monotonic()
    broadcast = await client.send_broadcast(fake.url, DEFAULT_TOKEN, URN, "Hi")
    assert time.monotonic() - started >= 0.05
    assert broadcast.id == fake.broadcasts[0].id
    assert len(fake.broadcasts) == 1 and fake.call_count("POST", BROADCASTS_PATH) == 2


async def test_429_without_retry_after_backs_off_on_its_own(make_client, fake_rapidpro_factory):
    fake = await fake_rapidpro_factory(clock=FakeClock())
    fake.retry_after_header = False
    budget = RateBudget(3600, throttle_backoff=Backoff(base=0.04, cap=0.2, rng=random.Random(3)))
    client = make_client(budget)
    fake.throttle_next(2)
    page = await client.list_messages(fake.url, DEFAULT_TOKEN, folder="sent")
    assert page.results == []
    assert fake.call_count("GET", MESSAGES_PATH) == 3


async def test_429_beyond_the_wait_limit_is_rate_limited(make_client, fake_rapidpro_factory):
    fake = await fake_rapidpro_factory(clock=FakeClock())
    budget = RateBudget(3600)
    client = make_client(budget)
    fake.throttle_next(1, retry_after=1234)
    with pytest.raises(RateLimited) as caught:
        await client.send_broadcast(fake.url, DEFAULT_TOKEN, URN, "Hi", max_wait=1.0)
    assert caught.value.retry_after == pytest.approx(1234)
    assert "1234 seconds" in caught.value.reason
    assert fake.broadcasts == []
    # The budget stays paused for everyone: the next call gives up without calling RapidPro.
    assert budget.paused_for() > 1000
    with pytest.raises(RateLimited):
        await client.list_broadcasts(fake.url, DEFAULT_TOKEN, broadcast_id=1, max_wait=0.05)
    assert len(fake.requests) == 1


# ---------------------------------------------------------------------- reads


async def test_list_messages_follows_next_cursors(client, fake_rapidpro):
    fake_rapidpro.page_size = 2
    for i in range(5):
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, f"tel:+25471234567{i}", f"m{i}")
    seen: list[dict] = []
    page = await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, folder="outbox")
    pages = 1
    seen += page.results
    while page.next:
        page = await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, cursor_url=page.next)
        pages += 1
        seen += page.results
    assert pages == 3
    assert sorted(m["text"] for m in seen) == [f"m{i}" for i in range(5)]
    gets = fake_rapidpro.requests_to(MESSAGES_PATH, "GET")
    assert gets[0].query == {"folder": ["outbox"]}
    assert all(r.token == DEFAULT_TOKEN for r in gets)


async def test_list_messages_filters(client, fake_rapidpro):
    first = await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "one")
    await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, "tel:+254700000001", "two")
    page = await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, broadcast=first.id)
    assert [m["text"] for m in page.results] == ["one"] and page.next is None
    by_uuid = await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, uuid=page.results[0]["uuid"])
    assert [m["broadcast"] for m in by_uuid.results] == [first.id]
    after = page.results[0]["created_on"]
    recent = await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, folder="outbox", after=after)
    assert {m["text"] for m in recent.results} >= {"one", "two"}
    assert fake_rapidpro.requests_to(MESSAGES_PATH)[-1].query == {"folder": ["outbox"], "after": [after]}


async def test_a_next_link_to_another_host_is_refused(client, fake_rapidpro):
    with pytest.raises(WrongUrl, match="another host"):
        await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN,
                                   cursor_url="https://evil.example/api/v2/messages.json?cursor=abc")
    assert fake_rapidpro.requests == []


async def test_a_next_link_is_followed_on_the_base_urls_origin(client, fake_rapidpro):
    # Behind a TLS-terminating proxy RapidPro may build links with another scheme or port.
    await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "one")
    odd_link = "https://127.0.0.1:1/api/v2/messages.json?folder=outbox"
    page = await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, cursor_url=odd_link)
    assert [m["text"] for m in page.results] == ["one"]


async def test_list_broadcasts_by_id(client, fake_rapidpro):
    sent = await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
    fake_rapidpro.fail_broadcast(sent.id)
    [got] = (await client.list_broadcasts(fake_rapidpro.url, DEFAULT_TOKEN, broadcast_id=sent.id)).results
    assert got["id"] == sent.id and got["status"] == "failed"
    assert (await client.list_broadcasts(fake_rapidpro.url, DEFAULT_TOKEN, broadcast_id=999)).results == []
    assert fake_rapidpro.requests_to(BROADCASTS_PATH, "GET")[0].query == {"id": [str(sent.id)]}


async def test_reads_share_the_error_types(client, fake_rapidpro):
    with pytest.raises(RapidProUnauthorized):
        await client.list_broadcasts(fake_rapidpro.url, "nope", broadcast_id=1)
    fake_rapidpro.fail_next(1)
    with pytest.raises(RapidProServerError):
        await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, folder="sent")
    with pytest.raises(RapidProError):  # two exclusive filters: RapidPro's 400 on a read
        await client.list_messages(fake_rapidpro.url, DEFAULT_TOKEN, folder="sent", broadcast=1)


# ---------------------------------------------------------------------- budget and logs


async def test_sends_get_the_budget_before_status_calls(make_client, fake_rapidpro):
    clock = FakeClock(0.0)
    # The queue order alone: no sends' reserve, no floor for the others (tests/unit/test_ratelimit.py).
    budget = RateBudget(3600, clock=clock, send_reserve_seconds=0, floor_share=0)
    while budget.tokens() >= 1:
        budget._bucket.try_take(clock())
    client = make_client(budget)
    url = fake_rapidpro.url

    polls = [asyncio.create_task(client.list_messages(url, DEFAULT_TOKEN, folder="sent")) for _ in range(2)]
    incoming = asyncio.create_task(client.list_messages(url, DEFAULT_TOKEN, folder="inbox",
                                                        priority=Priority.INCOMING))
    for _ in range(20):
        await asyncio.sleep(0)
    send = asyncio.create_task(client.send_broadcast(url, DEFAULT_TOKEN, URN, "Hi"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert budget.waiting == 4

    for n in range(1, 5):
        clock.advance(1.0)  # exactly one token each time
        budget.wake()
        await fake_rapidpro.wait_for(lambda fake, n=n: len(fake.requests) >= n, timeout=2)
    await asyncio.wait_for(asyncio.gather(send, incoming, *polls), 2)
    order = [(r.method, r.query.get("folder", [""])[0]) for r in fake_rapidpro.requests]
    assert order == [("POST", ""), ("GET", "sent"), ("GET", "sent"), ("GET", "inbox")]


async def test_calls_are_logged_at_debug_without_the_token(client, fake_rapidpro):
    with structlog.testing.capture_logs() as logs:
        await client.send_broadcast(fake_rapidpro.url, DEFAULT_TOKEN, URN, "Hi")
        with pytest.raises(RapidProUnauthorized):
            await client.send_broadcast(fake_rapidpro.url, "secret-wrong-token", URN, "Hi")
    calls = [e for e in logs if e["event"] == "rapidpro_call"]
    assert [(e["path"], e["status"], e["log_level"]) for e in calls] == [
        (BROADCASTS_PATH, 201, "debug"), (BROADCASTS_PATH, 403, "debug")]
    assert all(isinstance(e["duration_ms"], float) for e in calls)
    text = repr(logs)
    assert DEFAULT_TOKEN not in text and "secret-wrong-token" not in text

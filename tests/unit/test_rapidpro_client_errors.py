"""The RapidPro client's reading of answers and its 429 retries, without a server: aioresponses
answers each request as RapidPro (or a proxy in front of it) would. The fake RapidPro server
stays for what needs a real HTTP peer (connections cut mid-request, in-doubt sends)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aioresponses import aioresponses

from worker.rapidpro.budget import RateBudget
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.errors import (
    MessageRejected,
    RapidProServerError,
    RapidProUnauthorized,
    RateLimited,
    SendInDoubt,
    WorkspaceBlocked,
    WrongUrl,
)

BASE = "https://rapidpro.example.org"
BROADCASTS = f"{BASE}/api/v2/broadcasts.json"
URN = "tel:+254712345678"
CREATED = {"uuid": "0199bb98-3637-778d-9dfc-0ab85c950d7c", "id": 123456, "status": "pending",
           "urns": [URN], "text": {"eng": "Hello"}, "created_on": "2026-08-21T10:00:00.123456Z"}


@pytest.fixture
async def client() -> AsyncIterator[RapidProClient]:
    client = RapidProClient(RateBudget(1_000_000), timeout=2, max_wait=5)
    yield client
    await client.close()


async def send(client: RapidProClient) -> object:
    return await client.send_broadcast(BASE, "token", URN, "Hello")


def posts(mocked: aioresponses) -> int:
    return sum(len(calls) for (method, _url), calls in mocked.requests.items() if method == "POST")


@pytest.mark.parametrize(("status", "body", "headers", "error"), [
    (400, {"urns": {"0": ["Invalid URN: tel:0712. Ensure phone numbers contain country codes."]}}, {},
     MessageRejected),
    (400, {"text": {"eng": ["This field may not be blank."]}}, {}, MessageRejected),
    (400, {"non_field_errors": ["Sorry, your workspace is currently flagged."]}, {}, WorkspaceBlocked),
    (403, {"detail": "Invalid token"}, {}, RapidProUnauthorized),
    (404, {"detail": "Not found."}, {}, WrongUrl),
    (302, None, {"Location": "https://textit.com/api/v2/broadcasts.json"}, WrongUrl),
    (500, "<html><body>Server Error (500)</body></html>", {}, RapidProServerError),
    (502, "<html>Bad Gateway</html>", {}, SendInDoubt),
    (503, "", {}, SendInDoubt),
])
async def test_each_answer_to_a_send_is_its_error_and_the_post_is_made_once(
        client: RapidProClient, status: int, body: object, headers: dict[str, str],
        error: type[Exception]) -> None:
    with aioresponses() as mocked:
        kwargs = {"payload": body} if isinstance(body, dict) else {"body": body or ""}
        mocked.post(BROADCASTS, status=status, headers=headers, repeat=True, **kwargs)
        with pytest.raises(error):
            await send(client)
        assert posts(mocked) == 1  # never retried by itself: a second POST could be a second SMS


async def test_a_throttled_send_is_repeated_once_the_pause_is_over(client: RapidProClient) -> None:
    with aioresponses() as mocked:
        # DRF throttles before the view runs: the throttled POST created nothing.
        mocked.post(BROADCASTS, status=429, headers={"Retry-After": "0.2"},
                    payload={"detail": "Request was throttled. Expected available in 1 second."})
        mocked.post(BROADCASTS, status=201, payload=CREATED)
        broadcast = await send(client)
        assert posts(mocked) == 2
    assert getattr(broadcast, "id", None) == 123456


async def test_a_429_beyond_the_wait_limit_is_rate_limited_with_its_retry_after() -> None:
    client = RapidProClient(RateBudget(1_000_000), timeout=2, max_wait=1)
    try:
        with aioresponses() as mocked:
            mocked.post(BROADCASTS, status=429, headers={"Retry-After": "1200"},
                        payload={"detail": "Request was throttled. Expected available in 1200 seconds."})
            with pytest.raises(RateLimited) as raised:
                await send(client)
            assert posts(mocked) == 1
        assert raised.value.retry_after is not None and raised.value.retry_after >= 1200
    finally:
        await client.close()


async def test_the_token_goes_in_the_header_and_the_urn_and_text_in_the_body(client: RapidProClient) -> None:
    with aioresponses() as mocked:
        mocked.post(BROADCASTS, status=201, payload=CREATED)
        await send(client)
        (call,) = next(calls for (method, _url), calls in mocked.requests.items() if method == "POST")
    assert call.kwargs["headers"]["Authorization"] == "Token token"
    assert '"urns": ["tel:+254712345678"]' in call.kwargs["data"] and '"text": "Hello"' in call.kwargs["data"]

"""Tests of the fake RapidPro itself, through a real aiohttp client over TCP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from playground.fake_rapidpro import (
    BROADCASTS_PATH,
    DEFAULT_TOKEN,
    MESSAGES_PATH,
    FakeClock,
    FakeRapidPro,
    format_datetime,
)

pytest_plugins = ["tests.support.rapidpro_fixtures"]

AUTH = {"Authorization": f"Token {DEFAULT_TOKEN}"}
URN = "tel:+254712345678"
URN2 = "tel:+254712345679"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeRapidPro]:
    async with FakeRapidPro(clock=clock) as server:
        yield server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def send(
    http: aiohttp.ClientSession, fake: FakeRapidPro, urns: list[str], text: Any = "Hello"
) -> tuple[int, Any]:
    async with http.post(fake.url + BROADCASTS_PATH, json={"urns": urns, "text": text}) as r:
        return r.status, await r.json(content_type=None)


async def get(
    http: aiohttp.ClientSession, url: str, **params: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.get(url, params=params or None) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else None
        return r.status, body, r


# ---------------------------------------------------------------- sending


@pytest.mark.parametrize(("sent", "country", "stored"), [
    ("tel:0712345678", "KE", "tel:+254712345678"),
    ("tel:254712345678", "KE", "tel:+254712345678"),
    ("tel:254712345678", "", "tel:+254712345678"),
    ("tel:+254 712-345 678", "KE", "tel:+254712345678"),
    ("tel:0712 345 678", "KE", "tel:+254712345678"),
])
async def test_numbers_are_stored_as_rapidpro_normalises_them(
    sent: str, country: str, stored: str, fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    """temba/contacts/models.py URN.normalize in the workspace's country: accepted, stored E.164."""
    fake.country = country
    status, body = await send(http, fake, [sent])
    assert status == 201 and body["urns"] == [stored]
    _, page, _ = await get(http, fake.url + BROADCASTS_PATH)
    assert page["results"][0]["urns"] == [stored]
    assert fake.messages[-1].urn == stored


async def test_a_local_number_without_a_workspace_country_is_refused(
    fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    fake.country = ""
    status, body = await send(http, fake, ["tel:0712345678"])
    assert (status, body) == (400, {"urns": {"0": [
        "Invalid URN: tel:0712345678. Ensure phone numbers contain country codes."]}})
    _, workspace, _ = await get(http, fake.url + "/api/v2/workspace.json")
    assert workspace["country"] == ""
    assert {"credits", "primary_language", "anon"} <= set(workspace)


@pytest.mark.parametrize(("text", "answer"), [
    ("  padded text \n", (201, "padded text")),
    ("\u00a0Habari\r\n", (201, "Habari")),
    ("   ", (400, {"text": {"eng": ["This field may not be blank."]}})),
    ("", (400, {"text": {"eng": ["This field may not be blank."]}})),
    ("a\x00b", (400, {"text": {"eng": ["Null characters are not allowed."]}})),
    ({"base": "x"}, (400, {"text": {"base": ["Not an allowed ISO 639-3 language code."]}})),
    (None, (400, {"non_field_errors": ["Must provide either text or attachments."]})),
])
async def test_texts_are_trimmed_and_refused_as_rapidpro_does(
    text: Any, answer: tuple[int, Any], fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    """DRF CharField (trim_whitespace, allow_blank=False, no NUL) under TranslatedTextField."""
    status, body = await send(http, fake, [URN], text)
    if answer[0] == 201:
        assert (status, body["text"]) == (201, {"eng": answer[1]})
        _, page, _ = await get(http, fake.url + BROADCASTS_PATH)
        assert page["results"][0]["text"] == {"eng": answer[1]}
        assert fake.messages[-1].text == answer[1]
    else:
        assert (status, body) == answer
        assert fake.broadcasts == []


async def test_an_unparseable_date_filter_lists_nothing(fake: FakeRapidPro,
                                                        http: aiohttp.ClientSession) -> None:
    """temba/api/views.py filter_before_after: `filter(pk=-1)`, a 200 with no results."""
    await send(http, fake, [URN])
    for path in (BROADCASTS_PATH, MESSAGES_PATH):
        for name in ("after", "before"):
            status, body, _ = await get(http, fake.url + path, **{name: "yesterday"})
            assert (status, body["results"], body["next"]) == (200, [], None)
        status, body, _ = await get(http, fake.url + path, after="")
        assert status == 200 and len(body["results"]) == 1  # an empty value is no filter


async def test_broadcast_201_current_shape_and_recording(
    fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    status, body = await send(http, fake, [URN], "Hello")
    assert status == 201
    # RapidPro main, temba/api/v2/tests/test_broadcasts.py (the whole object)
    assert set(body) == {
        "uuid", "id", "status", "progress", "urns", "contacts", "groups", "text", "attachments",
        "quick_replies", "base_language", "created_on",
    }  # fmt: skip
    assert body["status"] == "pending"
    assert body["progress"] == {"total": -1, "started": 0}
    assert body["urns"] == [URN] and body["contacts"] == [] and body["groups"] == []
    assert body["text"] == {"eng": "Hello"} and body["base_language"] == "eng"
    assert TIMESTAMP.match(body["created_on"])

    _, second = await send(http, fake, [URN2], "Again")
    assert second["id"] == body["id"] + 1 and second["uuid"] != body["uuid"]

    recorded = fake.broadcasts[0]
    assert (recorded.id, recorded.uuid, recorded.urns) == (body["id"], body["uuid"], [URN])
    assert recorded.raw_text == "Hello" and recorded.token == DEFAULT_TOKEN
    assert recorded.time == fake.clock()


async def test_legacy_broadcast_answer(fake: FakeRapidPro, http: aiohttp.ClientSession) -> None:
    fake.legacy_broadcasts = True
    status, body = await send(http, fake, [URN])
    assert status == 201 and body["status"] == "queued"
    assert "uuid" not in body and isinstance(body["id"], int)
    _, listed, _ = await get(http, fake.url + BROADCASTS_PATH, id=body["id"])
    assert listed["results"][0]["status"] == "sent"  # completed, in the old vocabulary


async def test_broadcast_validation_400s(fake: FakeRapidPro, http: aiohttp.ClientSession) -> None:
    status, body = await send(http, fake, [URN, "tel:0712", "tel:+2547"])
    assert status == 400
    assert status == 400
    assert body == {
        "urns": {
            "1": ["Invalid URN: tel:0712. Ensure phone numbers contain country codes."],
            "2": ["Invalid URN: tel:+2547. Ensure phone numbers contain country codes."],
        }
    }
    status, body = await send(http, fake, [URN], "x" * 4097)
    assert (status, body) == (
        400,
        {"text": {"eng": ["Ensure this field has no more than 4096 characters."]}},
    )
    assert (await send(http, fake, [URN], "x" * 4096))[0] == 201

    fake.max_text_length = 640  # the pre-2025 limit
    status, body = await send(http, fake, [URN], "x" * 641)
    assert body == {"text": {"eng": ["Ensure this field has no more than 640 characters."]}}

    fake.urn_validator = lambda urn: urn.startswith("whatsapp:")
    status, body = await send(http, fake, [URN])
    assert status == 400 and "0" in body["urns"]
    assert len(fake.broadcasts) == 1  # only the valid one was recorded


@pytest.mark.parametrize("state", ["flagged", "suspended"])
async def test_workspace_state_400(fake: FakeRapidPro, http: aiohttp.ClientSession, state: str) -> None:
    fake.workspace_state = state
    status, body = await send(http, fake, [URN])
    assert status == 400
    assert body["non_field_errors"][0].startswith(f"Sorry, your workspace is currently {state}")
    assert fake.broadcasts == []


# ---------------------------------------------------------------- auth and routing


async def test_auth_403s_and_token_rotation(fake: FakeRapidPro) -> None:
    url = fake.url + MESSAGES_PATH
    async with aiohttp.ClientSession() as anon:
        async with anon.get(url) as r:
            assert r.status == 403
            assert await r.json() == {"detail": "Authentication credentials were not provided."}
        async with anon.get(url, headers={"Authorization": "Token nope"}) as r:
            assert (r.status, await r.json()) == (403, {"detail": "Invalid token"})
        async with anon.get(url, headers={"Authorization": f"tOkEn {DEFAULT_TOKEN}"}) as r:
            assert r.status == 200  # the scheme is case-insensitive

        fake.valid_tokens = {"new-key"}  # rotation
        async with anon.get(url, headers={"Authorization": f"Token {DEFAULT_TOKEN}"}) as r:
            assert r.status == 403
        async with anon.get(url, headers={"Authorization": "Token new-key"}) as r:
            assert r.status == 200
    assert [r.token for r in fake.requests] == [None, "nope", DEFAULT_TOKEN, DEFAULT_TOKEN, "new-key"]


async def test_paths_without_json_and_unknown_paths_are_html_404(
    fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    for path in ("/api/v2/broadcasts", "/api/v2/nothing.json", "/"):
        async with http.get(fake.url + path) as r:
            assert r.status == 404 and r.content_type == "text/html"
    async with http.delete(fake.url + BROADCASTS_PATH) as r:
        assert r.status == 405


# ---------------------------------------------------------------- messages


async def test_messages_appear_after_delay_and_follow_statuses(
    fake: FakeRapidPro, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    fake.message_delay = 2.0
    _, b = await send(http, fake, [URN, URN2], "Hi")
    url = fake.url + MESSAGES_PATH
    _, body, _ = await get(http, url, broadcast=b["id"])
    assert body == {"next": None, "previous": None, "results": []}  # normal right after sending
    _, bc, _ = await get(http, fake.url + BROADCASTS_PATH, id=b["id"])
    assert bc["results"][0]["status"] == "pending"

    clock.advance(2.0)
    _, body, _ = await get(http, url, broadcast=b["id"])
    results = body["results"]
    assert [m["urn"] for m in results] == [URN2, URN]  # newest (highest id) first
    first = results[1]
    assert first["broadcast"] == b["id"] and first["direction"] == "out"
    assert first["type"] == "text" and first["status"] == "queued" and first["text"] == "Hi"
    assert first["sent_on"] is None and TIMESTAMP.match(first["modified_on"])
    assert set(first["contact"]) == {"uuid", "name"}
    _, bc, _ = await get(http, fake.url + BROADCASTS_PATH, uuid=b["uuid"])
    assert bc["results"][0]["status"] == "completed"

    clock.advance(1.0)
    fake.set_status(b["id"], "wired")
    _, body, _ = await get(http, url, uuid=first["uuid"])
    (msg,) = body["results"]
    assert msg["status"] == "wired" and msg["sent_on"] is not None
    assert msg["modified_on"] > first["modified_on"]


async def test_status_scripts_advance_per_poll_and_tick(
    fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    fake.default_status_script = ["wired", "sent"]
    _, a = await send(http, fake, [URN])
    _, b = await send(http, fake, [URN2])
    fake.script_statuses(b["id"], ["errored", "failed"])
    url = fake.url + MESSAGES_PATH

    seen = []
    for _ in range(3):
        _, body, _ = await get(http, url, broadcast=a["id"])
        seen.append(body["results"][0]["status"])
    assert seen == ["wired", "sent", "sent"]  # the last status sticks

    assert fake.messages_of(b["id"])[0].status == "queued"  # not polled, so not advanced
    fake.tick(b["id"])
    assert fake.messages_of(b["id"])[0].status == "errored"
    fake.tick()
    assert fake.messages_of(b["id"])[0].status == "failed"


async def test_failed_and_interrupted_broadcasts_have_no_messages(
    fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    _, a = await send(http, fake, [URN])
    fake.fail_broadcast(a["id"], "interrupted")
    fake.fail_next_broadcasts(1)
    status, b = await send(http, fake, [URN2])
    assert status == 201 and b["status"] == "pending"  # the failure shows only later

    for bid, expected in ((a["id"], "interrupted"), (b["id"], "failed")):
        _, body, _ = await get(http, fake.url + BROADCASTS_PATH, id=bid)
        assert body["results"][0]["status"] == expected
        _, body, _ = await get(http, fake.url + MESSAGES_PATH, broadcast=bid)
        assert body["results"] == []


async def test_folders_incoming_and_filters(
    fake: FakeRapidPro, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    _, queued = await send(http, fake, [URN])
    _, errored = await send(http, fake, [URN])
    fake.set_status(errored["id"], "errored")
    _, wired = await send(http, fake, [URN])
    fake.set_status(wired["id"], "wired")
    _, read = await send(http, fake, [URN])
    fake.set_status(read["id"], "read")
    _, failed = await send(http, fake, [URN])
    fake.set_status(failed["id"], "failed")
    inbox = fake.add_incoming("ping", URN)
    flows = fake.add_incoming("STOP", URN2, folder="flows")
    url = fake.url + MESSAGES_PATH

    async def folder(name: str) -> list[Any]:
        status, body, _ = await get(http, url, folder=name)
        assert status == 200
        return [(m["broadcast"], m["status"]) for m in body["results"]]

    assert await folder("outbox") == [(errored["id"], "errored"), (queued["id"], "queued")]
    assert await folder("sent") == [(read["id"], "read"), (wired["id"], "wired")]
    assert await folder("failed") == [(failed["id"], "failed")]
    assert await folder("inbox") == [(None, "handled")]
    assert await folder("flows") == [(None, "handled")]
    _, body, _ = await get(http, url, folder="inbox")
    assert body["results"][0]["direction"] == "in" and body["results"][0]["uuid"] == inbox.uuid

    status, body, _ = await get(http, url, folder="inbox", broadcast=queued["id"])
    assert status == 400 and "only specify one" in body["detail"]

    # before/after are inclusive on created_on
    clock.advance(60)
    late = fake.add_incoming("later", URN, created_on=fake.now())
    _, body, _ = await get(http, url, after=format_datetime(late.created_on))
    assert [m["id"] for m in body["results"]] == [late.id]
    _, body, _ = await get(http, url, before=format_datetime(flows.created_on))
    assert late.id not in [m["id"] for m in body["results"]]
    assert flows.id in [m["id"] for m in body["results"]]
    cutoff = (late.created_on - timedelta(seconds=1)).isoformat()  # +00:00 form works too
    _, body, _ = await get(http, url, folder="inbox", after=cutoff)
    assert [m["text"] for m in body["results"]] == ["later"]


async def test_cursor_pagination_over_several_pages(
    fake: FakeRapidPro, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    fake.page_size = 2
    for i in range(5):
        fake.add_incoming(f"m{i}", URN)
        clock.advance(1)
    _, page, _ = await get(http, fake.url + MESSAGES_PATH, folder="inbox")
    texts = [m["text"] for m in page["results"]]
    assert page["previous"] is None
    pages = [page]
    while page["next"]:
        assert page["next"].startswith(fake.url + MESSAGES_PATH + "?")
        # A message arriving meanwhile must not shift the pages (cursor, not offset).
        fake.add_incoming("newer", URN)
        _, page, _ = await get(http, page["next"])
        pages.append(page)
        texts += [m["text"] for m in page["results"]]
    assert texts == ["m4", "m3", "m2", "m1", "m0"]
    assert len(pages) == 3 and pages[-1]["next"] is None
    _, back, _ = await get(http, pages[-1]["previous"])
    assert [m["text"] for m in back["results"]] == ["m2", "m1"]
    assert "folder=inbox" in pages[-1]["previous"]


async def test_broadcast_listing_by_created_on_newest_first_with_cursors(
    fake: FakeRapidPro, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    fake.page_size = 2
    created = []
    for i in range(5):
        _, body = await send(http, fake, [URN], f"b{i}")
        created.append(body["created_on"])
        clock.advance(10)
    # `after` / `before` are inclusive on created_on, as RapidPro's filter_before_after.
    _, page, _ = await get(http, fake.url + BROADCASTS_PATH, after=created[1], before=created[3])
    texts = [b["text"]["eng"] for b in page["results"]]
    while page["next"]:
        send_more = await send(http, fake, [URN], "newer")  # must not shift the pages
        assert send_more[0] == 201
        _, page, _ = await get(http, page["next"])
        texts += [b["text"]["eng"] for b in page["results"]]
    assert texts == ["b3", "b2", "b1"]
    assert all(b["urns"] == [URN] for b in page["results"])

    fake.anonymous = True  # RapidPro hides URNs of an anonymous workspace
    _, page, _ = await get(http, fake.url + BROADCASTS_PATH, after=created[4])
    assert page["results"][-1]["urns"] is None


# ---------------------------------------------------------------- rate limiting


async def test_rate_limit_sliding_window_with_retry_after(
    fake: FakeRapidPro, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    fake.rate_limit = 3
    url = fake.url + MESSAGES_PATH
    assert (await get(http, url))[0] == 200
    clock.advance(100)
    assert (await get(http, url))[0] == 200
    assert (await get(http, url))[0] == 200
    clock.advance(10)
    status, body, r = await get(http, url)
    assert status == 429
    assert r.headers["Retry-After"] == "3490"  # until the first call leaves the hour
    assert body == {"detail": "Request was throttled. Expected available in 3490 seconds."}

    # Another token of the same workspace shares the bucket.
    fake.valid_tokens.add("other")
    async with aiohttp.ClientSession(headers={"Authorization": "Token other"}) as other:
        assert (await get(other, url))[0] == 429

    clock.advance(3490)
    assert (await get(http, url))[0] == 200  # a slot freed; throttled calls did not count
    assert (await get(http, url))[0] == 429


@pytest.mark.parametrize(("profile", "broadcasts_scope", "rates"), [
    ("2020", "v2.broadcasts", {"v2": 2500, "v2.messages": 2500, "v2.broadcasts": 36000}),
    ("2023", "v2.broadcasts", {"v2": 2500, "v2.messages": 2500, "v2.broadcasts": 36000}),
    ("current", "v2", {"v2": 3600, "v2.messages": 3600}),
    ("future", "v2", {"v2": 3600, "v2.messages": 3600}),
])
async def test_each_version_throttles_per_scope(profile: str, broadcasts_scope: str, rates: dict[str, int],
                                                clock: FakeClock, http: aiohttp.ClientSession) -> None:
    """RapidPro's scopes (temba/api/v2/views.py throttle_scope; temba/settings_common.py rates):
    messages.json has its own in every version; broadcasts.json its own until Nov 2025."""
    async with FakeRapidPro(clock=clock, profile=profile) as fake:
        assert fake.rate_limits == rates
        assert fake.scope_of(BROADCASTS_PATH) == broadcasts_scope
        assert fake.scope_of(MESSAGES_PATH) == "v2.messages"
        fake.rate_limits = dict.fromkeys(fake.rate_limits, 1)
        assert (await send(http, fake, [URN]))[0] == 201
        assert (await get(http, fake.url + MESSAGES_PATH))[0] == 200  # its own scope
        workspace = fake.url + "/api/v2/workspace.json"
        status, _, _ = await get(http, workspace)
        if broadcasts_scope == "v2":
            assert status == 429  # the send used v2's one call
        else:
            assert status == 200
            assert (await send(http, fake, [URN]))[0] == 429
        assert (await get(http, fake.url + MESSAGES_PATH))[0] == 429


async def test_an_overshot_window_answers_429_without_retry_after(
    fake: FakeRapidPro, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    """DRF's wait() is None when the window holds more calls than the rate (a lowered rate,
    or two server workers letting calls in at once): no Retry-After, no time in the detail."""
    url = fake.url + MESSAGES_PATH
    for _ in range(5):
        assert (await get(http, url))[0] == 200
    fake.rate_limit = 3
    status, body, r = await get(http, url)
    assert (status, body) == (429, {"detail": "Request was throttled."})
    assert "Retry-After" not in r.headers
    fake.rate_limit = 6  # one call left: DRF divides the oldest call's time left by 6 - 5 + 1 = 2
    assert (await get(http, url))[0] == 200
    clock.advance(600)
    status, body, r = await get(http, url)
    assert status == 429 and r.headers["Retry-After"] == "3000"  # (3600 - 600) / 1


async def test_rate_limit_without_retry_after_and_forced_throttle(
    fake: FakeRapidPro, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    fake.rate_limit = 1
    fake.retry_after_header = False
    url = fake.url + MESSAGES_PATH
    assert (await get(http, url))[0] == 200
    status, body, r = await get(http, url)
    assert (status, body) == (429, {"detail": "Request was throttled."})
    assert "Retry-After" not in r.headers

    clock.advance(3600)
    fake.retry_after_header = True
    fake.throttle_next(2, retry_after=1234, path=BROADCASTS_PATH)
    status, body = await send(http, fake, [URN])
    assert status == 429 and body["detail"].endswith("in 1234 seconds.")
    assert (await send(http, fake, [URN]))[0] == 429
    assert (await get(http, url))[0] == 200  # other paths untouched
    fake.rate_limit = 10
    assert (await send(http, fake, [URN]))[0] == 201


# ---------------------------------------------------------------- faults


async def test_500_with_html_body(fake: FakeRapidPro, http: aiohttp.ClientSession) -> None:
    fake.fail_next(1, path=BROADCASTS_PATH)
    assert (await get(http, fake.url + MESSAGES_PATH))[0] == 200  # other path: unaffected
    async with http.post(fake.url + BROADCASTS_PATH, json={"urns": [URN], "text": "x"}) as r:
        assert r.status == 500 and r.content_type == "text/html"
        assert "<html" in await r.text()
    assert fake.broadcasts == []
    assert (await send(http, fake, [URN]))[0] == 201  # only the next one failed


async def test_hang_needs_a_client_timeout(fake: FakeRapidPro, http: aiohttp.ClientSession) -> None:
    fake.hang_next()
    with pytest.raises(asyncio.TimeoutError):
        await http.get(fake.url + MESSAGES_PATH, timeout=aiohttp.ClientTimeout(total=0.2))
    assert fake.requests[-1].status is None
    assert (await get(http, fake.url + MESSAGES_PATH))[0] == 200


@pytest.mark.parametrize("how", ["hang", "drop"])
async def test_lost_response_still_creates_the_broadcast(
    fake: FakeRapidPro, http: aiohttp.ClientSession, how: str
) -> None:
    fake.lose_next_response(how=how)
    with pytest.raises((asyncio.TimeoutError, aiohttp.ServerDisconnectedError)):
        await http.post(
            fake.url + BROADCASTS_PATH,
            json={"urns": [URN], "text": "in doubt"},
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    (recorded,) = fake.broadcasts
    assert recorded.urns == [URN] and recorded.raw_text == "in doubt"
    _, body, _ = await get(http, fake.url + MESSAGES_PATH, broadcast=recorded.id)
    assert len(body["results"]) == 1  # it really was sent


# ---------------------------------------------------------------- counters and waiting


async def test_counters_and_request_log(fake: FakeRapidPro, http: aiohttp.ClientSession) -> None:
    await send(http, fake, [URN])
    await get(http, fake.url + MESSAGES_PATH, folder="sent")
    await get(http, fake.url + MESSAGES_PATH, folder="failed")
    assert fake.call_count("POST", BROADCASTS_PATH) == 1
    assert fake.calls[("GET", MESSAGES_PATH)] == 2
    last = fake.requests[-1]
    assert (last.method, last.path, last.query, last.token, last.status) == (
        "GET", MESSAGES_PATH, {"folder": ["failed"]}, DEFAULT_TOKEN, 200,
    )  # fmt: skip
    assert b'"urns"' in fake.requests_to(BROADCASTS_PATH, "POST")[0].body


async def test_wait_for_wakes_on_requests_and_times_out(
    fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    waiter = asyncio.create_task(fake.wait_for(lambda f: f.broadcasts, timeout=2))
    await asyncio.sleep(0)
    assert not waiter.done()
    await send(http, fake, [URN])
    assert (await waiter)[0].urns == [URN]
    assert await fake.wait_for(lambda: len(fake.requests) == 1) is True
    with pytest.raises(TimeoutError):
        await fake.wait_for(lambda: len(fake.broadcasts) == 2, timeout=0.05)


async def test_plugin_fixture_with_real_clock(
    fake_rapidpro: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    fake_rapidpro.message_delay = 0.05
    _, b = await send(http, fake_rapidpro, [URN])
    assert fake_rapidpro.messages_of(b["id"])[0].visible_at > fake_rapidpro.clock()
    # The real clock schedules a wake-up when the delayed messages appear.
    await fake_rapidpro.wait_for(lambda f: all(m.visible_at <= f.clock() for m in f.messages), timeout=1)
    _, body, _ = await get(http, fake_rapidpro.url + MESSAGES_PATH, broadcast=b["id"])
    assert len(body["results"]) == 1


# ---------------------------------------------------------------- versions (profiles)


@pytest.mark.parametrize(("name", "fields", "text", "status"), [
    ("2020", {"id", "urns", "contacts", "groups", "text", "status", "created_on"}, {"base": "Hello"},
     "queued"),
    ("2023", {"id", "urns", "contacts", "groups", "text", "attachments", "base_language", "status",
              "created_on"}, {"eng": "Hello"}, "queued"),
    ("current", {"uuid", "id", "status", "progress", "urns", "contacts", "groups", "text", "attachments",
                 "quick_replies", "base_language", "created_on"}, {"eng": "Hello"}, "pending"),
    ("future", {"uuid", "status", "progress", "urns", "contacts", "groups", "text", "attachments",
                "quick_replies", "base_language", "created_on"}, {"eng": "Hello"}, "pending"),
])
async def test_each_profile_answers_the_broadcast_post_as_its_version(
        clock: FakeClock, http: aiohttp.ClientSession, name: str, fields: set[str], text: Any,
        status: str) -> None:
    async with FakeRapidPro(clock=clock, profile=name) as fake:
        code, body = await send(http, fake, [URN], "Hello")
        assert code == 201
        assert set(body) == fields and body["text"] == text and body["status"] == status
        assert fake.rate_limit == (2500 if name in ("2020", "2023") else 3600)


@pytest.mark.parametrize("name", ["2020", "2023", "current", "future"])
async def test_each_profile_lists_messages_with_its_fields_and_filters(
        clock: FakeClock, http: aiohttp.ClientSession, name: str) -> None:
    async with FakeRapidPro(clock=clock, profile=name) as fake:
        await send(http, fake, [URN], "one")
        await send(http, fake, [URN2], "two")
        first, second = fake.broadcasts
        fake.set_status(first.id, "read")
        url = fake.url + MESSAGES_PATH
        _, body, _ = await get(http, url, broadcast=first.id)
        listed = body["results"]
        if name == "future":  # the filter is no longer read: the unfiltered list, 200
            assert len(listed) == 2 and all("broadcast" not in m and "id" not in m for m in listed)
        else:
            assert [m["broadcast"] for m in listed] == [first.id]
        message = next(m for m in listed if m["text"] == "one")
        assert message["status"] == ("delivered" if name in ("2020", "2023") else "read")
        assert message["channel"] == {"uuid": FakeRapidPro.CHANNEL_UUID, "name": "Fake Channel"}
        assert message["type"] == ("inbox" if name == "2020" else "text")
        assert ("uuid" in message) is (name in ("current", "future"))
        assert ("flow" in message) is (name != "2020")

        # ?uuid= of a message: read from v10.3.79 on, ignored before.
        target = fake.messages_of(second.id)[0]
        _, body, _ = await get(http, url, uuid=target.uuid)
        assert len(body["results"]) == (1 if name in ("current", "future") else 2)
        # broadcasts.json: ?uuid= from v10.3.81, ?id= until the deprecations end.
        _, body, _ = await get(http, fake.url + BROADCASTS_PATH, uuid=second.uuid)
        assert len(body["results"]) == (1 if name in ("current", "future") else 2)
        _, body, _ = await get(http, fake.url + BROADCASTS_PATH, id=second.id)
        assert len(body["results"]) == (2 if name == "future" else 1)
        # Two exclusive filters: 400, unless this version no longer reads one of them.
        status, body, _ = await get(http, url, folder="sent", broadcast=first.id)
        assert status == (200 if name == "future" else 400)


async def test_current_validates_a_uuid_filter_and_sorts_the_sent_folder_by_sent_on(
        fake: FakeRapidPro, clock: FakeClock, http: aiohttp.ClientSession) -> None:
    status, body, _ = await get(http, fake.url + MESSAGES_PATH, uuid="not-a-uuid")
    assert (status, body) == (400, {"detail": "Param 'uuid': not-a-uuid is not a valid UUID."})
    _, early = await send(http, fake, [URN], "created first, sent last")
    clock.advance(5)
    _, late = await send(http, fake, [URN2], "created last, sent first")
    fake.set_status(late["id"], "sent")
    clock.advance(5)
    fake.set_status(early["id"], "sent")
    _, body, _ = await get(http, fake.url + MESSAGES_PATH, folder="sent")
    assert [m["text"] for m in body["results"]] == ["created first, sent last", "created last, sent first"]
    _, body, _ = await get(http, fake.url + MESSAGES_PATH)  # other listings: by created_on
    assert [m["text"] for m in body["results"]] == ["created last, sent first", "created first, sent last"]


async def test_channels_per_recipient_and_per_message(
        fake: FakeRapidPro, http: aiohttp.ClientSession) -> None:
    relayer = ("0d9a4b1c-2e3f-4a5b-8c7d-6e5f4a3b2c1d", "Android relayer")
    fake.channel_for = lambda urn: relayer if urn == URN2 else None
    await send(http, fake, [URN, URN2])
    other = fake.add_outgoing(URN, channel=relayer)
    _, body, _ = await get(http, fake.url + MESSAGES_PATH)
    channels = {(m["urn"], m["broadcast"]): m["channel"]["name"] for m in body["results"]}
    first = fake.broadcasts[0].id
    assert channels == {(URN, first): "Fake Channel", (URN2, first): "Android relayer",
                        (URN, other.id): "Android relayer"}


async def test_an_incoming_message_not_yet_handled_is_in_no_folder(
    fake: FakeRapidPro, http: aiohttp.ClientSession
) -> None:
    pending = fake.add_incoming("P 12 Mary", URN, handled=False)
    url = fake.url + MESSAGES_PATH
    for name in ("inbox", "flows", "outbox", "sent", "failed"):
        _, body, _ = await get(http, url, folder=name)
        assert body["results"] == []
    _, body, _ = await get(http, url)
    assert [(m["uuid"], m["status"]) for m in body["results"]] == [(pending.uuid, "pending")]


async def test_a_429_can_say_retry_after_zero(fake: FakeRapidPro, http: aiohttp.ClientSession) -> None:
    fake.rate_limit = 1
    fake.retry_after_zero = True
    url = fake.url + MESSAGES_PATH
    assert (await get(http, url))[0] == 200
    status, _, r = await get(http, url)
    assert (status, r.headers["Retry-After"]) == (429, "0")

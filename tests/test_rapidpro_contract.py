"""The fake RapidPro against a real one: the same requests to both, the answers compared field by
field — status codes, the shape of every body (keys, value types), the values RapidPro derives
from what it was sent (the trimmed text, the normalised URNs, error wordings), filters,
pagination and throttling. Then the worker's own calls against the real API: a send in the forms
CHT writes, found again by the in-doubt lookup, and followed by status tracking's lookups.

Needs a RapidPro to talk to, never CI's: set TEST_RAPIDPRO_URL and TEST_RAPIDPRO_TOKEN (a
workspace whose messages may really go out: use a test workspace with a test channel), and
TEST_RAPIDPRO_NUMBER (default +254712345678, in E.164) for the recipient. The throttling
comparison also needs TEST_RAPIDPRO_RATES, the workspace's own `api_rates` set for the run (e.g.
`v2=6/minute,v2.messages=6/minute`; RapidPro's Org.api_rates, set from its Django shell).

The differences that remain are deliberate and listed in README *Testing against a real
RapidPro* (`DELIBERATE` below): the fake's JSON content type says its charset, and values that
depend on the workspace's history (ids, uuids, times, contact names) are compared by type.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from playground.fake_workspace import workspace_of
from transitions.cht.timestamps import rapidpro_time
from transitions.outgoing.in_doubt import Kind, Listing, Window, decide
from transitions.outgoing.rapidpro_forms import rapidpro_text, rapidpro_urn, workspace_country
from worker.rapidpro.budget import Priority, ScopedBudget
from worker.rapidpro.client import RapidProClient

REAL_URL = os.environ.get("TEST_RAPIDPRO_URL", "").rstrip("/")
REAL_TOKEN = os.environ.get("TEST_RAPIDPRO_TOKEN", "")
NUMBER = os.environ.get("TEST_RAPIDPRO_NUMBER", "+254712345678")
RATES = os.environ.get("TEST_RAPIDPRO_RATES", "")

pytestmark = [
    pytest.mark.slow, pytest.mark.real_rapidpro,
    pytest.mark.skipif(
        not (REAL_URL and REAL_TOKEN),
        reason="needs a real RapidPro: set TEST_RAPIDPRO_URL and TEST_RAPIDPRO_TOKEN (a test workspace)"),
]

# What may differ, and why (README *Testing against a real RapidPro*).
DELIBERATE = {
    "content-type charset": "the fake's JSON says `; charset=utf-8` (compared without parameters)",
    "values by type": "ids, uuids, times and contact names depend on the workspace's history",
}
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _local(number: str) -> str:
    """+254712345678 → 0712345678 (a national form with a trunk 0, as CHT users type it)."""
    return "0" + number[4:]


def shape(value: Any) -> Any:
    """A body with every value replaced by its type (times and uuids by their format)."""
    if isinstance(value, dict):
        # A contact's name depends on who created the contact (a person, a flow, a broadcast).
        return {key: "name" if key == "name" and (inner is None or isinstance(inner, str)) else shape(inner)
                for key, inner in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, str):
        if _TIME.fullmatch(value):
            return "time"
        if _UUID.fullmatch(value):
            return "uuid"
        return "str"
    return type(value).__name__


class Side:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http, self.base, self.token = http, base, token

    async def call(self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None,
                   raw: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Token {self.token}"}
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = path if path.startswith("http") else self.base + path
        async with self.http.request(method, url, data=data, params=params, headers=headers,
                                     allow_redirects=False) as r:
            text = await r.text()
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = None
            return {"status": r.status, "json": parsed, "retry_after": r.headers.get("Retry-After"),
                    "content_type": r.content_type}


@pytest_asyncio.fixture
async def sides() -> AsyncIterator[tuple[Side, Side, FakeRapidPro]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        real = Side(http, REAL_URL, REAL_TOKEN)
        workspace = await real.call("GET", "/api/v2/workspace.json")
        assert workspace["status"] == 200, workspace
        fake = FakeRapidPro(profile=os.environ.get("TEST_RAPIDPRO_PROFILE", "current"))
        fake.country = workspace["json"].get("country") or ""
        workspace_of(fake)
        await fake.start()
        fake_side = Side(http, fake.url, DEFAULT_TOKEN)
        await fake_side.call("GET", "/api/v2/workspace.json")  # the same calls counted on both sides
        try:
            yield real, fake_side, fake
        finally:
            await fake.stop()


def compare(name: str, real: dict[str, Any], fake: dict[str, Any], *,
            values: tuple[str, ...] = ()) -> list[str]:
    """The differences between two answers: status, content type, body shape, and the values of
    the top-level (or first result's) keys named in `values`."""
    out: list[str] = []
    if real["status"] != fake["status"]:
        out.append(f"{name}: status real {real['status']} vs fake {fake['status']}")
    if real["content_type"] != fake["content_type"]:
        out.append(f"{name}: content type real {real['content_type']} vs fake {fake['content_type']}")
    if shape(real["json"]) != shape(fake["json"]):
        out.append(f"{name}: body shape real {shape(real['json'])} vs fake {shape(fake['json'])}")
    if (real["retry_after"] is None) != (fake["retry_after"] is None):
        out.append(f"{name}: Retry-After real {real['retry_after']} vs fake {fake['retry_after']}")
    for key in values:
        a, b = _pick(real["json"], key), _pick(fake["json"], key)
        if a != b:
            out.append(f"{name}: {key} real {a!r} vs fake {b!r}")
    return out


def _pick(body: Any, key: str) -> Any:
    if isinstance(body, dict) and isinstance(body.get("results"), list):
        body = body["results"][0] if body["results"] else {}
    return body.get(key) if isinstance(body, dict) else body


SENDS = [
    ("plain", {"urns": [f"tel:{NUMBER}"], "text": "Contract: plain"}),
    ("padded text", {"urns": [f"tel:{NUMBER}"], "text": "  Contract: padded \r\n\t"}),
    ("no-break spaces", {"urns": [f"tel:{NUMBER}"], "text": "\u00a0Contract: nbsp\u00a0"}),
    ("emoji", {"urns": [f"tel:{NUMBER}"], "text": " 👋🏽 Contract: emoji "}),
    ("local number", {"urns": [f"tel:{_local(NUMBER)}"], "text": "Contract: local"}),
    ("no plus", {"urns": [f"tel:{NUMBER[1:]}"], "text": "Contract: no plus"}),
    ("spaced and dashed", {"urns": [f"tel:{NUMBER[:4]} {NUMBER[4:7]}-{NUMBER[7:10]} {NUMBER[10:]}"],
                           "text": "Contract: spaced"}),
    ("whitespace only", {"urns": [f"tel:{NUMBER}"], "text": " \r\n\t\u00a0"}),
    ("empty text", {"urns": [f"tel:{NUMBER}"], "text": ""}),
    ("NUL", {"urns": [f"tel:{NUMBER}"], "text": "a\x00b"}),
    ("no text", {"urns": [f"tel:{NUMBER}"]}),
    ("bad language", {"urns": [f"tel:{NUMBER}"], "text": {"base": "x"}}),
    ("too long", {"urns": [f"tel:{NUMBER}"], "text": "x" * 4097}),
    ("short number", {"urns": ["tel:0712"], "text": "Contract"}),
    ("no scheme", {"urns": [NUMBER], "text": "Contract"}),
    ("no recipients", {"text": "Contract"}),
]


async def test_sends_answer_alike(sides: tuple[Side, Side, FakeRapidPro]) -> None:
    real, fake, server = sides
    problems: list[str] = []
    for name, body in SENDS:
        a, b = await real.call("POST", "/api/v2/broadcasts.json", body), await fake.call(
            "POST", "/api/v2/broadcasts.json", body)
        problems += compare(name, a, b, values=("text", "urns", "status", "non_field_errors"))
        if a["status"] == 201:  # what the worker predicts RapidPro stores
            text = body["text"]
            assert a["json"]["text"] == {"eng": rapidpro_text(text)}, name
            assert a["json"]["urns"] == [rapidpro_urn(body["urns"][0], server.country or None)], name
    for name, raw in (("malformed JSON", "{"), ("JSON list", "[]")):
        a, b = await real.call("POST", "/api/v2/broadcasts.json", raw=raw), await fake.call(
            "POST", "/api/v2/broadcasts.json", raw=raw)
        problems += compare(name, a, b, values=() if name == "malformed JSON" else ("non_field_errors",))
    assert not _undeliberate(problems), "\n".join(problems)


async def test_listings_filters_and_pagination_answer_alike(sides: tuple[Side, Side, FakeRapidPro]) -> None:
    real, fake, _ = sides
    body = {"urns": [f"tel:{NUMBER}"], "text": "Contract: listing"}
    created = {}
    for side in (real, fake):
        answer = await side.call("POST", "/api/v2/broadcasts.json", body)
        assert answer["status"] == 201, answer
        created[side] = answer["json"]
    problems: list[str] = []

    async def both(name: str, path: str, params: dict[str, str] | Any, values: tuple[str, ...] = ()) -> None:
        args = [params(created[s]) if callable(params) else params for s in (real, fake)]
        a = await real.call("GET", path, params=args[0])
        b = await fake.call("GET", path, params=args[1])
        problems.extend(compare(name, a, b, values=values))

    since = rapidpro_time(time.time() - 600)
    broadcasts = "/api/v2/broadcasts.json"
    await both("broadcast by uuid", broadcasts, lambda c: {"uuid": c["uuid"]}, ("text", "urns"))
    await both("broadcast by id", broadcasts, lambda c: {"id": str(c["id"])}, ("text", "urns"))
    await both("broadcasts in a window", "/api/v2/broadcasts.json",
               lambda c: {"after": c["created_on"], "before": c["created_on"]}, ("text", "urns"))
    await both("broadcasts, unparseable after", broadcasts, {"after": "yesterday"}, ("results",))
    await both("broadcasts, unparseable before", "/api/v2/broadcasts.json", {"before": "2020-13-45"},
               ("results",))
    await both("broadcasts, bad uuid", "/api/v2/broadcasts.json", {"uuid": "nope"}, ("detail",))
    await both("broadcasts, bad id", "/api/v2/broadcasts.json", {"id": "nope"}, ("detail",))
    await both("broadcasts, unknown filter ignored", "/api/v2/broadcasts.json",
               lambda c: {"frobnicate": "1", "uuid": c["uuid"]}, ("text",))
    await both("messages, folder and broadcast", "/api/v2/messages.json",
               lambda c: {"folder": "sent", "broadcast": str(c["id"])}, ("detail",))
    await both("messages, bad uuid", "/api/v2/messages.json", {"uuid": "nope"}, ("detail",))
    await both("messages, unparseable after", "/api/v2/messages.json", {"after": "yesterday"}, ("results",))
    await both("messages, bad cursor", "/api/v2/messages.json", {"cursor": "zzzz"}, ("detail",))
    for folder in ("sent", "outbox", "failed", "inbox", "flows", "bogus"):
        a = await real.call("GET", "/api/v2/messages.json", params={"folder": folder, "after": since})
        b = await fake.call("GET", "/api/v2/messages.json", params={"folder": folder, "after": since})
        if a["json"] and b["json"] and a["json"]["results"] and b["json"]["results"]:
            problems.extend(compare(f"messages folder={folder}", a, b))
        else:  # an empty folder on one side: the page's own shape
            assert a["status"] == b["status"] == 200, (folder, a, b)
            assert set(a["json"]) == set(b["json"]) == {"next", "previous", "results"}
    # Pagination: the `next` of a full page is a cursor URL on the same endpoint on both.
    a = await real.call("GET", "/api/v2/broadcasts.json")
    assert set(a["json"]) == {"next", "previous", "results"}
    if a["json"]["next"]:
        page = await real.call("GET", a["json"]["next"])
        assert page["status"] == 200 and "cursor=" in a["json"]["next"]
    a, b = await real.call("GET", "/api/v2/workspace.json"), await fake.call("GET", "/api/v2/workspace.json")
    problems += compare("workspace", a, b, values=("country", "anon"))
    assert not _undeliberate(problems), "\n".join(problems)


@pytest.mark.skipif(not RATES, reason="the throttling comparison needs the workspace's own api_rates: set "
                                      "them and TEST_RAPIDPRO_RATES, e.g. v2=6/minute,v2.messages=6/minute")
async def test_throttling_answers_alike_per_scope(sides: tuple[Side, Side, FakeRapidPro]) -> None:
    real, fake, server = sides
    rates = dict(part.split("=") for part in RATES.split(","))
    number, _, period = rates["v2"].partition("/")
    server.rate_limits = {scope: int(rates.get(scope, rates["v2"]).split("/")[0])
                          for scope in server.rate_limits}
    server.rate_window = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[period]
    statuses: dict[Side, list[int]] = {real: [], fake: []}
    throttled: dict[Side, dict[str, Any]] = {}
    for side in (real, fake):
        for _ in range(int(number) + 1):
            answer = await side.call("GET", "/api/v2/workspace.json")
            statuses[side].append(answer["status"])
            if answer["status"] == 429:
                throttled[side] = answer
                break
        # Another scope is not throttled by v2's.
        assert (await side.call("GET", "/api/v2/messages.json"))["status"] == 200
    assert statuses[real] == statuses[fake]
    problems = compare("429", throttled[real], throttled[fake])
    assert re.fullmatch(r"Request was throttled\.( Expected available in \d+ seconds?\.)?",
                        throttled[real]["json"]["detail"])
    assert not _undeliberate(problems), "\n".join(problems)


def _undeliberate(problems: list[str]) -> list[str]:
    """Content types are compared without their parameters (the charset), so nothing is left to
    excuse: every difference found is one."""
    return problems


# ---------------------------------------------------------------------- the worker's calls, for real


async def test_the_worker_finds_what_it_sent_in_the_forms_cht_writes() -> None:
    """A send whose answer is lost is looked up in RapidPro's listing with the text and number as
    CHT wrote them: RapidPro stored them trimmed and normalised, and the lookup must find it
    (transitions/outgoing/rapidpro_forms.py); then status tracking's lookups find its message."""
    async with RapidProClient(ScopedBudget(), timeout=30) as client:
        info = await client.get_workspace(REAL_URL, REAL_TOKEN)
        country = workspace_country(info)
        cases = [(f"tel:{NUMBER}", "  Contract: lost answer, padded\r\n"),
                 (f"tel:{NUMBER[1:]}", "Contract: lost answer, no plus")]
        if country:
            cases.append((f"tel:{_local(NUMBER)}", "\u00a0Contract: lost answer, local"))
        for urn, text in cases:
            claimed = time.time()
            broadcast = await client.send_broadcast(REAL_URL, REAL_TOKEN, urn, text)
            window = Window(claimed - 60, claimed + 60)
            page = await client.list_broadcasts(REAL_URL, REAL_TOKEN, after=rapidpro_time(window.start),
                                                before=rapidpro_time(window.end), priority=Priority.IN_DOUBT)
            listing = Listing(window, claimed + 61, page.next is None, page.results)
            decision = decide(urn=urn, text=text, claimed_at=claimed, listing=listing, recorded=(),
                              rapidpro_timeout=0.5, margin=59, country=country)
            assert decision.kind is Kind.FOUND, (urn, decision.reason)
            assert decision.broadcast is not None and decision.broadcast["uuid"] == broadcast.uuid
            messages = await client.list_messages(REAL_URL, REAL_TOKEN, broadcast=broadcast.id)
            for row in messages.results:  # mailroom may not have created it yet: absence is fine
                assert row["urn"] == rapidpro_urn(urn, country) and row["text"] == rapidpro_text(text)
        # The scopes the server counts calls in, from its broadcasts.
        assert client.budget.version_name != "unknown"

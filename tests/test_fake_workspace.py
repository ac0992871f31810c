"""The fake RapidPro's workspace set-up endpoints (playground/fake_workspace.py) answer as RapidPro
does (temba/api/v2 at main; the examples in RapidPro's tests): fields, cursor pages, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from playground.fake_workspace import FakeWorkspace
from transitions.rapidpro.relay_flow import relay_export


@pytest.fixture
async def api(fake_rapidpro: FakeRapidPro) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=fake_rapidpro.url,
                                     headers={"Authorization": f"Token {DEFAULT_TOKEN}"}) as session:
        yield session


async def call(api: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with api.request(method, path, **kwargs) as response:
        return response.status, await response.json()


async def test_globals_are_created_updated_and_listed_as_rapidpro_does(api, fake_workspace: FakeWorkspace):
    status, body = await call(api, "POST", "/api/v2/globals.json", json={"name": "New Global", "value": "23"})
    assert status == 201 and set(body) == {"key", "name", "value", "modified_on"}
    assert (body["key"], body["name"], body["value"]) == ("new_global", "New Global", "23")
    assert body["modified_on"].endswith("Z")
    status, body = await call(api, "POST", "/api/v2/globals.json", params={"key": "new_global"},
                              json={"value": "24", "name": "ignored"})
    assert (status, body["name"], body["value"]) == (200, "New Global", "24")
    for payload, params, expected_status, expected in [
        ({"value": "x"}, {}, 400, {"non_field_errors": ["Name is required when creating new global."]}),
        ({"name": "new global", "value": "x"}, {}, 400, {"name": ["This field must be unique."]}),
        ({"name": "Bad!", "value": "x"}, {}, 400, {"name": ["Name contains illegal characters."]}),
        ({"name": "2cool key", "value": "x"}, {}, 400, {"name": ["Name creates Key that is invalid"]}),
        ({"name": "A" * 37, "value": "x"}, {}, 400,
         {"name": ["Ensure this field has no more than 36 characters."]}),
        ({"name": "Fine"}, {}, 400, {"value": ["This field is required."]}),
        ({"value": " "}, {"key": "new_global"}, 400, {"value": ["This field may not be blank."]}),
        ({"value": "x"}, {"key": "nope"}, 404, {"detail": "No Global matches the given query."}),
    ]:
        assert await call(api, "POST", "/api/v2/globals.json", params=params, json=payload) == \
            (expected_status, expected), payload
    status, page = await call(api, "GET", "/api/v2/globals.json", params={"key": "new_global"})
    assert (status, [g["value"] for g in page["results"]], page["next"]) == (200, ["24"], None)


async def test_listings_are_cursor_pages_newest_first(api, fake_rapidpro, fake_workspace):
    fake_rapidpro.page_size = 2
    for i in range(3):
        fake_workspace.set_global(f"g{i}", str(i))
    status, first = await call(api, "GET", "/api/v2/globals.json")
    assert status == 200 and [g["key"] for g in first["results"]] == ["g2", "g1"]
    assert first["previous"] is None
    status, second = await call(api, "GET", first["next"])
    assert [g["key"] for g in second["results"]] == ["g0"] and second["next"] is None


async def test_flows_definitions_and_channels(api, fake_rapidpro, fake_workspace):
    fake_workspace.import_export(relay_export(fake_rapidpro.url))
    status, flows = await call(api, "GET", "/api/v2/flows.json",
                               params={"type": "message", "archived": "false"})
    (flow,) = flows["results"]
    assert set(flow) == {"uuid", "name", "type", "archived", "labels", "expires", "runs", "results",
                         "parent_refs", "created_on", "modified_on"}
    assert (flow["name"], flow["type"], flow["archived"]) == ("CHT Incoming SMS", "message", False)
    assert flow["results"][0]["key"] == "cht_response"
    status, export = await call(api, "GET", "/api/v2/definitions.json",
                                params=[("flow", flow["uuid"]), ("dependencies", "flows")])
    assert status == 200 and export["version"] == "13" and export["flows"][0]["spec_version"] == "14.4.1"
    assert export["triggers"] == [{"trigger_type": "C", "flow": {"uuid": flow["uuid"], "name": flow["name"]},
                                   "groups": [], "exclude_groups": [], "channel": None}]
    assert await call(api, "GET", "/api/v2/definitions.json", params={"dependencies": "some"}) == \
        (400, {"detail": "dependencies must be one of none, flows, all"})
    status, channels = await call(api, "GET", "/api/v2/channels.json")
    (channel,) = channels["results"]
    assert set(channel) == {"uuid", "name", "address", "type", "country", "device", "last_seen", "created_on"}
    assert set(channel["device"]) == {"name", "power_level", "power_status", "power_source", "network_type"}


async def test_a_bad_token_is_refused_and_the_calls_count_against_the_rate_limit(fake_rapidpro,
                                                                                 fake_workspace):
    async with aiohttp.ClientSession(base_url=fake_rapidpro.url,
                                     headers={"Authorization": "Token wrong"}) as api:
        assert await call(api, "GET", "/api/v2/globals.json") == (403, {"detail": "Invalid token"})
    fake_rapidpro.rate_limit = 0
    async with aiohttp.ClientSession(base_url=fake_rapidpro.url,
                                     headers={"Authorization": f"Token {DEFAULT_TOKEN}"}) as api:
        status, _ = await call(api, "GET", "/api/v2/channels.json")
        assert status == 429

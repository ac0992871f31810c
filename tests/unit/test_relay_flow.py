"""The export file `rapidpro setup` writes (transitions/rapidpro/relay_flow.py), checked against RapidPro's
own import rules (playground/rapidpro_import.py, from RapidPro's and goflow's source) on the three
server profiles, and against the structure of RapidPro's test exports
(tests/fixtures/rapidpro/webhook_flow_v13.json; its README cites the upstream files)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from playground.rapidpro_import import PROFILES, clone, import_errors, migrate_to_current
from transitions.incoming.record import IncomingMessage, parse_webhook_body
from transitions.rapidpro.excellent import evaluate_template
from transitions.rapidpro.relay_flow import (
    CREATE,
    KEEP,
    UPDATE,
    cht_url_for,
    export_text,
    global_changes,
    relay_export,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rapidpro" / "webhook_flow_v13.json"


@pytest.fixture
def upstream() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def _webhook_node(export: dict[str, Any]) -> dict[str, Any]:
    return next(n for n in export["flows"][0]["nodes"]
                if any(a["type"] == "call_webhook" for a in n.get("actions", [])))


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_export_imports_on_every_server_profile(profile, upstream):
    # The checks accept RapidPro's own export structure (else passing them would prove nothing)...
    assert import_errors(upstream, profile) == []
    # ...and the file written for the worker.
    assert import_errors(relay_export("https://textit.com"), profile) == []


@pytest.mark.parametrize(("profile", "change", "expected"), [
    ("current", lambda e: e.pop("version"), "no longer valid"),
    ("current", lambda e: e.update(version="14"), "Unsupported export version"),
    ("current", lambda e: e.pop("flows"), "flows"),
    ("2020", lambda e: e["flows"][0].update(spec_version="14.4.1"), "newer than this library"),
    ("2023", lambda e: e["flows"][0].update(spec_version="13.5.0"), "newer than this library"),
    ("current", lambda e: e["flows"][0].update(spec_version="14.5.0"), "too new"),
    ("current", lambda e: e["flows"][0].update(type="message"), "KeyError"),
    ("2020", lambda e: e["triggers"][0].pop("keyword"), "keyword"),
    ("current", lambda e: e["triggers"][0].pop("groups"), "groups"),
    ("current", lambda e: _webhook_node(e)["actions"][0].update(method="FETCH"), "HTTP method"),
    ("current", lambda e: _webhook_node(e)["actions"][0].update(url=""), "url is required"),
    ("current", lambda e: _webhook_node(e)["router"]["cases"][0].update(category_uuid="x"), "a case needs"),
    ("current", lambda e: _webhook_node(e)["exits"].pop(), "points at no exit"),
    ("current", lambda e: e["flows"][0]["nodes"].append(copy.deepcopy(_webhook_node(e))), "unique"),
])
def test_the_import_checks_refuse_what_rapidpro_refuses(upstream, profile, change, expected):
    for export in (upstream, relay_export("https://textit.com")):
        broken = copy.deepcopy(export)
        change(broken)
        errors = import_errors(broken, profile)
        assert any(expected in error for error in errors), errors


def test_the_export_has_the_structure_of_rapidpros_exports(upstream):
    mine = relay_export("https://rapidpro.example.org/")
    assert list(mine) == ["version", "site", "flows", "campaigns", "triggers", "fields", "groups"]
    assert set(mine) == set(upstream) and mine["version"] == upstream["version"] == "13"
    assert mine["site"] == "https://rapidpro.example.org"
    flow, theirs = mine["flows"][0], upstream["flows"][0]
    assert set(flow) == set(theirs)
    node, their_node = _webhook_node(mine), _webhook_node(upstream)
    assert set(node) == set(their_node)
    # The action: RapidPro's keys, plus the headers and body goflow's call_webhook.go defines.
    action = node["actions"][0]
    assert set(their_node["actions"][0]) <= set(action) <= set(their_node["actions"][0]) | {"headers", "body"}
    assert set(node["router"]) == set(their_node["router"])
    assert {frozenset(c) for c in node["router"]["categories"]} == \
        {frozenset(c) for c in their_node["router"]["categories"]}
    assert set(node["router"]["cases"][0]) == set(their_node["router"]["cases"][0])
    assert [c["name"] for c in node["router"]["categories"]] == ["Success", "Failure"]
    assert node["router"]["operand"] == "@results.cht_response.category"
    assert flow["_ui"]["nodes"][node["uuid"]]["type"] == theirs["_ui"]["nodes"][their_node["uuid"]]["type"]
    # The trigger: the keys every importer reads (2020 needs `keyword`), plus 2023+'s own.
    (trigger,) = mine["triggers"]
    assert set(upstream["triggers"][0]) <= set(trigger) <= set(upstream["triggers"][0]) | {"exclude_groups",
                                                                                             "channel"}
    assert trigger["trigger_type"] == "C" and trigger["flow"] == {"uuid": flow["uuid"], "name": flow["name"]}


def test_the_webhook_is_the_one_the_worker_expects():
    action = _webhook_node(relay_export("https://textit.com"))["actions"][0]
    assert (action["method"], action["url"]) == ("POST", "@globals.cht_url")
    assert action["headers"] == {"Content-Type": "application/json",
                                 "Authorization": "Token @globals.cht_api_key"}
    # What the worker's webhook reads, once RapidPro evaluated it for a message (id: its uuid).
    context = {"input": {"uuid": "0199bb98-3637-778d-9dfc-0ab85c950d7c", "text": 'P 12 "Mary"'},
               "urns": {"tel": "tel:+254712345678"}, "run": {"uuid": "another"}}
    assert parse_webhook_body(evaluate_template(action["body"], context).encode()) == IncomingMessage(
        id="0199bb98-3637-778d-9dfc-0ab85c950d7c", sender="+254712345678", content='P 12 "Mary"')


def test_the_file_is_the_same_on_every_run_and_survives_an_import():
    assert export_text(relay_export("https://textit.com")) == export_text(relay_export("https://textit.com"))
    # What a current server stores: new UUIDs, spec 14.4.1, the router on @webhook.status; goflow
    # still reads it.
    stored = migrate_to_current(clone(relay_export("https://textit.com")["flows"][0]))
    assert import_errors({"version": "13", "flows": [stored], "triggers": []}, "current") == []
    router = stored["nodes"][0]["router"]
    assert router["operand"] == "@webhook.status" and router["cases"][0]["arguments"] == ["200", "299"]
    assert stored["nodes"][0]["uuid"] != relay_export("x://y")["flows"][0]["nodes"][0]["uuid"]


def test_cht_url_and_the_changes_to_the_globals():
    assert cht_url_for("https://cht.example.org/rapidpro-worker/") == \
        "https://cht.example.org/rapidpro-worker/api/v2/sms/rapidpro/incoming-messages"
    assert cht_url_for("http://w:5990/api/v2/sms/rapidpro/incoming-messages") == \
        "http://w:5990/api/v2/sms/rapidpro/incoming-messages"
    existing = {"cht_url": {"key": "cht_url", "value": "https://old"}, "cht_api_key": {"value": "k"}}
    assert global_changes(existing, {"cht_url": "https://new", "cht_api_key": "k"}) == \
        {"cht_url": UPDATE, "cht_api_key": KEEP}
    assert global_changes({}, {"cht_url": "u"}) == {"cht_url": CREATE}

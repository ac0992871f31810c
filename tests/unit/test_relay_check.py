"""Judging a workspace's side of the relay (transitions/rapidpro/relay_check.py) from what RapidPro's API
lists: the flow as a current server stores an imported one (new UUIDs, spec 14.4.1, the
`@webhook.status` router), each fault a line naming its fix, the key never shown."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from playground.rapidpro_import import clone, migrate_to_current
from transitions.rapidpro.relay_check import (
    OK,
    PROBLEM,
    WARNING,
    Expectation,
    judge_api_key,
    judge_cht_url,
    judge_relay,
    relay_unused,
)
from transitions.rapidpro.relay_flow import WEBHOOK_BODY, relay_export

URL = "https://cht.example.org/rapidpro-worker/api/v2/sms/rapidpro/incoming-messages"
KEY = "k3y-that-must-never-show"
EXPECT = Expectation(cht_url=URL, key=KEY, reconcile=False)


def workspace() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """flows.json and definitions.json of a workspace where the file was imported."""
    flow = migrate_to_current(clone(relay_export("https://textit.com")["flows"][0]))
    flow["uuid"] = "2a1a7c3e-0a6e-4f0e-8a64-5d3f0d1c2b10"
    listed = [{"uuid": flow["uuid"], "name": flow["name"], "type": "message", "archived": False}]
    definitions = {"version": "13", "flows": [flow], "triggers": [
        {"trigger_type": "C", "flow": {"uuid": flow["uuid"], "name": flow["name"]}, "groups": [],
         "exclude_groups": [], "channel": None}]}
    return listed, definitions


def action_of(definitions: dict[str, Any]) -> dict[str, Any]:
    return definitions["flows"][0]["nodes"][0]["actions"][0]


def test_a_right_workspace_is_ok():
    listed, definitions = workspace()
    flow, trigger = judge_relay(listed, definitions, EXPECT)
    assert (flow.level, trigger.level) == (OK, OK), (flow, trigger)
    assert "'CHT Incoming SMS'" in flow.detail and "catch-all" in trigger.detail
    globals_by_key = {"cht_url": {"value": URL}, "cht_api_key": {"value": KEY}}
    assert judge_cht_url(globals_by_key, URL).level == OK
    key = judge_api_key(globals_by_key, KEY)
    assert key.level == OK and KEY not in key.detail


@pytest.mark.parametrize(("globals_by_key", "level", "fragment"), [
    ({}, PROBLEM, "no global cht_url"),
    ({"cht_url": {"value": ""}}, PROBLEM, "empty"),
    ({"cht_url": {"value": "https://old.example.org/api/v2/sms/rapidpro/incoming-messages"}}, PROBLEM,
     "the worker expects https://cht.example.org"),
])
def test_a_wrong_cht_url_is_a_problem_naming_the_fix(globals_by_key, level, fragment):
    judgement = judge_cht_url(globals_by_key, URL)
    assert (judgement.level, judgement.check) == (level, "rapidpro_cht_url")
    assert fragment in judgement.detail and "rapidpro setup" in judgement.detail


def test_cht_url_is_not_compared_without_a_public_url_and_never_shows_credentials():
    judgement = judge_cht_url({"cht_url": {"value": "https://u:secret@cht.example.org/x"}}, None)
    assert judgement.level == WARNING and "WEBHOOK_PUBLIC_URL" in judgement.detail
    assert "secret" not in judgement.detail


@pytest.mark.parametrize(("value", "fragment"), [
    (None, "no global cht_api_key"), ("", "empty"),
    ("k3y-that-must-never-shoW", "not the worker's incoming key")])
def test_a_wrong_key_is_a_problem_and_never_shown(value, fragment):
    globals_by_key = {} if value is None else {"cht_api_key": {"value": value}}
    judgement = judge_api_key(globals_by_key, KEY)
    assert judgement.level == PROBLEM and fragment in judgement.detail
    assert KEY not in judgement.detail and (not value or value not in judgement.detail)


def _fault(change) -> tuple[Any, Any]:
    listed, definitions = workspace()
    change(listed, definitions)
    return judge_relay(listed, definitions, EXPECT)


@pytest.mark.parametrize(("change", "level", "fragment"), [
    (lambda listed, d: action_of(d)["headers"].pop("Authorization"), PROBLEM,
     "no Authorization header: add `Authorization: Token @globals.cht_api_key`"),
    (lambda listed, d: action_of(d)["headers"].update(Authorization="Token wrong"), PROBLEM,
     "Authorization header is not"),
    (lambda listed, d: action_of(d).update(method="GET"), PROBLEM, "method is GET: set it to POST"),
    (lambda listed, d: action_of(d).update(url="https://cht.example.org/api/v2/sms/rapidpro/incoming-messages"),
     PROBLEM, "calls https://cht.example.org/api/v2/sms/rapidpro/incoming-messages: set its URL to "
     "@globals.cht_url"),
    (lambda listed, d: action_of(d).update(url="@globals.cht_url/api/v2/sms/rapidpro/incoming-messages"),
     PROBLEM, "set its URL to @globals.cht_url"),
    (lambda listed, d: action_of(d).update(body=WEBHOOK_BODY.replace("input.text", "input")), PROBLEM,
     'as "content": send input.text'),
    (lambda listed, d: action_of(d).update(body=WEBHOOK_BODY.replace('replace(urns.tel, "tel:+", "+")',
                                                                     "urns.tel")),
     PROBLEM, 'urns.tel as "from"'),
    (lambda listed, d: action_of(d).update(body='{"id": "@input.uuid", "from": "@urns.tel", '
                                                '"content": "@input.text"}'), PROBLEM, "JSON text"),
    (lambda listed, d: action_of(d).update(body=""), PROBLEM, "no body"),
    (lambda listed, d: action_of(d).update(body=WEBHOOK_BODY.replace("input.uuid", "run.uuid")), WARNING,
     "send input.uuid"),
    (lambda listed, d: action_of(d)["headers"].pop("Content-Type"), WARNING, "Content-Type"),
])
def test_each_webhook_fault_names_its_fix(change, level, fragment):
    flow, _ = _fault(change)
    assert (flow.level, flow.check) == (level, "rapidpro_flow"), flow
    assert fragment in flow.detail, flow.detail
    assert KEY not in flow.detail


def test_run_uuid_is_a_problem_once_reconciliation_is_on():
    listed, definitions = workspace()
    action_of(definitions)["body"] = WEBHOOK_BODY.replace("input.uuid", "run.uuid")
    flow, _ = judge_relay(listed, definitions, Expectation(URL, KEY, reconcile=True))
    assert flow.level == PROBLEM and "INCOMING_RECONCILE" in flow.detail


def test_a_literal_url_and_key_are_accepted_and_the_key_is_compared_not_shown():
    listed, definitions = workspace()
    action_of(definitions).update(url=URL, headers={"content-type": "application/json; charset=utf-8",
                                                    "authorization": f"token {KEY}"})
    flow, _ = judge_relay(listed, definitions, EXPECT)
    assert flow.level == OK and KEY not in flow.detail


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda listed, d: listed.clear() or d.update(flows=[], triggers=[]), "no active messaging flow"),
    (lambda listed, d: listed[0].update(archived=True), "no active messaging flow"),
    (lambda listed, d: action_of(d).update(url="https://other.example.org/x"), "none of the 1 active"),
])
def test_a_missing_flow_is_a_problem_and_the_trigger_is_not_judged(change, fragment):
    flow, trigger = _fault(change)
    assert flow.level == PROBLEM and fragment in flow.detail and "import the file" in flow.detail
    assert trigger is None


def test_the_best_flow_is_judged_when_several_call_the_worker():
    listed, definitions = workspace()
    broken = copy.deepcopy(definitions["flows"][0])
    broken.update(uuid="3b2b8d4f-1b7f-4a1f-9b75-6e4a1e2d3c21", name="Old CHT flow")
    broken["nodes"][0]["actions"][0]["headers"] = {}
    definitions["flows"].insert(0, broken)
    listed.insert(0, {"uuid": broken["uuid"], "name": broken["name"], "type": "message", "archived": False})
    flow, trigger = judge_relay(listed, definitions, EXPECT)
    assert flow.level == OK and "'CHT Incoming SMS'" in flow.detail and trigger.level == OK


@pytest.mark.parametrize(("triggers", "level", "fragment"), [
    ([], PROBLEM, "no catch-all trigger starts flow 'CHT Incoming SMS'"),
    ([{"trigger_type": "K", "keywords": ["cht"]}], PROBLEM, "no catch-all trigger"),
    ([{"trigger_type": "C", "groups": [{"uuid": "g", "name": "Staff"}], "exclude_groups": []}], WARNING,
     "limited to some groups"),
])
def test_a_missing_or_limited_trigger_is_found(triggers, level, fragment):
    listed, definitions = workspace()
    flow_ref = {"uuid": listed[0]["uuid"], "name": listed[0]["name"]}
    definitions["triggers"] = [{"flow": flow_ref, "groups": [], **t} for t in triggers]
    _, trigger = judge_relay(listed, definitions, EXPECT)
    assert (trigger.level, trigger.check) == (level, "rapidpro_trigger") and fragment in trigger.detail


def test_without_an_incoming_key_the_relay_findings_are_warnings():
    listed, definitions = workspace()
    definitions["triggers"] = []
    found = [judge_cht_url({}, URL), *[j for j in judge_relay(listed, definitions, EXPECT) if j]]
    softened = relay_unused(found)
    assert [j.level for j in found] == [PROBLEM, OK, PROBLEM]
    assert [j.level for j in softened] == [WARNING, OK, WARNING]
    assert all("no incoming key" in j.detail for j in softened if j.level == WARNING)

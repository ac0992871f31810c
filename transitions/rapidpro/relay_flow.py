"""The RapidPro side of the relay: the two globals, and the export file holding the flow that posts
every incoming SMS to the worker and the catch-all trigger that starts it. Pure: no I/O.

The file follows RapidPro's own export format (`Org.export_definitions`, temba/orgs/models.py;
`"version": "13"`, the export version of every RapidPro since 2020) and goflow's flow spec
13.1.0, which every server since 2020 reads and migrates forward (RapidPro 2020 runs goflow
v0.106.1 whose newest spec is 13.1.0; current servers migrate to 14.x, turning the router below
into `@webhook.status` — goflow flows/definition/migrations/14.x.go `Migrate14_1_0`). A 14.x
file would not import on 2020/2023 servers ("spec version … is newer than this library").

The node is the shape RapidPro's editor writes for a Call Webhook action (RapidPro
media/test_flows/dependencies_v13.json at v5.7.91: one `call_webhook` action, a switch on
`@results.<result>.category`, Success and Failure categories; `_ui` type `split_by_webhook`).
The trigger satisfies the three trigger importers (temba/triggers/models.py: 2020 needs
`keyword`, every version `groups` and `flow.uuid`; `exclude_groups` and `channel` are read by
2023+). Every UUID derives from a fixed namespace, so the file is the same on every run.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from transitions.incoming.record import V1_PATH, V2_PATH

FLOW_NAME = "CHT Incoming SMS"
RESULT_NAME = "CHT Response"  # the result key is its snake case: cht_response
EXPORT_VERSION = "13"
SPEC_VERSION = "13.1.0"
EXPIRE_AFTER_MINUTES = 10080  # valid for messaging flows on every version

# The globals, by key, with the name each is created under (RapidPro derives the key from the
# name: lowercase, runs of other characters become "_" — temba/globals/models.py make_key).
URL_GLOBAL = "cht_url"
KEY_GLOBAL = "cht_api_key"
GLOBAL_NAMES = {URL_GLOBAL: "CHT URL", KEY_GLOBAL: "CHT API Key"}

# The Call Webhook action, as CHT's RapidPro page describes it, with one change: `id` is the
# incoming message's uuid (`input.uuid`, the msg_received event's uuid = the message's: mailroom
# core/tasks/ctasks/msg_received.go, goflow flows/inputs/msg.go), not the run's. The worker's
# incoming reconciliation stores a message under its uuid (worker/incoming/reconcile.py); with
# `run.uuid` it could not tell that the webhook already stored it.
WEBHOOK_METHOD = "POST"
WEBHOOK_URL = f"@globals.{URL_GLOBAL}"
AUTHORIZATION = f"Token @globals.{KEY_GLOBAL}"
CONTENT_TYPE = "application/json"
WEBHOOK_BODY = ('@(json(object("id", input.uuid, "from", replace(urns.tel, "tel:+", "+"), '
                '"content", input.text)))')

_NAMESPACE = uuid.UUID("5b0e3c4a-8f1d-5c2e-9a7b-3d6f1e2c4b58")


def _uuid(part: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"cht-rapidpro-worker/relay-flow/{part}"))


def cht_url_for(public_url: str) -> str:
    """What `cht_url` holds: WEBHOOK_PUBLIC_URL plus the webhook's v2 path (unless already there)."""
    base = public_url.strip().rstrip("/")
    if base.endswith((V2_PATH, V1_PATH)):
        return base
    return base + V2_PATH


def site_of(rapidpro_url: str) -> str:
    """The export's `site`: the RapidPro server's origin."""
    parts = urlsplit(rapidpro_url.strip())
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def relay_flow() -> dict[str, Any]:
    node, action, success, failure = _uuid("node"), _uuid("action"), _uuid("success"), _uuid("failure")
    exit_success, exit_failure = _uuid("exit-success"), _uuid("exit-failure")
    return {
        "uuid": _uuid("flow"),
        "name": FLOW_NAME,
        "spec_version": SPEC_VERSION,
        "language": "eng",
        "type": "messaging",
        "revision": 1,
        "expire_after_minutes": EXPIRE_AFTER_MINUTES,
        "localization": {},
        "nodes": [{
            "uuid": node,
            "actions": [{
                "uuid": action,
                "type": "call_webhook",
                "method": WEBHOOK_METHOD,
                "url": WEBHOOK_URL,
                "headers": {"Content-Type": CONTENT_TYPE, "Authorization": AUTHORIZATION},
                "body": WEBHOOK_BODY,
                "result_name": RESULT_NAME,
            }],
            "router": {
                "type": "switch",
                "operand": "@results.cht_response.category",
                "cases": [{"uuid": _uuid("case-success"), "type": "has_only_text", "arguments": ["Success"],
                           "category_uuid": success}],
                "categories": [
                    {"uuid": success, "name": "Success", "exit_uuid": exit_success},
                    {"uuid": failure, "name": "Failure", "exit_uuid": exit_failure},
                ],
                "default_category_uuid": failure,
            },
            "exits": [{"uuid": exit_success}, {"uuid": exit_failure}],
        }],
        "_ui": {"nodes": {node: {"position": {"left": 0, "top": 0}, "type": "split_by_webhook"}},
                "stickies": {}},
    }


def catch_all_trigger(flow: dict[str, Any]) -> dict[str, Any]:
    return {"trigger_type": "C", "flow": {"uuid": flow["uuid"], "name": flow["name"]}, "groups": [],
            "exclude_groups": [], "keyword": None, "channel": None}


def relay_export(rapidpro_url: str) -> dict[str, Any]:
    """The whole import file: the relay flow and its catch-all trigger."""
    flow = relay_flow()
    return {"version": EXPORT_VERSION, "site": site_of(rapidpro_url), "flows": [flow], "campaigns": [],
            "triggers": [catch_all_trigger(flow)], "fields": [], "groups": []}


def export_text(export: dict[str, Any]) -> str:
    """The file's bytes as text: stable (same input, same text), so a second run changes nothing."""
    return json.dumps(export, indent=2, ensure_ascii=False) + "\n"


CREATE, UPDATE, KEEP = "create", "update", "keep"


def global_changes(existing: Mapping[str, Mapping[str, Any]], wanted: Mapping[str, str]) -> dict[str, str]:
    """What each wanted global needs ({key: create|update|keep}); values compared in constant time
    (one of them is the incoming key)."""
    changes = {}
    for key, value in wanted.items():
        item = existing.get(key)
        if item is None:
            changes[key] = CREATE
        else:
            current = str(item.get("value") or "")
            changes[key] = KEEP if hmac.compare_digest(current.encode(), value.encode()) else UPDATE
    return changes

"""What RapidPro checks when an export file is imported, and what an import does to a flow, written
from RapidPro's and goflow's source for the fake RapidPro (playground/fake_workspace.py) and the
tests of `rapidpro setup`'s file. A development tool, like the fake.

Three server profiles, as in the project's notes on RapidPro versions: `2020` (RapidPro v5.7.91,
goflow v0.106.1), `2023` (v8.2.0, goflow v0.187.0) and `current` (main, goflow v0.293.0).

- The import page (temba/orgs/views.py `clean_import_file` / `clean_file`): a JSON object whose
  `version` is at least 3; current servers also refuse a flow whose `spec_version` is newer than
  their own (`Flow.CURRENT_SPEC_VERSION`).
- `Org.import_app` (temba/orgs/models.py): `version` 3 to 13, a `flows` list; each flow's `uuid`,
  `name`, `spec_version` and a `type` of `Flow.GOFLOW_TYPES` (temba/flows/models.py
  `import_flows`); triggers need `trigger_type`, `flow.uuid` and `groups`, and on 2020 `keyword`
  (temba/triggers/models.py `import_triggers`).
- goflow's `ReadFlow` (flows/definition/flow.go, node.go, actions/base.go, call_webhook.go,
  routers/base.go, routers/switch.go): the spec no newer than the engine's, valid unique UUIDs,
  exits, categories pointing at exits, cases at categories, a default category, a valid HTTP
  method and a URL for a webhook, at most 10 headers.

An import updates the flow of the same name (and type) or creates one, always under new UUIDs
(mailroom's `flow/clone`), and migrates it to the server's spec: on current servers a webhook's
`@results.<name>.category` router becomes `@webhook.status` with one `has_number_between
["200", "299"]` case (goflow flows/definition/migrations/14.x.go `Migrate14_1_0`, `14_4_1`).
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from typing import Any

Json = dict[str, Any]

PROFILES: dict[str, Json] = {
    # engine: goflow's CurrentSpecVersion; server: RapidPro's Flow.CURRENT_SPEC_VERSION
    "2020": {"engine": (13, 1, 0), "server": (13, 1, 0), "types": {"messaging", "voice", "messaging_offline"},
             "trigger_keys": ("trigger_type", "flow", "groups", "keyword"), "form_checks_spec": False},
    "2023": {"engine": (13, 2, 0), "server": (13, 2, 0),
             "types": {"messaging", "voice", "messaging_offline", "messaging_background"},
             "trigger_keys": ("trigger_type", "flow", "groups"), "form_checks_spec": False},
    "current": {"engine": (14, 4, 2), "server": (14, 4, 1),
                "types": {"messaging", "voice", "messaging_offline", "messaging_background"},
                "trigger_keys": ("trigger_type", "flow", "groups"), "form_checks_spec": True},
}
FLOW_API_TYPES = {"messaging": "message", "voice": "voice", "messaging_offline": "survey",
                  "messaging_background": "background"}
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}  # goflow utils/validator.go http_method
ACTION_TYPES = {"add_contact_groups", "add_contact_urn", "add_input_labels", "call_classifier", "call_llm",
                "call_resthook", "call_webhook", "enter_flow", "open_ticket", "play_audio",
                "remove_contact_groups", "request_optin", "say_msg", "send_broadcast", "send_email",
                "send_msg",
                "set_contact_channel", "set_contact_field", "set_contact_language", "set_contact_name",
                "set_contact_status", "set_contact_timezone", "set_run_local", "set_run_result",
                "start_session", "transfer_airtime"}
TRIGGER_TYPES = {"K", "C", "M", "V", "N", "R", "S", "T", "F", "I", "O", "E", "W"}
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def version(text: Any) -> tuple[int, ...]:
    """"13" -> (13,), "13.1.0" -> (13, 1, 0); unreadable -> (0,) (as an import refuses it)."""
    try:
        return tuple(int(part) for part in str(text).split("."))
    except ValueError:
        return (0,)


def _valid_uuid(value: Any) -> bool:
    return isinstance(value, str) and bool(_UUID.match(value))


def import_errors(export: Any, profile: str) -> list[str]:
    """Why a server of `profile` would refuse the file (empty: it imports)."""
    rules = PROFILES[profile]
    if not isinstance(export, dict):
        return ["This file is not a valid flow definition file."]
    if "version" not in export or version(export["version"]) < (3,):
        return ["This file is no longer valid. Please export a new version and try again."]
    if not (3,) <= version(export["version"]) <= (13,):
        return [f"Unsupported export version {export['version']}"]
    flows = export.get("flows")
    if not isinstance(flows, list):
        return ["KeyError: 'flows'"]
    errors: list[str] = []
    uuids = set()
    for flow in flows:
        if not isinstance(flow, dict):
            errors.append("a flow is not an object")
            continue
        missing = [key for key in ("uuid", "name", "spec_version", "type") if key not in flow]
        if missing:
            errors.append(f"KeyError: {missing[0]!r}")
            continue
        if rules["form_checks_spec"] and version(flow["spec_version"]) > rules["server"]:
            errors.append("This file contains flows with a version that is too new.")
        if flow["type"] not in rules["types"]:
            errors.append(f"KeyError: {flow['type']!r}")
        uuids.add(flow["uuid"])
        errors.extend(f"flow {flow.get('name')!r}: {e}" for e in flow_errors(flow, rules["engine"]))
    for trigger in export.get("triggers") or []:
        errors.extend(_trigger_errors(trigger, rules["trigger_keys"], uuids))
    return errors


def flow_errors(flow: Json, engine: tuple[int, ...]) -> list[str]:
    """goflow's ReadFlow on a definition (no migration: the file's spec must be readable as is)."""
    spec = flow.get("spec_version")
    if version(spec) > engine:
        return [f"spec version {spec} is newer than this library ({'.'.join(map(str, engine))})"]
    errors = []
    if not _valid_uuid(flow.get("uuid")):
        errors.append("uuid is not a valid UUID")
    if not isinstance(flow.get("name"), str) or not 0 < len(flow["name"]) <= 64:
        errors.append("name is required and at most 64 characters")
    if not isinstance(flow.get("language"), str) or len(flow["language"]) != 3:
        errors.append("language is required (an ISO 639-3 code)")
    nodes = flow.get("nodes")
    if not isinstance(nodes, list):
        return [*errors, "nodes is required"]
    node_uuids = {n.get("uuid") for n in nodes if isinstance(n, dict)}
    seen: set[Any] = set()
    for node in nodes:
        errors.extend(_node_errors(node, node_uuids, seen))
    return errors


def _node_errors(node: Any, node_uuids: set[Any], seen: set[Any]) -> list[str]:
    if not isinstance(node, dict):
        return ["a node is not an object"]
    errors = []
    if not _valid_uuid(node.get("uuid")) or node["uuid"] in seen:
        errors.append(f"node UUID {node.get('uuid')} is not a valid unique UUID")
    seen.add(node.get("uuid"))
    exits = node.get("exits")
    if not isinstance(exits, list) or not exits:
        return [*errors, f"node {node.get('uuid')}: at least one exit is required"]
    exit_uuids = [e.get("uuid") for e in exits if isinstance(e, dict)]
    if len(set(exit_uuids)) != len(exits) or not all(map(_valid_uuid, exit_uuids)):
        errors.append("exit UUIDs must be valid and unique")
    for exit_ in exits:
        destination = exit_.get("destination_uuid") if isinstance(exit_, dict) else None
        if destination is not None and destination not in node_uuids:
            errors.append(f"destination {destination} is not a node of this flow")
    for action in node.get("actions") or []:
        errors.extend(_action_errors(action, seen))
    if node.get("router") is not None:
        errors.extend(_router_errors(node["router"], set(exit_uuids)))
    return errors


def _action_errors(action: Any, seen: set[Any]) -> list[str]:
    if not isinstance(action, dict) or action.get("type") not in ACTION_TYPES:
        return [f"unknown action type {action.get('type') if isinstance(action, dict) else action!r}"]
    errors = []
    if not _valid_uuid(action.get("uuid")) or action["uuid"] in seen:
        errors.append(f"action UUID {action.get('uuid')} is not a valid unique UUID")
    seen.add(action.get("uuid"))
    if action["type"] == "call_webhook":
        if action.get("method") not in HTTP_METHODS:
            errors.append("method is not a valid HTTP method")
        if not isinstance(action.get("url"), str) or not action["url"] or len(action["url"]) > 8192:
            errors.append("url is required")
        headers = action.get("headers") or {}
        if not isinstance(headers, dict) or len(headers) > 10 or not all(
                isinstance(k, str) and _HEADER_NAME.match(k) and len(k) <= 100 and isinstance(v, str)
                and len(v) <= 5000 for k, v in headers.items()):
            errors.append("headers must be at most 10 valid HTTP header names with text values")
        if not isinstance(action.get("body", ""), str) or len(action.get("body", "")) > 20000:
            errors.append("body must be text of at most 20000 characters")
    return errors


def _router_errors(router: Any, exit_uuids: set[Any]) -> list[str]:
    if not isinstance(router, dict) or router.get("type") not in ("switch", "random"):
        return ["router type must be switch or random"]
    categories = router.get("categories")
    if not isinstance(categories, list) or not categories:
        return ["a router needs at least one category"]
    errors = []
    category_uuids = set()
    for category in categories:
        if not (isinstance(category, dict) and _valid_uuid(category.get("uuid")) and category.get("name")):
            errors.append("a category needs a uuid and a name")
            continue
        category_uuids.add(category["uuid"])
        if category.get("exit_uuid") not in exit_uuids:
            errors.append(f"category {category['name']!r} points at no exit of its node")
    if router["type"] == "switch":
        if not router.get("operand"):
            errors.append("a switch router needs an operand")
        for case in router.get("cases") or []:
            if not isinstance(case, dict) or not _valid_uuid(case.get("uuid")) or not case.get("type") \
                    or case.get("category_uuid") not in category_uuids:
                errors.append("a case needs a uuid, a type and one of the router's categories")
        if router.get("default_category_uuid") not in category_uuids | {None}:
            errors.append("the default category is not one of the router's categories")
    return errors


def _trigger_errors(trigger: Any, keys: tuple[str, ...], flow_uuids: set[Any]) -> list[str]:
    if not isinstance(trigger, dict):
        return ["a trigger is not an object"]
    missing = [key for key in keys if key not in trigger]
    if missing:
        return [f"trigger: KeyError: {missing[0]!r}"]
    errors = []
    if trigger["trigger_type"] not in TRIGGER_TYPES:
        errors.append(f"trigger: {trigger['trigger_type']!r} is not a valid trigger type")
    flow = trigger["flow"]
    if not isinstance(flow, dict) or "uuid" not in flow:
        errors.append("trigger: Field 'flow' is required.")
    elif flow["uuid"] not in flow_uuids:
        errors.append(f"trigger: flow {flow['uuid']} is not in the file")
    if not isinstance(trigger["groups"], list):
        errors.append("trigger: groups must be a list")
    channel = trigger.get("channel")
    if channel is not None and not isinstance(channel, str | dict):
        errors.append("trigger: channel must be a uuid, an object or null")
    return errors


# ---------------------------------------------------------------------------- what an import does


def clone(definition: Json, new_uuid: Callable[[], str] = lambda: str(uuid.uuid4())) -> Json:
    """mailroom's flow/clone: every node, action, exit, category and case under a new UUID."""
    cloned = copy.deepcopy(definition)
    mapping: dict[str, str] = {}

    def remap(old: str) -> str:
        return mapping.setdefault(old, new_uuid())

    for node in cloned.get("nodes") or []:
        node["uuid"] = remap(node["uuid"])
        for action in node.get("actions") or []:
            action["uuid"] = remap(action["uuid"])
        for exit_ in node.get("exits") or []:
            exit_["uuid"] = remap(exit_["uuid"])
        router = node.get("router") or {}
        for category in router.get("categories") or []:
            category["uuid"], category["exit_uuid"] = remap(category["uuid"]), remap(category["exit_uuid"])
        for case in router.get("cases") or []:
            case["uuid"], case["category_uuid"] = remap(case["uuid"]), remap(case["category_uuid"])
        if router.get("default_category_uuid"):
            router["default_category_uuid"] = remap(router["default_category_uuid"])
    for node in cloned.get("nodes") or []:
        for exit_ in node.get("exits") or []:
            if exit_.get("destination_uuid"):
                exit_["destination_uuid"] = remap(exit_["destination_uuid"])
    ui = cloned.get("_ui") or {}
    if isinstance(ui.get("nodes"), dict):
        ui["nodes"] = {remap(key): value for key, value in ui["nodes"].items()}
    return cloned


def migrate_to_current(definition: Json) -> Json:
    """A 13.x flow as a current server stores it: spec 14.4.1, webhook routers on @webhook.status."""
    migrated = copy.deepcopy(definition)
    for node in migrated.get("nodes") or []:
        router = node.get("router") or {}
        webhook = any(a.get("type") in ("call_webhook", "call_resthook") for a in node.get("actions") or [])
        if webhook and str(router.get("operand", "")).startswith("@results.") and router.get("cases"):
            router["operand"] = "@webhook.status"
            first = router["cases"][0]
            router["cases"] = [{"uuid": first["uuid"], "type": "has_number_between",
                                "arguments": ["200", "299"], "category_uuid": first["category_uuid"]}]
    migrated["spec_version"] = "14.4.1"
    return migrated

"""The fake RapidPro's workspace set-up: globals, flows, their definitions and triggers, channels,
and an import of an export file. Registered on a FakeRapidPro through its `extra_routes` (so the
token, the rate limit, faults and the request log apply as to any endpoint); `workspace_of(fake)`
attaches it once and returns it.

Answers are shaped as current RapidPro's (temba/api/v2/views.py and serializers.py at main;
see the project's notes on RapidPro setup): cursor pages, newest first; `globals.json` GET by
`key`, POST to create (`{"name", "value"}`, key derived from the name) or, with `?key=`, to
update (`{"value"}`), with RapidPro's 400/404/409 bodies; `flows.json` (`type`, `archived`,
`uuid` filters); `definitions.json` (`flow` repeated, `dependencies` none|flows|all); and
`channels.json` (`uuid`, `address` filters). Not RapidPro's API: `POST /orgimport/create/`
stands for the workspace's import page (the file as the multipart field `file`, or as the whole
JSON body; a token is required as for the API), and answers what the import did.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from playground.fake_rapidpro import FakeRapidPro, format_datetime
from playground.rapidpro_import import FLOW_API_TYPES, clone, import_errors, migrate_to_current

Json = dict[str, Any]

GLOBALS_PATH = "/api/v2/globals.json"
FLOWS_PATH = "/api/v2/flows.json"
DEFINITIONS_PATH = "/api/v2/definitions.json"
CHANNELS_PATH = "/api/v2/channels.json"
IMPORT_PATH = "/orgimport/create/"
GLOBALS_LIMIT = 250  # ORG_LIMIT_DEFAULTS["globals"]
_GLOBAL_NAME = re.compile(r"^[A-Za-z0-9_\- ]+$")
_GLOBAL_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_GLOBAL_REF = re.compile(r"globals\.([a-z][a-z0-9_]*)")


def make_key(name: str) -> str:
    """temba/globals/models.py Global.make_key."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass
class FakeGlobal:
    key: str
    name: str
    value: str
    modified_on: datetime
    seq: int

    def to_json(self) -> Json:
        return {"key": self.key, "name": self.name, "value": self.value,
                "modified_on": format_datetime(self.modified_on)}


@dataclass
class FakeFlow:
    uuid: str
    name: str
    definition: Json  # as the server stores it (spec 14.4.1)
    created_on: datetime
    modified_on: datetime
    seq: int
    archived: bool = False

    @property
    def type(self) -> str:
        return FLOW_API_TYPES.get(self.definition.get("type", "messaging"), "message")

    def to_json(self) -> Json:
        results = [{"key": make_key(a["result_name"]), "name": a["result_name"],
                    "categories": [c["name"] for c in (node.get("router") or {}).get("categories") or []],
                    "node_uuids": [node["uuid"]]}
                   for node in self.definition.get("nodes") or [] for a in node.get("actions") or []
                   if a.get("result_name")]
        runs = dict.fromkeys(("active", "waiting", "completed", "interrupted", "expired", "failed"), 0)
        return {"uuid": self.uuid, "name": self.name, "type": self.type, "archived": self.archived,
                "labels": [], "expires": self.definition.get("expire_after_minutes", 10080), "runs": runs,
                "results": results, "parent_refs": [], "created_on": format_datetime(self.created_on),
                "modified_on": format_datetime(self.modified_on)}


@dataclass
class FakeTrigger:
    trigger_type: str
    flow_uuid: str
    groups: list[Json] = field(default_factory=list)
    exclude_groups: list[Json] = field(default_factory=list)
    archived: bool = False


@dataclass
class FakeChannel:
    uuid: str
    name: str
    address: str
    created_on: datetime
    seq: int
    type: str = "android"
    country: str | None = "KE"
    # An awake Android relayer syncs all the time: its last_seen is "now" whenever it is listed.
    # Put to sleep (`awake = False`), it keeps the last_seen it had (or the one a test sets).
    awake: bool = True
    last_seen: datetime | None = None
    power_level: int = 85
    power_status: str | None = "STATUS_DISCHARGING"
    power_source: str | None = "BAT"
    network_type: str | None = "WIFI"
    device_name: str = "Pixel 3a"


_ATTACHED: weakref.WeakKeyDictionary[FakeRapidPro, FakeWorkspace] = weakref.WeakKeyDictionary()


def workspace_of(fake: FakeRapidPro) -> FakeWorkspace:
    """The fake's workspace set-up, attached on first use (with one awake Android channel)."""
    if fake not in _ATTACHED:
        _ATTACHED[fake] = FakeWorkspace(fake)
    return _ATTACHED[fake]


class FakeWorkspace:
    def __init__(self, fake: FakeRapidPro) -> None:
        self.fake = fake
        self.globals: dict[str, FakeGlobal] = {}
        self.flows: list[FakeFlow] = []
        self.triggers: list[FakeTrigger] = []
        self.channels: list[FakeChannel] = []
        self.imports: list[Json] = []  # what each import did
        self._seq = 0
        fake.extra_routes.update({
            GLOBALS_PATH: {"GET": self._get_globals, "POST": self._post_globals},
            FLOWS_PATH: {"GET": self._get_flows},
            DEFINITIONS_PATH: {"GET": self._get_definitions},
            CHANNELS_PATH: {"GET": self._get_channels},
            IMPORT_PATH: {"POST": self._post_import},
        })
        self.add_channel("Fake Channel", "+254700000100", uuid=FakeRapidPro.CHANNEL_UUID)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # ------------------------------------------------------------------ scripting

    def set_global(self, key: str, value: str, name: str | None = None) -> FakeGlobal:
        item = FakeGlobal(key, name or key.replace("_", " ").title(), value, self.fake.now(), self._next())
        self.globals[key] = item
        return item

    def add_channel(self, name: str, address: str, *, uuid: str | None = None, **fields: Any) -> FakeChannel:
        channel = FakeChannel(uuid=uuid or str(_uuid()), name=name, address=address,
                              created_on=self.fake.now(), seq=self._next(), **fields)
        self.channels.append(channel)
        return channel

    def put_to_sleep(self, channel: FakeChannel, seconds_ago: float) -> None:
        """An Android relayer that stopped syncing `seconds_ago` (on the fake's clock)."""
        channel.awake = False
        channel.last_seen = self.fake.now() - timedelta(seconds=seconds_ago)

    def flow(self, name: str) -> FakeFlow:
        return next(f for f in self.flows if f.name.lower() == name.lower())

    def import_export(self, export: Json) -> Json:
        """As a current server's import (all or nothing): ValueError with the reasons it refused."""
        errors = import_errors(export, "current")
        if errors:
            raise ValueError("; ".join(errors))
        mapping: dict[str, str] = {}
        done: Json = {"flows": [], "triggers": [], "globals_created": []}
        for definition in export["flows"]:
            stored = migrate_to_current(clone(definition))
            now = self.fake.now()
            existing = next((f for f in self.flows if f.name.lower() == definition["name"].lower()
                             and f.definition.get("type") == definition["type"]), None)
            if existing is None:
                existing = FakeFlow(str(_uuid()), definition["name"], stored, now, now, self._next())
                self.flows.append(existing)
            existing.definition, existing.modified_on, existing.archived = stored, now, False
            existing.definition.update({"uuid": existing.uuid, "name": existing.name})
            mapping[definition["uuid"]] = existing.uuid
            done["flows"].append(existing.uuid)
            # Globals aren't exported: the flow's references create them, empty (Flow.update_dependencies).
            for key in sorted(set(_GLOBAL_REF.findall(json.dumps(stored)))):
                if key not in self.globals:
                    self.set_global(key, "", name=key.replace("_", " ").title())
                    done["globals_created"].append(key)
        for trigger in export.get("triggers") or []:
            flow_uuid = mapping.get(trigger["flow"]["uuid"], trigger["flow"]["uuid"])
            done["triggers"].append(self._import_trigger(trigger, flow_uuid))
        self.imports.append(done)
        return done

    def _import_trigger(self, trigger: Json, flow_uuid: str) -> str:
        groups, kind = list(trigger.get("groups") or []), trigger["trigger_type"]
        same_scope = [t for t in self.triggers
                      if not t.archived and t.trigger_type == kind and t.groups == groups]
        if any(t.flow_uuid == flow_uuid for t in same_scope):
            return "kept"
        for conflicting in same_scope:  # a new catch-all archives the one it replaces
            conflicting.archived = True
        self.triggers.append(FakeTrigger(kind, flow_uuid, groups, list(trigger.get("exclude_groups") or [])))
        return "created"

    # ------------------------------------------------------------------ HTTP

    def _page(self, request: web.Request, items: list[Any], when: str) -> web.StreamResponse:
        items.sort(key=lambda i: (getattr(i, when), i.seq), reverse=True)
        return self.fake._page(request, items, lambda i: (getattr(i, when), i.seq), lambda i: i.to_json())

    async def _get_globals(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("key")
        items = [g for g in self.globals.values() if key is None or g.key == key]
        return self._page(request, items, "modified_on")

    async def _post_globals(self, request: web.Request, body: bytes, workspace: str) -> web.StreamResponse:
        try:
            data = json.loads(body or b"{}")
        except ValueError as exc:
            return web.json_response({"detail": f"JSON parse error - {exc}"}, status=400)
        if not isinstance(data, dict):
            return web.json_response({"non_field_errors": ["Request body should be a single JSON object"]},
                                     status=400)
        errors: Json = {}
        value = data.get("value")
        if value is None:
            errors["value"] = ["This field is required."]
        elif not isinstance(value, str) or not value.strip():
            errors["value"] = ["This field may not be blank."]
        key = request.query.get("key")
        if key is not None:  # an update: only the value changes
            item = self.globals.get(key)
            if item is None:
                return web.json_response({"detail": "No Global matches the given query."}, status=404)
            if errors:
                return web.json_response(errors, status=400)
            item.value, item.modified_on, item.seq = str(value), self.fake.now(), self._next()
            return web.json_response(item.to_json(), status=200)
        name = data.get("name")
        if isinstance(name, str) and name:
            if len(name) > 36:
                errors["name"] = ["Ensure this field has no more than 36 characters."]
            elif not _GLOBAL_NAME.match(name):
                errors["name"] = ["Name contains illegal characters."]
            elif not _GLOBAL_KEY.match(make_key(name)):
                errors["name"] = ["Name creates Key that is invalid"]
            elif any(g.name.lower() == name.lower() for g in self.globals.values()):
                errors["name"] = ["This field must be unique."]
        if errors:
            return web.json_response(errors, status=400)
        if not name:
            return web.json_response({"non_field_errors": ["Name is required when creating new global."]},
                                     status=400)
        existing = self.globals.get(make_key(name))
        if existing is None and len(self.globals) >= GLOBALS_LIMIT:
            return web.json_response({"detail": "Cannot create object because workspace has reached limit."},
                                     status=409)
        if existing is not None:  # Global.get_or_create: the key's global, its value overwritten
            existing.value, existing.modified_on, existing.seq = str(value), self.fake.now(), self._next()
            return web.json_response(existing.to_json(), status=201)
        return web.json_response(self.set_global(make_key(name), str(value), name=name).to_json(), status=201)

    async def _get_flows(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        items = list(self.flows)
        if "uuid" in q:
            items = [f for f in items if f.uuid == q["uuid"]]
        if "type" in q:
            items = [f for f in items if f.type == q["type"]]
        if "archived" in q:
            archived = q["archived"].lower() in ("1", "true")
            items = [f for f in items if f.archived == archived]
        return self._page(request, items, "created_on")

    async def _get_definitions(self, request: web.Request) -> web.StreamResponse:
        dependencies = request.query.get("dependencies", "all")
        if dependencies not in ("none", "flows", "all"):
            return web.json_response({"detail": "dependencies must be one of none, flows, all"}, status=400)
        wanted = request.query.getall("flow", [])
        flows = [f for f in self.flows if f.uuid in wanted]
        names = {f.uuid: f.name for f in flows}
        # Current servers export a catch-all's channel as an object or null (temba/triggers/types.py).
        triggers = [] if dependencies == "none" else [
            {"trigger_type": t.trigger_type, "flow": {"uuid": t.flow_uuid, "name": names[t.flow_uuid]},
             "groups": t.groups, "exclude_groups": t.exclude_groups, "channel": None}
            for t in self.triggers if not t.archived and t.flow_uuid in names]
        definitions = [f.definition for f in flows]
        return web.json_response({"version": "13", "site": self.fake.url, "flows": definitions,
                                  "campaigns": [], "triggers": triggers, "fields": [], "groups": []})

    async def _get_channels(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        items = [c for c in self.channels if q.get("uuid", c.uuid) == c.uuid
                 and q.get("address", c.address) == c.address]
        return self.fake._page(request, sorted(items, key=lambda c: (c.created_on, c.seq), reverse=True),
                               lambda c: (c.created_on, c.seq), self._channel_json)

    def _channel_json(self, channel: FakeChannel) -> Json:
        android = channel.type == "android"
        last_seen = self.fake.now() if android and channel.awake else channel.last_seen
        if android and channel.awake:
            channel.last_seen = last_seen
        device = {"name": channel.device_name, "power_level": channel.power_level,
                  "power_status": channel.power_status, "power_source": channel.power_source,
                  "network_type": channel.network_type} if android else None
        return {"uuid": channel.uuid, "name": channel.name, "address": channel.address, "type": channel.type,
                "country": channel.country, "device": device,
                "last_seen": format_datetime(last_seen) if last_seen else None,
                "created_on": format_datetime(channel.created_on)}

    async def _post_import(self, request: web.Request, body: bytes, workspace: str) -> web.StreamResponse:
        try:
            export = json.loads(_file_field(request.headers.get("Content-Type", ""), body))
            done = self.import_export(export)
        except ValueError as exc:  # RapidPro: the import fails as a whole (OrgImport status "F")
            return web.json_response({"status": "failed", "error": str(exc)}, status=400)
        return web.json_response({"status": "complete", **done}, status=200)


def _file_field(content_type: str, body: bytes) -> bytes:
    """The `file` field of a multipart form, or the body itself."""
    if not content_type.lower().startswith("multipart/"):
        return body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    raise ValueError("no file field in the form")


def _uuid() -> uuid.UUID:
    return uuid.uuid4()


"""Judging a RapidPro workspace's side of the relay from what its API lists: the two globals
(`globals.json`), the flow whose Call Webhook action posts to the worker and the catch-all
trigger that starts it (`flows.json` + `definitions.json`). Pure: the caller fetches.

Each judgement is one line of `check` (`ok|warning|problem <check>: <detail>`), and every
mismatch names its fix. The key is compared in constant time and never shown; neither is a
header value. Definitions are compared parsed, not as raw text: RapidPro re-serialises them and
migrates them to its own spec (a 14.x router, new UUIDs), which changes nothing judged here.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from transitions.incoming.record import V1_PATH, V2_PATH
from transitions.rapidpro.excellent import Call, Path, TemplateError, Text, parse_template
from transitions.rapidpro.relay_flow import (
    AUTHORIZATION,
    CONTENT_TYPE,
    FLOW_NAME,
    KEY_GLOBAL,
    URL_GLOBAL,
    WEBHOOK_BODY,
    WEBHOOK_URL,
)

OK, WARNING, PROBLEM = "ok", "warning", "problem"
_RANK = {OK: 0, WARNING: 1, PROBLEM: 2}
SETUP = "run `cht-rapidpro-worker rapidpro setup`"
IMPORT = "import the file `cht-rapidpro-worker rapidpro setup` writes"
_URL_PATH = Path(("globals", URL_GLOBAL))
_KEY_PATH = Path(("globals", KEY_GLOBAL))
_TEL = Path(("urns", "tel"))
GOOD_FROM = (Call("replace", (_TEL, Text("tel:+"), Text("+"))),
             Call("replace", (_TEL, Text("tel:"), Text(""))))


@dataclass(frozen=True)
class Judgement:
    level: str
    check: str
    detail: str


@dataclass(frozen=True)
class Expectation:
    cht_url: str | None  # WEBHOOK_PUBLIC_URL + the path; None when not configured
    key: str | None  # the worker's incoming key; None when not configured
    reconcile: bool  # INCOMING_RECONCILE: then only input.uuid as id keeps SMS from being stored twice


def worst(levels: Sequence[str]) -> str:
    return max(levels, key=_RANK.__getitem__, default=OK)


def redact_url(url: str) -> str:
    """A URL to show: credentials in it are dropped."""
    parts = urlsplit(url.strip())
    if not parts.netloc or "@" not in parts.netloc:
        return url.strip()
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


# ---------------------------------------------------------------------------- globals


def _global_value(globals_by_key: Mapping[str, Mapping[str, Any]], key: str, check: str,
                  effect: str) -> str | Judgement:
    """The global's value, or the problem of its absence (`effect`: what goes wrong without it)."""
    item = globals_by_key.get(key)
    if item is None:
        return Judgement(PROBLEM, check, f"the workspace has no global {key}: {effect}; {SETUP}")
    value = str(item.get("value") or "")
    if not value.strip():
        return Judgement(PROBLEM, check, f"the global {key} is empty: {effect}; {SETUP}")
    return value


def judge_cht_url(globals_by_key: Mapping[str, Mapping[str, Any]], expected: str | None) -> Judgement:
    name = "rapidpro_cht_url"
    value = _global_value(globals_by_key, URL_GLOBAL, name, "the flow has no URL to post SMS to")
    if isinstance(value, Judgement):
        return value
    value = value.strip()
    if expected is None:
        return Judgement(WARNING, name, f"{URL_GLOBAL} is {redact_url(value)}; not compared: "
                         "WEBHOOK_PUBLIC_URL is not set")
    if value != expected:
        return Judgement(PROBLEM, name, f"{URL_GLOBAL} is {redact_url(value)}, the worker expects {expected} "
                         f"(WEBHOOK_PUBLIC_URL and the webhook path): {SETUP}")
    return Judgement(OK, name, f"{URL_GLOBAL} is {expected}")


def judge_api_key(globals_by_key: Mapping[str, Mapping[str, Any]], key: str | None) -> Judgement:
    name = "rapidpro_cht_api_key"
    value = _global_value(globals_by_key, KEY_GLOBAL, name, "the worker would refuse every SMS (403)")
    if isinstance(value, Judgement):
        return value
    if key is None:
        return Judgement(WARNING, name, f"{KEY_GLOBAL} is set; not compared: no incoming key is configured "
                         "here")
    if not same_secret(value, key):
        return Judgement(PROBLEM, name, f"{KEY_GLOBAL} is not the worker's incoming key: the webhook answers "
                         f"403 to every SMS; {SETUP}")
    return Judgement(OK, name, f"{KEY_GLOBAL} is the worker's incoming key (compared, not shown)")


# ---------------------------------------------------------------------------- the webhook


def webhook_actions(definition: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for node in definition.get("nodes") or []:
        for action in (node.get("actions") or []) if isinstance(node, Mapping) else []:
            if isinstance(action, Mapping) and action.get("type") == "call_webhook":
                yield action


def _parts(template: Any) -> tuple[Any, ...] | None:
    try:
        return parse_template(str(template or ""))
    except TemplateError:
        return None


def calls_the_worker(action: Mapping[str, Any], cht_url: str | None) -> bool:
    """Whether the action posts (or means to post) to the worker: its URL uses the global, is the
    expected URL, or ends in the webhook's path."""
    url = str(action.get("url") or "").strip()
    parts = _parts(url) or ()
    return (_URL_PATH in parts or (cht_url is not None and url == cht_url)
            or urlsplit(url).path.rstrip("/").endswith((V2_PATH, V1_PATH)))


def judge_action(action: Mapping[str, Any], expect: Expectation) -> list[tuple[str, str]]:
    """(level, what is wrong and its fix) for each mismatch; empty when the action is right."""
    found: list[tuple[str, str]] = []
    method = str(action.get("method") or "").upper()
    if method != "POST":
        found.append((PROBLEM, f"the webhook's method is {method or 'not set'}: set it to POST"))
    url = str(action.get("url") or "").strip()
    if _parts(url) != (_URL_PATH,) and url != expect.cht_url:
        found.append((PROBLEM, f"the webhook calls {redact_url(url)}: set its URL to {WEBHOOK_URL}"))
    headers = {str(k).lower(): str(v) for k, v in (action.get("headers") or {}).items()}
    authorization = headers.get("authorization")
    if authorization is None:
        found.append((PROBLEM, "the webhook has no Authorization header: add "
                      f"`Authorization: {AUTHORIZATION}`"))
    elif not _authorization_ok(authorization, expect.key):
        found.append((PROBLEM, f"the webhook's Authorization header is not `{AUTHORIZATION}`: set it so"))
    content_type = headers.get("content-type")
    if content_type is None or not content_type.strip().lower().startswith(CONTENT_TYPE):
        found.append((WARNING, f"the webhook has no `Content-Type: {CONTENT_TYPE}` header: add it (the "
                      "worker reads the JSON anyway; a proxy in front of it may not)"))
    found.extend(judge_body(str(action.get("body") or ""), expect))
    return found


def _authorization_ok(value: str, key: str | None) -> bool:
    parts = _parts(value)
    if parts is not None and len(parts) == 2 and isinstance(parts[0], str) \
            and parts[0].lower() == "token " and parts[1] == _KEY_PATH:
        return True
    scheme, _, given = value.strip().partition(" ")
    return key is not None and scheme.lower() == "token" and same_secret(given.strip(), key)


def judge_body(body: str, expect: Expectation) -> list[tuple[str, str]]:
    fix = f"set it to {WEBHOOK_BODY}"
    if not body.strip():
        return [(PROBLEM, f"the webhook has no body: {fix}")]
    parts = _parts(body.strip())
    fields = _json_object_fields(parts)
    if fields is None:
        if body.strip().startswith("{"):
            return [(PROBLEM, "the webhook's body is JSON text with @-expressions in it: an SMS with a quote "
                     f"or a line break makes it invalid JSON and the SMS is lost; {fix}")]
        return [(PROBLEM, f"the webhook's body is not json(object(...)) with id, from and content: {fix}")]
    found: list[tuple[str, str]] = []
    ident = fields.get("id")
    if ident == Path(("run", "uuid")):
        level = PROBLEM if expect.reconcile else WARNING
        found.append((level, 'the body sends run.uuid as "id": the incoming reconciliation '
                      "(INCOMING_RECONCILE) recognises an SMS by its uuid only and would store each one "
                      "twice; send input.uuid"))
    elif ident != Path(("input", "uuid")):
        found.append((PROBLEM, f'the body sends {_shown(ident)} as "id": send input.uuid'))
    if fields.get("from") not in GOOD_FROM:
        found.append((PROBLEM, f'the body sends {_shown(fields.get("from"))} as "from": send '
                      f'{GOOD_FROM[0]} (the number, without "tel:")'))
    if fields.get("content") != Path(("input", "text")):
        found.append((PROBLEM, f'the body sends {_shown(fields.get("content"))} as "content": '
                      "send input.text"))
    return found


def _shown(expr: Any) -> str:
    return "nothing" if expr is None else str(expr)


def _json_object_fields(parts: tuple[Any, ...] | None) -> dict[str, Any] | None:
    """`@(json(object("k", v, …)))` → {k: v}; None for any other shape."""
    if not parts or len(parts) != 1:
        return None
    outer = parts[0]
    if not (isinstance(outer, Call) and outer.name == "json" and len(outer.args) == 1):
        return None
    inner = outer.args[0]
    if not (isinstance(inner, Call) and inner.name == "object" and len(inner.args) % 2 == 0):
        return None
    pairs = inner.args
    if not all(isinstance(pairs[i], Text) for i in range(0, len(pairs), 2)):
        return None
    return {pairs[i].value: pairs[i + 1] for i in range(0, len(pairs), 2)}  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- flow and trigger


def judge_relay(flows: Sequence[Mapping[str, Any]], definitions: Mapping[str, Any], expect: Expectation,
                *, truncated: bool = False) -> tuple[Judgement, Judgement | None]:
    """The relay flow and its trigger. `flows`: the active messaging flows `flows.json` listed;
    `definitions`: `definitions.json` for them (with their triggers); `truncated`: only some of the
    workspace's flows were asked about. The trigger is not judged when no flow calls the worker."""
    name = "rapidpro_flow"
    active = {str(f.get("uuid")) for f in flows
              if not f.get("archived") and f.get("type") in ("message", None)}
    candidates = []
    for definition in definitions.get("flows") or []:
        if not isinstance(definition, Mapping) or str(definition.get("uuid")) not in active:
            continue
        for action in webhook_actions(definition):
            if calls_the_worker(action, expect.cht_url):
                candidates.append((definition, judge_action(action, expect)))
    if not candidates:
        scope = f"of the {len(active)} most recent" if truncated else f"of the {len(active)}"
        what = ("the workspace has no active messaging flow" if not active else
                f"none {scope} active messaging flows calls {WEBHOOK_URL}")
        return Judgement(PROBLEM, name, f"{what}: incoming SMS never reach the worker; {IMPORT}"), None

    def rank(item: tuple[Mapping[str, Any], list[tuple[str, str]]]) -> tuple[int, int, bool]:
        levels = [level for level, _ in item[1]]
        return (_RANK[worst(levels)], len(levels), item[0].get("name") != FLOW_NAME)

    flow, mismatches = min(candidates, key=rank)
    label = f"flow {flow.get('name')!r} ({flow.get('uuid')})"
    if mismatches:
        judgement = Judgement(worst([level for level, _ in mismatches]), name,
                              f"{label}: " + "; ".join(text for _, text in mismatches))
    else:
        judgement = Judgement(OK, name, f"{label} posts each SMS to {WEBHOOK_URL} with the key, as JSON "
                              "with input.uuid as id")
    return judgement, judge_trigger(definitions.get("triggers") or [], flow)


def judge_trigger(triggers: Sequence[Any], flow: Mapping[str, Any]) -> Judgement:
    name = "rapidpro_trigger"
    label = f"flow {flow.get('name')!r}"
    mine = [t for t in triggers if isinstance(t, Mapping) and t.get("trigger_type") == "C"
            and isinstance(t.get("flow"), Mapping) and t["flow"].get("uuid") == flow.get("uuid")]
    if not mine:
        return Judgement(PROBLEM, name, f"no catch-all trigger starts {label}: incoming SMS never reach it; "
                         f"{IMPORT} (it has one), or add a catch-all trigger for the flow")
    if any(not t.get("groups") and not t.get("exclude_groups") for t in mine):
        return Judgement(OK, name, f"a catch-all trigger starts {label} for every incoming SMS")
    return Judgement(WARNING, name, f"the catch-all trigger of {label} is limited to some groups: SMS from "
                     "other contacts never reach the worker; remove its groups")


RELAY_CHECKS = frozenset({"rapidpro_globals", "rapidpro_cht_url", "rapidpro_cht_api_key", "rapidpro_flow",
                          "rapidpro_trigger"})


def relay_unused(judgements: Sequence[Judgement]) -> list[Judgement]:
    """Without an incoming key the worker takes no SMS from RapidPro: what is wrong with the relay
    is said, as warnings (the configuration's own line already warns about the key)."""
    return [Judgement(WARNING, j.check, f"{j.detail} (no incoming key is configured: the worker relays no "
                      "incoming SMS yet)") if j.level == PROBLEM and j.check in RELAY_CHECKS else j
            for j in judgements]

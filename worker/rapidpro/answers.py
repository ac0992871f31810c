"""RapidPro's answers read: the results (a broadcast, a page of messages) and, for a non-2xx,
the error type that says what it means (worker/rapidpro/errors.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transitions.outgoing.broadcasts import as_id, as_uuid
from worker.backoff import parse_retry_after
from worker.rapidpro.errors import (
    MessageRejected,
    RapidProError,
    RapidProNoAnswer,
    RapidProServerError,
    RapidProUnauthorized,
    SendInDoubt,
    WorkspaceBlocked,
    WrongUrl,
)

# 400 keys that are parts of the message we send: an error on one of them judges the message.
# Anything else (`non_field_errors` — flagged/suspended workspace —, `detail`, unknown keys) does
# not, and must never mark a message failed.
MESSAGE_FIELDS = frozenset({"urns", "text", "attachments", "base_language", "quick_replies"})

@dataclass(frozen=True)
class Broadcast:
    id: int | None  # the integer id CHT stores as gateway_ref (deprecated since v10.3.79, still sent)
    uuid: str | None  # since v10.3.79 (Oct 2025); absent on older RapidPro
    status: str | None  # pending|queued|started|completed|failed|interrupted (legacy: queued|sent|failed)
    raw: dict[str, Any]


@dataclass(frozen=True)
class MessagesPage:
    results: list[dict[str, Any]]
    next: str | None  # absolute URL: pass it back as `cursor_url`


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes | None  # None: the status line arrived but the body could not be read
    body_error: str | None = None


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def looks_html(answer: Answer) -> bool:
    content_type = answer.headers.get("Content-Type", "").lower()
    head = (answer.body or b"")[:100].lstrip().lower()
    return "html" in content_type or head.startswith((b"<!doctype", b"<html"))


def parse_json(answer: Answer) -> Any:
    """The JSON body, or raise ValueError (whatever the Content-Type says, like RapidPro's)."""
    if answer.body is None:
        raise ValueError(answer.body_error or "body unreadable")
    return json.loads(answer.body)


def json_object(answer: Answer) -> dict[str, Any]:
    """A 2xx answer to a read must be a JSON object; an HTML page means a wrong URL."""
    if answer.body is None:
        raise RapidProNoAnswer(f"{answer.status} with an unreadable body: {answer.body_error}",
                               status=answer.status)
    try:
        value = parse_json(answer)
    except ValueError:
        kind = "an HTML page" if looks_html(answer) else "a non-JSON answer"
        raise WrongUrl(f"{answer.status} with {kind} where JSON was expected: check sms.rapidpro.url",
                       status=answer.status) from None
    if not isinstance(value, dict):
        raise WrongUrl(f"{answer.status} with unexpected JSON: check sms.rapidpro.url", status=answer.status)
    return value


def broadcast_from(answer: Answer) -> Broadcast:
    """A 2xx to the broadcast POST. RapidPro processed it: unless it is plainly not RapidPro
    (an HTML page on a non-201), an answer we cannot read leaves the broadcast in doubt."""
    try:
        value = parse_json(answer)
    except ValueError:
        if answer.status != 201 and answer.body is not None and looks_html(answer):
            raise WrongUrl(f"{answer.status} with an HTML page where JSON was expected: "
                           "check sms.rapidpro.url", status=answer.status) from None
        raise SendInDoubt(f"{answer.status} with an unreadable body: "
                          f"{answer.body_error or 'not JSON'}", status=answer.status) from None
    if not isinstance(value, dict):
        raise SendInDoubt(f"{answer.status} without a broadcast", status=answer.status)
    # The id until RapidPro drops it (deprecated since v10.3.79), the uuid since then: either names it.
    broadcast_id, uuid = as_id(value.get("id")), as_uuid(value.get("uuid"))
    if broadcast_id is None and uuid is None:
        raise SendInDoubt(f"{answer.status} without a broadcast id or uuid", status=answer.status)
    status = value.get("status")
    return Broadcast(
        id=broadcast_id,
        uuid=uuid,
        status=status if isinstance(status, str) else None,
        raw=value,
    )


def error_for(method: str, answer: Answer) -> RapidProError:
    """The error type for a non-2xx, non-429 answer."""
    status = answer.status
    retry_after = parse_retry_after(answer.headers.get("Retry-After"))
    reason = reason_of(answer)
    if 300 <= status < 400:
        location = answer.headers.get("Location", "?")
        return WrongUrl(f"{status} redirect to {location}: set sms.rapidpro.url to the final URL",
                        status=status)
    if status in (401, 403):
        return RapidProUnauthorized(reason or f"{status} Forbidden", status=status)
    if status in (404, 405):
        return WrongUrl(f"{status}: {reason or 'not found'} (check sms.rapidpro.url)", status=status)
    if status >= 500:
        if method == "POST" and (answer.body is None or not answer.body.strip() or status in (502, 504)):
            # A bodyless 5xx may not come from RapidPro at all; 502/504 come from a proxy whose
            # upstream may have processed the POST before failing or timing out. Either way the
            # answer does not prove the broadcast was not created.
            return SendInDoubt(f"{status} from a gateway or without a body: {reason or 'no body'}",
                               status=status)
        return RapidProServerError(status, f"{status}: {reason or 'server error'}", retry_after=retry_after)
    if status == 400 and method == "POST":
        errors = json_or_none(answer)
        if isinstance(errors, dict) and errors and set(errors) <= MESSAGE_FIELDS:
            return MessageRejected(flatten(errors), status=status)
        return WorkspaceBlocked(f"400: {reason or 'bad request'}", status=status)
    # Other 4xx (a 400 on a read is our own bad request): RapidPro refused; nothing was created.
    return RapidProError(f"{status}: {reason or 'client error'}", status=status, retry_after=retry_after)


def json_or_none(answer: Answer) -> Any:
    try:
        return parse_json(answer)
    except ValueError:
        return None


def reason_of(answer: Answer) -> str:
    """RapidPro's reason as readable text (`detail`, per-field errors); else the start of the body."""
    value = json_or_none(answer)
    if isinstance(value, dict) and set(value) == {"detail"} and isinstance(value["detail"], str):
        return value["detail"]
    if isinstance(value, dict | list) and value:
        return flatten(value)
    if answer.body is None:
        return f"(body unreadable: {answer.body_error})"
    if looks_html(answer):
        return "(HTML page)"
    return answer.body[:200].decode(errors="replace").strip()


def flatten(errors: Any, path: str = "") -> str:
    """`{"urns": {"0": ["Invalid URN…"]}}` → `urns[0]: Invalid URN…`; several joined with "; "."""
    parts: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                name = str(key)
                if name in ("non_field_errors", "detail"):
                    walk(inner, where)
                else:
                    walk(inner, f"{where}[{name}]" if where else name)
        elif isinstance(value, list):
            for inner in value:
                walk(inner, where)
        elif value is not None:
            parts.append(f"{where}: {value}" if where else str(value))

    walk(errors, path)
    return "; ".join(parts)

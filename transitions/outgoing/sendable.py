"""Which messages of a CHT doc are sendable, to whom, and CHT's outgoing deny rules.

Pure logic: no I/O. Docs come from a database other programs and users' phones write to, so
every function here tolerates malformed docs and never raises on them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from transitions.cht.phone import normalise_phone
from transitions.cht.states import SENDABLE_STATES

TaskKind = Literal["tasks", "scheduled_tasks"]
# CHT looks in `tasks` before `scheduled_tasks`; keep that order everywhere.
TASK_KINDS: tuple[TaskKind, ...] = ("tasks", "scheduled_tasks")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to send, and where its task sits in the doc."""

    uuid: str
    to: str
    message: str
    task_kind: TaskKind
    task_index: int  # index in doc[task_kind], counting malformed entries too
    task_state: str


def _tasks(doc: Any) -> Iterator[tuple[TaskKind, int, dict[str, Any]]]:
    if not isinstance(doc, dict):
        return
    for kind in TASK_KINDS:
        tasks = doc.get(kind)
        if not isinstance(tasks, list):
            continue
        for index, task in enumerate(tasks):
            if isinstance(task, dict):
                yield kind, index, task


def _messages(task: dict[str, Any]) -> Iterator[dict[str, Any]]:
    messages = task.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                yield message


def _non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def sendable_messages(doc: dict[str, Any]) -> list[OutgoingMessage]:
    """Messages of `doc` to send now: task in a sendable state, with uuid, `to` and text.

    Order: `tasks` then `scheduled_tasks`, each in array order. A uuid appearing more than
    once (a malformed doc) is returned only for its first occurrence: one uuid, one send.
    """
    found: list[OutgoingMessage] = []
    seen: set[str] = set()
    for kind, index, task in _tasks(doc):
        state = task.get("state")
        if not isinstance(state, str) or state not in SENDABLE_STATES:
            continue
        for message in _messages(task):
            uuid, to, text = message.get("uuid"), message.get("to"), message.get("message")
            if not (_non_empty_str(uuid) and _non_empty_str(to) and _non_empty_str(text)):
                continue
            if uuid in seen:
                continue
            seen.add(uuid)
            found.append(OutgoingMessage(uuid, to, text, kind, index, state))
    return found


def find_task_message(doc: dict[str, Any], uuid: str) -> tuple[TaskKind, int, dict[str, Any]] | None:
    """(task_kind, index, task) of the first task holding message `uuid`, or None.

    The task is the doc's own dict (not a copy), so the caller can change it in place.
    """
    if not _non_empty_str(uuid):
        return None
    for kind, index, task in _tasks(doc):
        if any(message.get("uuid") == uuid for message in _messages(task)):
            return kind, index, task
    return None


# --- CHT's outgoing deny rules (sentinel's `isOutgoingAllowed`) ---

_ASCII_LETTER = re.compile(r"[A-Za-z]")
# JavaScript parseInt: optional leading whitespace and sign, then the leading digits.
_LEADING_INT = re.compile(r"\s*([+-]?[0-9]+)")


def _parse_int_like_js(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None  # parseInt(true) is NaN
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None  # parseInt(5.9) is 5
    if isinstance(value, str):
        match = _LEADING_INT.match(value)
        return int(match.group(1)) if match else None
    return None


def _deny_entries(deny_list: str | list[Any] | None) -> list[str]:
    if isinstance(deny_list, str):
        items: list[Any] = deny_list.split(",")
    elif isinstance(deny_list, list):
        items = deny_list  # not a CHT form, but an obvious one to accept
    else:
        return []
    entries = [item.lower().strip() for item in items if isinstance(item, str)]
    return [entry for entry in entries if entry]  # "1, , 2": empty entries deny nothing


def is_denied(
    to: str,
    deny_list: str | list[Any] | None,
    shorter_than: int | str | None,
    with_alphas: bool | None,
) -> bool:
    """Whether CHT's settings deny sending to `to`.

    - `outgoing_deny_list`: comma-separated; denied when `to` STARTS WITH an entry, both
      trimmed and compared case-insensitively (`"SAFARI"` denies `"safaricom"`).
    - `outgoing_deny_shorter_than`: read like JS parseInt (`"5.9"` -> 5, `"true"` ignored);
      when > 0, denied if the trimmed `to` has fewer characters.
    - `outgoing_deny_with_alphas`: only the boolean True counts; denied when `to` has an
      ASCII letter.
    An empty or missing `to` is never denied (CHT lets it through; it cannot be sent anyway).
    """
    if not isinstance(to, str) or not to:
        return False
    sanitized = to.lower().strip()
    min_length = _parse_int_like_js(shorter_than)
    if min_length is not None and min_length > 0 and len(sanitized) < min_length:
        return True
    if with_alphas is True and _ASCII_LETTER.search(to):
        return True
    return any(sanitized.startswith(entry) for entry in _deny_entries(deny_list))


def recipient_urn(
    to: str,
    default_country_code: int | str | None,
    phone_validation: str | None = "full",
) -> str:
    """RapidPro URN for `to`: `tel:<E.164>` when it normalises, else `tel:<to as given>`.

    Falling back to the raw value matches CHT; RapidPro answers 400 for a number it cannot
    read, which marks the message failed instead of retrying it for ever.
    """
    normalised = normalise_phone(to, default_country_code, phone_validation)
    return f"tel:{normalised if normalised is not None else to}"

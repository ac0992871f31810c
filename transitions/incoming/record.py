"""Incoming SMS from RapidPro as CHT stores it: body validation, doc id, and the `data_record`.

Pure logic: no I/O. The webhook (worker/incoming/webhook.py) and the reconciliation
(worker/incoming/reconcile.py) both build records here, so the two paths store the same shape
under the same `_id` for the same RapidPro id.

The record follows CHT's `createByForm` (api/src/services/records.js in CHT 4.x): `from` is the
normalised number (the raw value when it is not a phone number), `sms_message` keeps what was
received, and a text whose code is a configured form becomes a report of that form (`form`,
parsed `fields`, CHT's `errors`). Form parsing is transitions/incoming/smsforms' `parse_sms`, behind
`SmsParser`; without it every text is stored as a plain message.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from transitions.cht.phone import normalise_phone
from transitions.cht.translations import EMPTY as NO_TRANSLATIONS
from transitions.cht.translations import Translations

# A fixed namespace: the doc id of a RapidPro id must never change between releases, or a repeat
# after an upgrade would be stored twice.
DOC_ID_NAMESPACE = uuid.UUID("0f8b7a9c-3d52-5e1b-9c47-6a1d2e5f8b30")

# The webhook's paths, CHT's (api/src/routing.js): the flow's Call Webhook action posts here.
V2_PATH = "/api/v2/sms/rapidpro/incoming-messages"
V1_PATH = "/api/v1/sms/radpidpro/incoming-messages"  # CHT's typo, kept for old flows

# CHT's textforms code: first run of characters up to a space or one of ! - , : #
_TEXTFORMS_CODE = re.compile(r"^\s*([^\s!\-,:#]+)")


@dataclass(frozen=True)
class IncomingMessage:
    """What RapidPro's flow posts: `{"id", "from", "content"}`, all non-empty strings."""

    id: str
    sender: str  # the body's `from`, as sent
    content: str


@dataclass(frozen=True)
class Invalid:
    """Why a body was refused; `reason` is a stable code for logs and counters."""

    reason: str


def parse_webhook_body(body: bytes) -> IncomingMessage | Invalid:
    """Validate a webhook body. Never raises: any bad input becomes `Invalid(reason)`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Invalid("not_utf8")
    # json.loads(bytes) would guess UTF-16/32 too; decoding ourselves keeps it strictly UTF-8.
    text = text.removeprefix("\ufeff")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
        return Invalid("not_json")
    if not isinstance(data, dict):
        return Invalid("not_object")
    values: dict[str, str] = {}
    for name in ("id", "from", "content"):
        value = data.get(name)
        if value is None:
            return Invalid(f"missing_{name}")
        if not isinstance(value, str):
            return Invalid(f"invalid_{name}")
        if not value:
            # CHT refuses only an empty value (messaging.js `validateRequiredFields`); a
            # whitespace-only one is stored (a blank text gets CHT's `sys.empty` error).
            return Invalid(f"empty_{name}")
        if not _encodable(value):  # lone surrogates ("\ud800"): CouchDB would refuse the doc
            return Invalid(f"invalid_{name}")
        values[name] = value
    return IncomingMessage(id=values["id"], sender=values["from"], content=values["content"])


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def doc_id_for(rapidpro_id: str) -> str:
    """The `_id` of the record for a RapidPro id: a name-based UUID, like CHT's own report ids.

    Deterministic, so a repeat (or sixteen at once) meets the first one's doc and CouchDB's
    create-only PUT refuses it; always a valid id (hex and dashes, never a leading `_`), whatever
    characters or length the flow's `id` has.
    """
    return str(uuid.uuid5(DOC_ID_NAMESPACE, "rapidpro:" + rapidpro_id))


def get_form_code(message: str) -> str | None:
    """CHT's `smsparser.getFormCode`: muvuku (`x!CODE!…`) or the first textforms word, upper-cased.

    Used only when the SMS-forms parser is not installed (it has its own, exact one).
    """
    parts = message.split("!")
    if len(parts) >= 3:
        return parts[1].upper()
    match = _TEXTFORMS_CODE.match(message)
    return match.group(1).upper() if match else None


@dataclass(frozen=True)
class ParsedSms:
    """The parts of the record the SMS-forms parser decides (see transitions/incoming/smsforms)."""

    doc: dict[str, Any]  # top-level keys: fields, errors, reported_date, form (a report), refid
    sms_message: dict[str, Any]  # sms_message keys: form


# (text, settings, translation docs in force, reported_date_ms) -> the parser's part of the record
SmsParser = Callable[[str, Settings, Translations, int], ParsedSms]


def plain_message(text: str, _settings: Settings, _translations: Translations,
                  reported_date_ms: int) -> ParsedSms:
    """A record without form parsing: what is stored when no SMS-forms parser is installed."""
    sms_message: dict[str, Any] = {}
    code = get_form_code(text)
    if code is not None:  # CHT leaves it undefined (absent once JSON-encoded) when there is none
        sms_message["form"] = code
    return ParsedSms(doc={"fields": {}, "errors": [], "reported_date": reported_date_ms},
                     sms_message=sms_message)


def _smsforms_parser() -> SmsParser | None:
    """transitions.incoming.smsforms behind our small signature, when it is installed."""
    try:
        from transitions.incoming.smsforms import parse_sms
    except ImportError:
        return None

    def parse(text: str, settings: Settings, translations: Translations, reported_date_ms: int) -> ParsedSms:
        # No gateway locale: CHT's RapidPro endpoint passes none (api/src/services/messaging.js).
        result = parse_sms(text, settings.raw, reported_date_ms=reported_date_ms,
                           translations=translations.by_locale)
        return ParsedSms(doc=result.doc_updates(), sms_message=result.sms_message_updates())

    return parse


DEFAULT_PARSER: SmsParser = _smsforms_parser() or plain_message


def build_record(
    message: IncomingMessage,
    settings: Settings,
    reported_date_ms: int,
    parser: SmsParser = DEFAULT_PARSER,
    on_parser_error: Callable[[Exception], None] | None = None,
    translations: Translations = NO_TRANSLATIONS,
) -> dict[str, Any]:
    """The CHT `data_record` for `message`, `_id` included (no `_rev`: it is a create).

    A text whose code is a configured form becomes a report of that form (with `form`, parsed
    `fields` and CHT's `errors`); anything else is a plain message. Should the parser fail on
    some text, the message is still stored, as a plain one: losing an SMS is worse than not
    parsing it (`on_parser_error` hears about it). Error texts come from `translations` (CHT's
    `messages-*` docs) in the settings' locale. No `sms_message.locale` is stored: CHT's RapidPro
    endpoint has none, and CHT sentinel would otherwise prefer it for its automatic replies.
    """
    try:
        parsed = parser(message.content, settings, translations, reported_date_ms)
    except Exception as exc:  # a parser bug must not lose the message
        if on_parser_error is not None:
            on_parser_error(exc)
        parsed = plain_message(message.content, settings, translations, reported_date_ms)
    normalised = normalise_phone(message.sender, settings.default_country_code, settings.phone_validation)
    record: dict[str, Any] = {
        "_id": doc_id_for(message.id),
        "type": "data_record",
        "from": normalised or message.sender,
        "errors": [],
        "tasks": [],
        "fields": {},
        "reported_date": int(reported_date_ms),
    }
    record.update(parsed.doc)
    record["sms_message"] = {
        "type": "sms_message",
        "message": message.content,
        **parsed.sms_message,
        "from": message.sender,
        "gateway_ref": message.id,
    }
    return record

"""The entry point: an incoming text to the parts of the `data_record` CHT's api would create."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Any, Final

from .dates import moment_parse
from .detect import detect_form
from .fields import FieldContext
from .jscompat import UNDEFINED, js_is_nan, js_number, js_trim, js_truthy
from .messages import Translations, Translator
from .parser import parse_form_data
from .validate import validation_errors

_DATE_NUMBER_STRING: Final = re.compile(r"[0-9]{13,}")


@dataclass(frozen=True)
class SmsParseResult:
    """What parsing an SMS contributes to CHT's `data_record` (see the package docstring)."""

    form: str | None
    """Doc `form`: the form code, or None for a plain message (the key is then absent)."""
    fields: dict[str, Any]
    """Doc `fields`: parsed values; absent values are left out, dotted keys are nested."""
    errors: list[dict[str, Any]]
    """Doc `errors`: `{"code", "message"}` (+ `"fields"` for `sys.missing_fields`)."""
    locale: str
    """The record's locale as CHT resolves it (fields.locale, sms locale, settings, "en")."""
    reported_date_ms: int
    """Doc `reported_date`."""
    sms_form: str | None = None
    """Doc `sms_message.form`: the code read from the text even when no such form exists."""
    sms_locale: str | None = None
    """Doc `sms_message.locale` (the gateway's locale; absent when None)."""
    has_refid: bool = False
    refid: Any = None
    """Doc `refid` (set only when `has_refid`): the `facility_reference` field's value,
    upper-cased when it is text; may be null."""

    def doc_updates(self) -> dict[str, Any]:
        """The top-level `data_record` keys this result fills, ready to merge into the doc."""
        doc: dict[str, Any] = {
            "fields": self.fields,
            "errors": self.errors,
            "reported_date": self.reported_date_ms,
        }
        if self.form is not None:
            doc["form"] = self.form
        if self.has_refid:
            doc["refid"] = self.refid
        return doc

    def sms_message_updates(self) -> dict[str, Any]:
        """The `sms_message` keys this result fills (`form`, `locale`) when they have a value."""
        out: dict[str, Any] = {}
        if self.sms_form is not None:
            out["form"] = self.sms_form
        if self.sms_locale is not None:
            out["locale"] = self.sms_locale
        return out


def parse_sent_timestamp(value: Any, tz: tzinfo = UTC) -> int | float | None:
    """CHT's `parseSentTimestamp`: epoch ms from a number, a 13+ digit string or a date text.

    Quirk (CHT): a string that merely *contains* 13 digits is read with `Number()` as a
    whole, so `"ts:1352399720000"` is not a date (the receipt time is used instead).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if js_is_nan(value) else value
    if isinstance(value, str):
        if _DATE_NUMBER_STRING.search(value):
            number = js_number(value)
            return None if js_is_nan(number) else number
        return moment_parse(value, tz)
    return None


def _strip_undefined(value: Any) -> Any:
    """The value as JSON.stringify stores it: undefined keys left out, NaN as null."""
    if js_is_nan(value):
        return None
    if isinstance(value, dict):
        return {k: _strip_undefined(v) for k, v in value.items() if v is not UNDEFINED}
    if isinstance(value, list):
        return [None if v is UNDEFINED else _strip_undefined(v) for v in value]
    return value


def _merge(keys: list[str], record: dict[str, Any], data: Any) -> None:
    """CHT's `smsparser.merge`: copy one (possibly dotted) field from parsed data to `fields`."""
    if len(keys) > 1:
        head = keys[0]
        sub = data.get(head, UNDEFINED) if isinstance(data, Mapping) else UNDEFINED
        if js_truthy(sub):
            if not js_truthy(record.get(head, UNDEFINED)) or not isinstance(record[head], dict):
                record[head] = {}
            _merge(keys[1:], record[head], sub)
    else:
        record[keys[0]] = data.get(keys[0], UNDEFINED) if isinstance(data, Mapping) else UNDEFINED


def parse_sms(
    text: str,
    app_settings: Mapping[str, Any],
    *,
    locale: str | None = None,
    reported_date_ms: int,
    sent_timestamp: str | int | float | None = None,
    translations: Translations | None = None,
    tz: tzinfo = UTC,
) -> SmsParseResult:
    """Parse an incoming SMS as CHT's api (`records.createByForm`) does.

    `app_settings`: the `settings` object of CHT's settings doc. `locale`: the gateway's
    locale for the message, if any (CHT's RapidPro endpoint has none). `reported_date_ms`:
    the receipt time (used unless a usable `sent_timestamp` is given). `translations`:
    `{locale: {key: text}}` from CHT's `messages-*` docs (none: every error text is its key,
    as in CHT without them). `tz`: the CHT api server's time zone, in which moment reads
    dates without an offset (CHT 4.x containers run in UTC).
    """
    settings: Mapping[str, Any] = app_settings if isinstance(app_settings, Mapping) else {}
    translator = Translator(settings, translations)
    ctx = FieldContext(settings=settings, translator=translator, tz=tz)

    detection = detect_form(text, settings.get("forms"))
    definition = detection.definition
    form_data: dict[str, Any] | None = None
    if detection.code and definition is not None:
        form_data = parse_form_data(definition, detection.message, locale, ctx)

    reported = reported_date_ms
    sent = parse_sent_timestamp(sent_timestamp, tz)
    if js_truthy(sent):
        reported = int(sent) if float(sent).is_integer() else sent  # type: ignore[arg-type]

    fields_out: dict[str, Any] = {}
    has_refid = False
    refid: Any = None
    errors: list[dict[str, Any]] = []
    pending: list[tuple[str, Mapping[str, Any] | None]] = []  # error code, template context

    if definition is not None:
        reference = definition.get("facility_reference")
        if js_truthy(reference):
            value = form_data.get(reference, UNDEFINED) if form_data is not None else UNDEFINED
            if value is not UNDEFINED:
                has_refid = True
                refid = value.upper() if isinstance(value, str) and value else value
        definition_fields = definition.get("fields")
        if isinstance(definition_fields, Mapping):
            for key in definition_fields:
                _merge(key.split("."), fields_out, form_data or {})
            for code, template_ctx in validation_errors(definition, form_data or {}):
                pending.append((code, template_ctx))
    if form_data and form_data.get("_extra_fields"):
        pending.append(("extra_fields", None))
    if isinstance(text, str) and not js_trim(text):
        pending.append(("sys.empty", None))

    form = detection.code
    if definition is None:
        if settings.get("forms_only_mode"):
            form_ctx = {"form": form if form is not None else UNDEFINED}
            pending.append(("sys.form_not_found", form_ctx))
        else:
            form = None  # a plain message: CHT leaves `form` undefined

    fields_out = _strip_undefined(fields_out)
    record_locale = _record_locale(fields_out, locale, translator)
    for code, template_ctx in pending:
        # CHT renders the context into the message and then drops it (records.js `addError`).
        errors.append({"code": code, "message": translator.translate(code, record_locale, template_ctx)})

    return SmsParseResult(
        form=form,
        fields=fields_out,
        errors=errors,
        locale=record_locale,
        reported_date_ms=reported,  # type: ignore[arg-type]
        sms_form=detection.code,
        sms_locale=locale,
        has_refid=has_refid,
        refid=_strip_undefined(refid),
    )


def _record_locale(fields: Mapping[str, Any], locale: str | None, translator: Translator) -> str:
    """CHT's `getLocale`: a `locale` field, the message's locale, the settings', then "en"."""
    for candidate in (fields.get("locale"), locale):
        if js_truthy(candidate):
            return candidate if isinstance(candidate, str) else str(candidate)
    return translator.settings_locale

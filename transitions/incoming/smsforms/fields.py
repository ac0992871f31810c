"""Field-type conversion: a raw SMS value to what CHT stores for the field's `type`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from transitions.cht.phone import normalise_phone

from .bsdate import bs_to_epoch
from .dates import moment_parse
from .jscompat import (
    UNDEFINED,
    js_is_nan,
    js_number,
    js_strict_equal,
    js_to_string,
    standardise_digits,
    strip_invisible,
)
from .messages import Translator


@dataclass(frozen=True)
class FieldContext:
    settings: Mapping[str, Any]
    translator: Translator
    tz: tzinfo


def parse_num(raw: Any) -> Any:
    """CHT's `parseNum`: Devanagari digits accepted, non-numbers become null."""
    if raw is UNDEFINED:
        return UNDEFINED
    std = standardise_digits(raw)
    number = js_number(std)
    if js_is_nan(number) or number in (float("inf"), float("-inf")) or std == "":
        return None
    return number


def _integer(raw: Any, field: Mapping[str, Any], key: str, ctx: FieldContext) -> Any:
    cleaned = strip_invisible(js_to_string(raw))
    options = field.get("list")
    if options:
        for item in options:
            if isinstance(item, list) and item and js_to_string(item[0]) == cleaned:
                # Quirk (CHT): the label is translated with the *settings* locale, never the
                # message's, and an integer list value is stored as that label.
                return ctx.translator.translate(item[1] if len(item) > 1 else UNDEFINED)
        return None
    return parse_num(cleaned)


def _string(raw: Any, field: Mapping[str, Any], key: str, ctx: FieldContext) -> Any:
    options = field.get("list")
    if options:
        cleaned = strip_invisible(raw)
        for item in options:
            if isinstance(item, list) and item and js_strict_equal(item[0], cleaned):
                # Unlike integer lists, the label is stored untranslated (CHT >= 4.x fix of
                # its string-list loop; older CHT versions threw on any string list).
                return item[1] if len(item) > 1 else UNDEFINED
        return raw  # no option matched: CHT keeps the raw value (and only logs a warning)
    if key in ("patient_id", "place_id"):
        # IDs are digit strings: always stored as text, Devanagari digits and zero-width
        # characters cleaned, even when textforms typed the value as a number.
        return standardise_digits(raw)
    # Quirk (CHT): anything else is kept as parsed, so a full-textforms value such as
    # `NAME 42` is stored as the number 42 in a string field (compact and Muvuku keep text).
    return raw


def _date(raw: Any, field: Mapping[str, Any], key: str, ctx: FieldContext) -> Any:
    """`moment(raw).valueOf()`: epoch ms, or NaN for an invalid date — stored as null, but
    present for CHT's required-field check (so no `sys.missing_fields` for it)."""
    cleaned = strip_invisible(raw)
    if isinstance(cleaned, bool):
        return math.nan
    if isinstance(cleaned, (int, float)):
        # Already epoch ms (the textforms parser converted a YYYY-MM-DD value) or a bare
        # number, which moment reads as epoch ms too.
        return cleaned
    if not isinstance(cleaned, str):
        return math.nan
    parsed = moment_parse(cleaned, ctx.tz)
    return math.nan if parsed is None else parsed


def _bs_date(raw: Any, field: Mapping[str, Any], key: str, ctx: FieldContext) -> Any:
    cleaned = standardise_digits(raw)
    if not isinstance(cleaned, str):
        return None
    # The first non-digit character is the separator, whatever it is (`2068-11-29`,
    # `2068/11/29`, `2068.11.29`); no separator means one (invalid) number.
    separator = next((ch for ch in cleaned if not "0" <= ch <= "9"), None)
    parts = [cleaned] if separator is None else cleaned.split(separator)
    args = ([*parts, UNDEFINED, UNDEFINED, UNDEFINED])[:3]
    return bs_to_epoch(*args, tz=ctx.tz)


def _boolean(raw: Any, field: Mapping[str, Any], key: str, ctx: FieldContext) -> Any:
    value = parse_num(strip_invisible(raw))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value == 1:
            return True
        if value == 0:
            return False
    return None


def _month(raw: Any, field: Mapping[str, Any], key: str, ctx: FieldContext) -> Any:
    return parse_num(strip_invisible(raw))  # months stay numbers, never list labels


def _phone(raw: Any, field: Mapping[str, Any], key: str, ctx: FieldContext) -> Any:
    std = standardise_digits(raw)
    text = js_to_string(std)
    normalised = normalise_phone(
        text, ctx.settings.get("default_country_code"), ctx.settings.get("phone_validation")
    )
    # An invalid number is kept (digits standardised): CHT's registration transitions
    # validate it again and answer the sender.
    return normalised if normalised else std


def _bs_part(raw: Any, field: Mapping[str, Any], key: str, ctx: FieldContext) -> Any:
    return standardise_digits(raw)  # bsYear / bsMonth / bsDay stay digit strings


FieldParser = Callable[[Any, Mapping[str, Any], str, FieldContext], Any]

FIELD_PARSERS: dict[str, FieldParser] = {
    "integer": _integer,
    "string": _string,
    "date": _date,
    "bsDate": _bs_date,
    "boolean": _boolean,
    "month": _month,
    "phone_number": _phone,
    "bsYear": _bs_part,
    "bsMonth": _bs_part,
    "bsDay": _bs_part,
}


def parse_field(field: Mapping[str, Any], raw: Any, key: str, ctx: FieldContext) -> Any:
    """CHT's `parseField`: unknown types (e.g. `bsAggreDate`, `custom`) keep the raw value,
    an absent value stays absent and an empty one becomes null."""
    parser = FIELD_PARSERS.get(field.get("type")) if isinstance(field.get("type"), str) else None
    if parser is None:
        return raw
    if raw is UNDEFINED:
        return UNDEFINED
    if isinstance(raw, str) and raw == "":
        return None
    return parser(raw, field, key, ctx)

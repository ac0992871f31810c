"""TextForms: full (`#`-separated `label value` pairs) and compact (values by order)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, tzinfo
from typing import Any, Final

from .dates import js_date_parse
from .jscompat import (
    DOT,
    UNDEFINED,
    WS,
    WS_BODY,
    js_number,
    js_number_to_string,
    js_to_string,
    js_trim,
    lower,
)

_BOUNDARY: Final = re.compile(rf"{WS}*#{WS}*")
_DATE: Final = r"[0-9]{4}[-/][0-9]{1,2}[-/][0-9]{1,2}"
_NUMERIC: Final = r"[1-9][0-9]*(?:\.(?:[0-9]+)?)?"
_SEP: Final = rf"[{WS_BODY}\-!]*"
# Not anchored at the start, like CHT's: the first place the pattern fits wins, so a value
# running over a line break leaves the *next* line's first word as the key.
_FIELD: Final = re.compile(
    rf"{WS}*([A-Za-z_.*]+){_SEP}({_DATE})?{_SEP}({_NUMERIC})?{_SEP}({DOT}+?)?{WS}*\Z"
)
_COMPACT_VALUES: Final = re.compile(rf'"[^"]+"|[^"{WS_BODY}]+')
_COMPACT_VALUES_GREEDY: Final = re.compile(rf'"{DOT}+"|[^"{WS_BODY}]+')


def _set_result(results: dict[str, Any], key: str, value: Any) -> None:
    """Store a value; a repeated label turns the value into a list (raw pair objects kept)."""
    key = key.lower()
    current = results.get(key, UNDEFINED)
    if current is UNDEFINED:
        if isinstance(value, dict) and isinstance(value.get("values"), list):
            results[key] = "".join(js_to_string(v) for v in value["values"])
        else:
            results[key] = value
    elif isinstance(current, list):
        current.append(value)
    else:
        results[key] = [current, value]


def parse_full(message: str, tz: tzinfo = UTC) -> dict[str, Any]:
    """`LABEL value#LABEL value…` to `{label (lower case): value}`, as CHT's TextForms parser.

    Quirk (CHT): its test for an all-numeric value is written as a regular expression that
    can never match, so every value is text except one matched right after the label by the
    number pattern (`[1-9][0-9]*(.[0-9]*)?`, read with parseFloat: `NAME 42` gives 42, `ID 3.10`
    gives 3.1, `ID 042` gives "042"). A number followed by text is glued back together as
    typed, without the space (`ID 3.10 ml` gives "3.10ml"); the second value of a repeated
    label is kept as it came (a `{type: "pair", values: [...]}` object for number-then-text).
    A `YYYY-MM-DD` value becomes epoch ms (UTC midnight for the strict ISO form, local
    midnight for `2012/3/12`); an invalid one is NaN (stored null).
    """
    results: dict[str, Any] = {}
    if not message:
        return results
    for part in _BOUNDARY.split(message):
        match = _FIELD.search(part)
        if match is None:
            continue
        key, date_text, numeric, other = match.groups()
        if other is not None and js_trim(other) == "":
            other = None
        if other is not None and numeric is not None:
            _set_result(results, key, {"type": "pair", "values": [numeric, other]})
        elif numeric is not None:
            _set_result(results, key, js_number(numeric.rstrip(".")))
        elif date_text is not None:
            parsed = js_date_parse(date_text, tz)
            _set_result(results, key, float("nan") if parsed is None else parsed)
        else:
            _set_result(results, key, UNDEFINED if other is None else other)
    return results


def parse_compact(definition: Mapping[str, Any], message: str) -> dict[str, Any]:
    """Values in the order of the form's fields (the JSON order of `fields`).

    The last field takes the rest of the text when it is a string; double quotes group
    words. Quirk (CHT): `position` is not read — only the order the fields are written in.
    """
    fields = definition.get("fields")
    if not message or not isinstance(fields, Mapping):
        return {}
    keys = list(fields)
    values = _COMPACT_VALUES.findall(message)
    if len(values) > len(keys):
        values = _COMPACT_VALUES_GREEDY.findall(message)
    results: dict[str, Any] = {}
    for index, key in enumerate(keys):
        if not values:
            break
        field = fields[key] if isinstance(fields[key], Mapping) else {}
        if index == len(keys) - 1 and field.get("type") == "string":
            value = " ".join(values)
        else:
            value = values.pop(0)
        if len(value) >= 1 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        results.setdefault(key, value)
    return results


def is_compact(
    definition: Mapping[str, Any], message: str, translate: Callable[[Any], Any]
) -> bool:
    """Compact unless the text has a `#` or starts with a field's tiny or short label.

    Quirk (CHT): a label counts when followed by whitespace *or a digit*, and is used as a
    regular expression; `R North West` stays compact for tiny label `N`, `N 12` does not.
    """
    fields = definition.get("fields")
    if not message or not isinstance(fields, Mapping):
        return False
    parts = _BOUNDARY.split(message)
    if len(parts) != 1:
        return False
    first = parts[0]
    for field in fields.values():
        labels = field.get("labels") if isinstance(field, Mapping) else None
        labels = labels if isinstance(labels, Mapping) else {}
        for name in ("tiny", "short"):
            label = translate(labels.get(name, UNDEFINED))
            if _starts_with(first, label):
                return False
    return True


def _starts_with(text: str, label: Any) -> bool:
    if not text or label is None or label is UNDEFINED or label == "":
        return False
    if isinstance(label, (dict, list)):
        return False
    label_text = label if isinstance(label, str) else js_number_to_string(label)
    if lower(text) == lower(label_text):
        return True
    try:
        pattern = re.compile(rf"^{label_text}[{WS_BODY}0-9]", re.IGNORECASE)
    except re.error:
        return False  # CHT would throw here; such a label cannot match anything
    return pattern.search(text) is not None

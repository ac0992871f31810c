"""Muvuku (`1!FORM!v1#v2#…`) and Medic JavaRosa (`J1!FORM!label#value#…`) messages."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from .jscompat import UNDEFINED, js_trim, js_truthy

# `#` not preceded by a backslash separates JavaRosa parts (`\#` is a literal `#`).
_UNESCAPED_HASH: Final = re.compile(r"([^\\])#")


def parse_muvuku(definition: Mapping[str, Any], message: str) -> dict[str, Any]:
    """Values by position. An empty value is kept as `""` (the field parser then stores null);
    fields past the end of the message are absent; values past the last field only set
    `_extra_fields` (quirk: a trailing `#` is such an extra, empty value)."""
    parts = message.split("#")
    header = parts[0].split("!")
    # A `!` inside the first value belongs to it: re-join the header after the form code.
    # Without a third header part the first value is undefined (`1!F#x!y`), not skipped.
    first: Any = "!".join(header[2:]) if len(header) > 2 else UNDEFINED
    values: list[Any] = [first, *parts[1:]]
    fields = definition.get("fields")
    if not isinstance(fields, Mapping):
        return {}
    keys = list(fields)
    result: dict[str, Any] = {}
    for index in range(max(len(keys), len(values))):
        field = fields[keys[index]] if index < len(keys) else UNDEFINED
        if not js_truthy(field):
            # Past the last field, or (quirk) a falsy field definition such as `false`.
            result["_extra_fields"] = True
            continue
        if not isinstance(field, Mapping):
            # Quirk (CHT): CHT names each value by tagging its field definition with the key
            # (`field._key = key`), which a primitive definition (`"facility_reference": "id"`
            # in a form's fields) silently ignores, so its value is filed under no field.
            continue
        if index < len(values) and values[index] is not UNDEFINED:
            result[keys[index]] = js_trim(values[index])
    return result


def parse_javarosa(
    definition: Mapping[str, Any], message: str, translate: Callable[[Any], Any]
) -> dict[str, Any]:
    """`label#value` pairs matched to the fields' tiny labels (case-insensitive, whole label)."""
    data = "!".join(message.split("!")[2:])
    parts = _UNESCAPED_HASH.sub("\\1\v", data).split("\v")
    fields = definition.get("fields")
    if not isinstance(fields, Mapping):
        return {}
    part_labels = [js_trim(p) for p in parts[0::2]]
    values = parts[1::2]
    result: dict[str, Any] = {}
    for key, field in fields.items():
        labels = field.get("labels") if isinstance(field, Mapping) else None
        tiny = labels.get("tiny") if isinstance(labels, Mapping) else None
        if not tiny:
            continue
        label = translate(tiny)
        try:
            pattern = re.compile(rf"^{label}\Z", re.IGNORECASE)
        except (re.error, TypeError):
            continue
        for index in range(min(len(part_labels), len(values))):
            if pattern.search(part_labels[index]):
                result[key] = values[index].replace("\\#", "#")
    return result

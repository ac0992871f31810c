"""A message of a known form to its parsed data (CHT's `smsparser.parse`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .bsdate import bs_to_epoch
from .detect import MUVUKU_RE, is_muvuku, strip_form_code
from .fields import FieldContext, parse_field
from .jscompat import UNDEFINED, js_truthy, lower, standardise_digits
from .muvuku import parse_javarosa, parse_muvuku
from .textforms import is_compact, parse_compact, parse_full


def _create_deep_key(target: dict[str, Any], keys: list[str], value: Any) -> None:
    """`a.b.c` keys become nested objects; a falsy value in the way is replaced by `{}`."""
    node = target
    for key in keys[:-1]:
        if not js_truthy(node.get(key, UNDEFINED)):
            node[key] = {}
        child = node[key]
        if not isinstance(child, dict):
            return  # CHT silently fails to set a property on a primitive
        node = child
    node[keys[-1]] = value


def parse_form_data(
    definition: Mapping[str, Any], message: str, locale: str | None, ctx: FieldContext
) -> dict[str, Any]:
    """Parsed values keyed by field key (dotted keys nested); UNDEFINED marks absent values.

    `_extra_fields: True` is passed along when a Muvuku message had too many values.
    """
    fields = definition.get("fields")
    if not message or not isinstance(fields, Mapping):
        return {}

    def translate(value: Any) -> Any:
        return ctx.translator.translate(value, locale)

    add_omitted = False
    muvuku = MUVUKU_RE.match(message)
    if muvuku:
        parser_code = muvuku.group(1).upper()
        if parser_code == "1":
            msg_data = parse_muvuku(definition, message)
        elif parser_code == "J1":
            # JavaRosa labels are translated in the settings locale, not the message's.
            msg_data = parse_javarosa(definition, message, ctx.translator.translate)
        else:
            return {}  # CHT logs "Failed to find message parser" and stores no fields
        add_omitted = True  # every field gets a key, even past the end of the message
    else:
        meta = definition.get("meta")
        code = meta.get("code") if isinstance(meta, Mapping) else None
        text = strip_form_code(code, message)
        if is_compact(definition, text, translate):
            msg_data = parse_compact(definition, text)
        else:
            msg_data = parse_full(text, ctx.tz)
            # Tiny labels to field keys. Quirk (CHT): a label whose value is falsy (an
            # invalid date, NaN) is left unmapped, so the field ends up absent.
            for key, field in fields.items():
                labels = field.get("labels") if isinstance(field, Mapping) else None
                tiny = labels.get("tiny", UNDEFINED) if isinstance(labels, Mapping) else UNDEFINED
                label = lower(translate(tiny))
                if not isinstance(label, str) or key == label:
                    continue
                if js_truthy(msg_data.get(label, UNDEFINED)):
                    msg_data[key] = msg_data.pop(label)

    form_data: dict[str, Any] = {}
    for key, field in fields.items():
        raw = msg_data.get(key, UNDEFINED)
        if js_truthy(raw) or add_omitted:
            field_def = field if isinstance(field, Mapping) else {}
            value = parse_field(field_def, raw, key, ctx)
            _create_deep_key(form_data, key.split("."), value)

    aggregate = next(
        (k for k, f in fields.items() if isinstance(f, Mapping) and f.get("type") == "bsAggreDate"),
        None,
    )
    if aggregate is not None:
        parts: dict[str, Any] = {"bsYear": UNDEFINED, "bsMonth": 1, "bsDay": 1}
        for key, field in fields.items():
            kind = field.get("type") if isinstance(field, Mapping) else None
            if kind in parts:
                # Quirk (CHT): a bsMonth/bsDay field that is in the form but not in the
                # message is "undefined", not the default 1: a missing day gives null.
                parts[kind] = standardise_digits(msg_data.get(key, UNDEFINED))
        if js_truthy(parts["bsYear"]):
            form_data[aggregate] = bs_to_epoch(
                parts["bsYear"], parts["bsMonth"], parts["bsDay"], tz=ctx.tz
            )

    if msg_data.get("_extra_fields") is True:
        form_data["_extra_fields"] = True
    return form_data


__all__ = ["is_muvuku", "parse_form_data"]

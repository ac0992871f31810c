"""Errors CHT's api records on a new SMS report (api/src/services/report/validate.js, CHT 4.x)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .jscompat import UNDEFINED, js_truthy

# (code, template context) in CHT's order.
ValidationError = tuple[str, dict[str, Any]]


def _exists(value: Any) -> bool:
    """CHT's `exists`: not undefined and not null. NaN exists (an invalid date is present)."""
    return value is not UNDEFINED and value is not None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    """JS `Number.isInteger`: finite and without a fractional part (12.0 counts)."""
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer()  # NaN and infinities are not


def _incorrect_type(kind: Any, value: Any) -> bool:
    if kind == "integer":
        return not (_is_number(value) and _is_integer(value))
    if kind == "string":
        return not isinstance(value, str)
    if kind == "boolean":
        return not isinstance(value, bool)
    if kind == "complex":
        return not isinstance(value, (dict, list))  # JS typeof "object" (null never gets here)
    return False


def validation_errors(definition: Mapping[str, Any], form_data: Mapping[str, Any]) -> list[ValidationError]:
    """`sys.incorrect_type` for each present value of the wrong JS type (fields with a `list`
    are exempt: their values become labels), then one `sys.missing_fields` naming every
    required field with no value.

    Quirk (CHT): a field is looked up by its key as written, so a dotted key (`a.b`), stored
    nested, is never found — required, it is always reported missing; optional, never checked.
    Only `required` and the type are checked here: CHT enforces `length` and list membership
    later, in its registration transitions' `validations`.
    """
    fields = definition.get("fields")
    if not isinstance(fields, Mapping):
        return []
    errors: list[ValidationError] = []
    missing: list[str] = []
    for key, field in fields.items():
        field = field if isinstance(field, Mapping) else {}
        value = form_data.get(key, UNDEFINED)
        if js_truthy(field.get("required", UNDEFINED)) and not _exists(value):
            missing.append(key)
        elif (_exists(value) and not js_truthy(field.get("list", UNDEFINED))
              and _incorrect_type(field.get("type"), value)):
            errors.append(("sys.incorrect_type", {"expectedType": field.get("type"), "key": key}))
    if missing:
        errors.append(("sys.missing_fields", {"fields": missing}))
    return errors

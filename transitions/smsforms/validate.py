"""Errors CHT's api records on a new SMS report, with their translated messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .jscompat import UNDEFINED


def _is_defined(value: Any) -> bool:
    return value is not UNDEFINED and value is not None


def missing_required(definition: Mapping[str, Any], form_data: Mapping[str, Any]) -> list[str]:
    """Keys of required fields with no value (null counts as missing, so does `[null, …]`).

    Only `required` is checked: CHT does not enforce `length` (or `list` membership) when a
    report is received; its registration transitions' `validations` do that later.
    """
    fields = definition.get("fields")
    if not isinstance(fields, Mapping):
        return []
    missing: list[str] = []
    for key, field in fields.items():
        if not isinstance(field, Mapping) or not field.get("required"):
            continue
        *parents, leaf = key.split(".")
        data: Any = form_data
        for parent in parents:
            data = data.get(parent, UNDEFINED) if isinstance(data, Mapping) else UNDEFINED
        value = data.get(leaf, UNDEFINED) if isinstance(data, Mapping) else UNDEFINED
        if not _is_defined(value) or (
            isinstance(value, list) and (not value or not _is_defined(value[0]))
        ):
            missing.append(key)
    return missing

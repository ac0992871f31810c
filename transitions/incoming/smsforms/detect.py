"""Form-code detection: which JSON form (if any) an incoming text belongs to."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .jscompat import DOT, WS, WS_BODY, ZERO_WIDTH_RE

# "<parser code>!<form>!<data>": a letter is optional before the single digit ("1", "J1").
MUVUKU_RE: Final = re.compile(rf"^{WS}*([A-Za-z]?[0-9])!{DOT}+!{DOT}+")
# The leading word, up to whitespace or one of the separators CHT accepts after a code.
_TEXTFORMS_CODE_RE: Final = re.compile(rf"^{WS}*([^{WS_BODY}!\-,:#]+)")


@dataclass(frozen=True)
class Detection:
    """`code`: what CHT stores as `sms_message.form` (None: key absent).

    `definition`: the matching form of the settings, or None.
    `message`: the text to parse; differs from the received one only when a zero-width
    character inside the code had to be removed to find the form (CHT parses the fixed text
    but stores the original one).
    """

    code: str | None
    definition: Mapping[str, Any] | None
    message: str


def is_muvuku(message: Any) -> bool:
    return isinstance(message, str) and MUVUKU_RE.match(message) is not None


def get_form_code(message: Any) -> str | None:
    """The upper-cased form code CHT reads from a message, or None.

    Quirk (CHT): any text with two or more `!` is taken as Muvuku-style, so the code is the
    text between the first two `!` — `YYYY#HFI!foo#ZDT!9` is looked up as form `FOO#ZDT`
    (and so becomes a plain message), `Hi! Are you there! ok` as ` ARE YOU THERE`.
    """
    if not isinstance(message, str):
        return None
    parts = message.split("!")
    if len(parts) >= 3:
        return parts[1].upper()
    match = _TEXTFORMS_CODE_RE.match(message)
    return match.group(1).upper() if match else None


def _get_form(forms: Any, code: str | None) -> Mapping[str, Any] | None:
    if code is None or not isinstance(forms, Mapping):
        return None
    definition = forms.get(code)
    return definition if isinstance(definition, Mapping) else None


def detect_form(message: str, forms: Any) -> Detection:
    """Find the form a message is for, as CHT's api does on receipt.

    Zero-width characters (U+200B-U+200D; U+FEFF counts as whitespace for JS) inside the code:
    when the code as read is not a form but is one once they are removed, that form is used.
    Quirk (CHT): the fixed code is then put back into the text with a case-sensitive
    replacement of the *upper-cased* code, so a lower-case `yy\\u200byy 1999` finds form
    YYYY but its text is not fixed; the code is then not stripped before parsing and ends up
    as the first compact value.
    """
    code = get_form_code(message)
    definition = _get_form(forms, code)
    parse_message = message
    if code and definition is None:
        cleaned = ZERO_WIDTH_RE.sub("", code)
        definition = _get_form(forms, cleaned)
        if definition is not None:
            parse_message = message.replace(code, cleaned, 1)
            code = cleaned
    return Detection(code=code, definition=definition, message=parse_message)


def strip_form_code(code: Any, message: str) -> str:
    """Remove a leading `meta.code` (case-insensitive) and the separators after it."""
    if not isinstance(code, str):
        return message
    pattern = re.compile(rf"^{WS}*{re.escape(code)}[{WS_BODY}!\-,:#]*", re.IGNORECASE)
    return pattern.sub("", message, count=1)

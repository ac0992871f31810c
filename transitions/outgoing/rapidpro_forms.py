"""What RapidPro stores for what the worker sends (pure): a broadcast's text as RapidPro's API
trims it, and a `tel:` URN as RapidPro normalises it. The in-doubt lookup compares these forms,
not what CHT wrote, or a message whose answer was lost would be looked for under a text or a
number RapidPro never stored, not found, and sent again.

Read from RapidPro's own code (nyaruka/rapidpro, v26.1.101; unchanged on main):

- Text: `temba/api/v2/serializers.py` `BroadcastWriteSerializer.text` is a `TranslatedTextField`
  (`temba/api/v2/fields.py`) whose values are Django REST framework `CharField`s with the
  defaults `trim_whitespace=True`, `allow_blank=False`. DRF's `CharField`
  (rest_framework/fields.py) trims with Python's `str.strip()` (every character `str.isspace()`
  calls whitespace: spaces, tabs, `\\r\\n`, no-break spaces, U+2000–U+200A, U+3000…; not U+200B
  nor U+FEFF), answers "This field may not be blank." for a text that is empty once trimmed,
  then runs its validators on the trimmed text: "Null characters are not allowed." (U+0000),
  "Surrogate characters are not allowed: U+XXXX." and the length limit (`Msg.MAX_TEXT_LEN`,
  4096, on the trimmed text).
- URN: `temba/api/v2/fields.py` `URNField` (a `CharField` whose own `to_internal_value` does not
  trim) → `validate_urn` → `URN.normalize(urn, org.default_country_code)` and `URN.validate`
  (`temba/contacts/models.py`), with `parse_number` of `temba/utils/urns/urns.py`: a `tel:` path
  is stripped to its letters and digits, read as international when it began with `+` or has
  11 or more digits not starting with 0, else in the workspace's country; a *possible* number
  becomes E.164, anything else keeps its bare digits (and is then refused by `URN.validate`).
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers

MAX_TEXT_LEN = 4096  # temba/msgs/models.py Msg.MAX_TEXT_LEN

# DRF's wordings (rest_framework/fields.py CharField.default_error_messages, validators).
BLANK = "This field may not be blank."
NULL_CHARACTERS = "Null characters are not allowed."
TOO_LONG = f"Ensure this field has no more than {MAX_TEXT_LEN} characters."
INVALID_URN = "Invalid URN: {}. Ensure phone numbers contain country codes."

_NOT_ALNUM = re.compile(r"[^0-9a-z]")  # URN.normalize_number: `regex.sub(r"[^0-9a-z]", "", …)`
_SCHEME = re.compile("[a-z]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def rapidpro_text(text: str) -> str:
    """The text as RapidPro stores and lists it: DRF's `str(value).strip()`."""
    return text.strip()


def text_refusal(text: str) -> str | None:
    """RapidPro's reason for refusing `text` as a broadcast's text (400), or None when it takes it."""
    trimmed = rapidpro_text(text)
    if trimmed == "":
        return BLANK
    if len(trimmed) > MAX_TEXT_LEN:
        return TOO_LONG
    if "\x00" in trimmed:
        return NULL_CHARACTERS
    surrogate = _SURROGATE.search(trimmed)
    if surrogate is not None:
        return f"Surrogate characters are not allowed: U+{ord(surrogate.group()):X}."
    return None


def _parse_number(number: str, country: str) -> str | None:
    """temba/utils/urns/urns.py parse_number: E.164 of a *possible* number, else None."""
    try:
        parsed = phonenumbers.parse(number, country or None)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(parsed) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalise_number(number: str, country: str | None) -> str:
    """temba/contacts/models.py URN.normalize_number: E.164 when possible, else bare characters."""
    number = number.strip()
    normalised = number.lower()
    if normalised.endswith(("e+11", "e+12")):  # a spreadsheet's scientific notation
        normalised = normalised[:-4].replace(".", "")
    normalised = _NOT_ALNUM.sub("", normalised)
    parse_as = normalised
    if number.startswith("+") or (len(normalised) >= 11 and not normalised.startswith("0")):
        parse_as = "+" + normalised
    formatted = _parse_number(parse_as, country or "")
    return normalised if formatted is None else formatted


def rapidpro_urn(urn: Any, country: str | None) -> str | None:
    """The URN RapidPro stores for `urn` in a workspace of `country` (ISO 3166 alpha-2, or None
    when it has none), or None when RapidPro refuses it (400 "Invalid URN").

    Only `tel:` is normalised as RapidPro does; another scheme is kept trimmed as given (the
    worker sends only `tel:`). Query and fragment parts are not expected and refused.
    """
    if not isinstance(urn, str):
        return None
    # URNField overrides CharField's to_internal_value: the URN is not trimmed as a whole (a
    # space before the scheme makes an unknown scheme), only its path is (URN.normalize).
    scheme, colon, path = urn.partition(":")
    if not colon or not scheme or not path or any(c in path for c in "?#"):
        return None
    if scheme != "tel":
        # RapidPro's schemes are lowercase words (URN.VALID_SCHEMES): `TEL:` is refused.
        return f"{scheme}:{path.strip()}" if _SCHEME.fullmatch(scheme) else None
    normalised = normalise_number(path.strip(), country)
    if normalised == "" or _parse_number(normalised, country or "") is None:
        return None  # URN.validate: the normalised path must parse as a possible number
    return f"tel:{normalised}"


def same_urn(a: Any, b: Any, country: str | None) -> bool:
    """Whether RapidPro stores `a` and `b` as one URN (both refused: compared as given)."""
    ra, rb = rapidpro_urn(a, country), rapidpro_urn(b, country)
    if ra is None or rb is None:
        return isinstance(a, str) and isinstance(b, str) and a.strip() == b.strip()
    return ra == rb


def workspace_country(info: Any) -> str | None:
    """`country` of a `workspace.json` answer: ISO 3166 alpha-2, "" (none) read as None."""
    country = info.get("country") if isinstance(info, dict) else None
    if isinstance(country, str) and len(country.strip()) == 2:
        return country.strip().upper()
    return None

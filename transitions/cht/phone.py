"""Phone number normalisation (CHT's rules, via phonenumbers) and masking for logs.

Pure logic: no I/O.
"""

from __future__ import annotations

import re

import phonenumbers

# CHT rejects any number containing a Latin letter, even ones libphonenumber would accept
# as vanity numbers (1-800-MICROSOFT) or strip (`tel:` prefixes).
_LETTERS = re.compile(r"[A-Za-z]")
_COUNTRY_CODE = re.compile(r"\+?([0-9]{1,3})")
# CHT's google-libphonenumber (JS) reads as digits only ASCII, fullwidth and the two Arabic-Indic
# sets; Python's phonenumbers reads any Unicode digit, so `९८४१२३४५६७` (Devanagari) would be a
# valid Nepali number here but is kept raw by CHT. Other digits become a symbol that neither
# library reads as part of a number, so both reach the same verdict.
_JS_DIGITS = re.compile(r"[0-9\uff10-\uff19\u0660-\u0669\u06f0-\u06f9]")
_NOT_A_DIGIT_FOR_CHT = "\u00a4"

PHONE_VALIDATION_MODES = ("full", "partial", "none")


def region_for_country_code(default_country_code: int | str | None) -> str | None:
    """ISO region for a calling code (254 -> "KE", "+1" -> "US"); None if unknown or absent."""
    if isinstance(default_country_code, bool):
        return None  # bool is an int subclass; True is not country code 1
    if isinstance(default_country_code, int):
        code = default_country_code
    elif isinstance(default_country_code, str):
        match = _COUNTRY_CODE.fullmatch(default_country_code.strip())
        if match is None:
            return None
        code = int(match.group(1))
    else:
        return None
    region = phonenumbers.region_code_for_country_code(code)
    # "ZZ" is unknown; "001" marks non-geographic codes, useless for parsing local numbers.
    return None if region in ("ZZ", "001") else region


def normalise_phone(
    raw: str,
    default_country_code: int | str | None,
    phone_validation: str | None = "full",
) -> str | None:
    """`raw` in E.164 (`+254712345678`), or None when it cannot be parsed or fails validation.

    Local numbers are read in the region of `default_country_code`. `phone_validation` is
    CHT's setting, case-insensitive: "partial" only checks the length is possible for the
    country, "none" accepts any parseable number, anything else (incl. None) is "full"
    (length and prefix valid). In every mode a number containing letters is refused.
    """
    if not isinstance(raw, str) or not raw.strip() or _LETTERS.search(raw):
        return None
    try:
        parsed = phonenumbers.parse(_as_cht_reads_digits(raw), region_for_country_code(default_country_code))
    except phonenumbers.NumberParseException:
        return None
    mode = phone_validation.lower() if isinstance(phone_validation, str) else "full"
    if mode == "partial":
        ok = phonenumbers.is_possible_number(parsed)
    elif mode == "none":
        ok = True
    else:
        ok = phonenumbers.is_valid_number(parsed)
    if not ok:
        return None
    if phonenumbers.is_valid_short_number(parsed):
        # CHT (shared-libs/phone-number) formats a valid short number nationally, not in E.164.
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _as_cht_reads_digits(raw: str) -> str:
    if raw.isascii():
        return raw
    return "".join(
        _NOT_A_DIGIT_FOR_CHT if ch.isdecimal() and not _JS_DIGITS.match(ch) else ch for ch in raw)


def mask_phone(number: str) -> str:
    """A log-safe form of `number`: `+254712345678` -> `+2547******78`.

    Keeps a short prefix (the `+` and up to 4 digits, enough to see the country) and the last
    2 characters, and masks at least half of the input (at least 3 characters), so the full
    number never appears; input of 3 characters or fewer is masked entirely.
    """
    if not isinstance(number, str):
        number = "" if number is None else str(number)
    n = len(number)
    if n == 0:
        return ""
    if n <= 3:
        return "***"  # fixed width: too short to reveal anything, not even its length
    visible = n - max(3, n // 2)
    tail = min(2, visible)
    head_max = 5 if number.startswith("+") else 4
    head = min(head_max, visible - tail)
    return number[:head] + "*" * (n - head - tail) + number[n - tail :]

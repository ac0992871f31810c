"""Small emulations of the JavaScript semantics CHT's SMS parser relies on.

CHT parses SMS in Node.js; to store the same values we need JS's idea of whitespace (`\\s`
includes U+FEFF, Python's does not), of `.` (never a line terminator), of `Number()` coercion,
of truthiness and of number-to-string conversion. Everything here is pure and tiny.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final


class _Undefined:
    """JS `undefined`: a value that is absent from the stored JSON (unlike `None`/null)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = _Undefined()

# Characters JS's `\s` and String.prototype.trim() treat as whitespace.
JS_WS_CHARS: Final = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_WS_CLASS_BODY: Final = re.escape(JS_WS_CHARS)
WS: Final = f"[{_WS_CLASS_BODY}]"  # JS `\s`
WS_BODY: Final = _WS_CLASS_BODY  # JS whitespace, for building character classes
DOT: Final = "[^\n\r\u2028\u2029]"  # JS `.` (no dotAll)

# U+200B-U+200D and U+FEFF: CHT strips these (and only these) from some values.
ZERO_WIDTH_RE: Final = re.compile("[\u200b-\u200d\ufeff]")

_DEVANAGARI_DIGITS: Final = str.maketrans("०१२३४५६७८९", "0123456789")

_DECIMAL_LITERAL: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_DECIMAL_LITERAL: Final = re.compile(r"0([xXoObB])([0-9a-fA-F]+)")


def js_trim(value: str) -> str:
    return value.strip(JS_WS_CHARS)


def strip_invisible(value: Any) -> Any:
    """CHT's `stripInvisibleCharacters`: only strings are touched."""
    return ZERO_WIDTH_RE.sub("", value) if isinstance(value, str) else value


def js_truthy(value: Any) -> bool:
    if value is UNDEFINED or value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0 and not math.isnan(value)
    if isinstance(value, str):
        return value != ""
    return True  # objects and arrays, even empty ones


def js_number(value: Any) -> float | int:
    """`Number(value)`; NaN as float('nan'). Integral results come back as int."""
    if value is UNDEFINED:
        return math.nan
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return _tidy(value)
    if isinstance(value, list):
        # Number([]) is 0, Number([x]) is Number(String(x)), longer arrays are NaN.
        return js_number(js_to_string(value))
    if not isinstance(value, str):
        return math.nan
    text = js_trim(value)
    if text == "":
        return 0
    if text in ("Infinity", "+Infinity"):
        return math.inf
    if text == "-Infinity":
        return -math.inf
    match = _NON_DECIMAL_LITERAL.fullmatch(text)
    if match:
        base = {"x": 16, "o": 8, "b": 2}[match.group(1).lower()]
        try:
            return int(match.group(2), base)
        except ValueError:
            return math.nan
    if _DECIMAL_LITERAL.fullmatch(text):
        return _tidy(float(text))
    return math.nan


def _tidy(number: float | int) -> float | int:
    if isinstance(number, float) and number.is_integer() and abs(number) < 2**53:
        return int(number)  # JSON writes 12, not 12.0, like JS
    return number


def js_is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def js_number_to_string(number: float | int) -> str:
    """JS `String(number)` (shortest round-trip digits, JS exponent rules)."""
    if isinstance(number, bool):
        return "true" if number else "false"
    if isinstance(number, int):
        return str(number)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    if number.is_integer() and abs(number) < 1e21:
        return str(int(number))
    digits = Decimal(repr(number))
    if 1e-6 <= abs(number) < 1e21:
        return format(digits, "f")
    sign, coefficient, exponent = digits.normalize().as_tuple()
    mantissa = "".join(str(d) for d in coefficient)
    exp10 = exponent + len(mantissa) - 1
    body = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return ("-" if sign else "") + body + "e" + ("+" if exp10 >= 0 else "-") + str(abs(exp10))


def js_to_string(value: Any) -> str:
    """JS `String(value)` for the JSON-ish values the parser handles."""
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return js_number_to_string(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join("" if v is None or v is UNDEFINED else js_to_string(v) for v in value)
    return "[object Object]"


def standardise_digits(value: Any) -> Any:
    """CHT's `standardiseDigits`: String(value), Devanagari digits to ASCII, zero-width removed.

    Falsy inputs come back unchanged (JS `original && ...`).
    """
    if not js_truthy(value):
        return value
    return ZERO_WIDTH_RE.sub("", js_to_string(value).translate(_DEVANAGARI_DIGITS))


def js_strict_equal(a: Any, b: Any) -> bool:
    """`a === b` for JSON values (numbers compare by value, bools are not numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is b


def lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def is_mapping(value: Any) -> bool:
    return isinstance(value, Mapping)

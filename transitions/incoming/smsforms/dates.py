"""Date strings to epoch milliseconds, the two ways CHT reads them.

CHT reads a `date` field with moment.js: ISO 8601 text without an offset is *local time* of
the CHT api server (UTC in CHT 4.x containers, hence our default), anything moment does not
recognise goes to JS's `Date` parser (jsdate.py: V8's rules, which read `1` as 1 January
2001). Full-textforms values that look like `YYYY-MM-DD` are converted earlier by the textforms
parser with `new Date(...)`, which reads the strict ISO date form as *UTC* midnight and other
forms (`2012/3/12`, `2012-3-12`) as local time.
"""

from __future__ import annotations

import re
from datetime import UTC, date, timedelta, timezone, tzinfo
from typing import Final

from .jscompat import WS
from .jsdate import js_date_parse, local_ms

__all__ = ["js_date_parse", "moment_parse"]

# moment's two ISO 8601 shapes (extended, with separators, and basic, without); `\s` is JS's.
_YEAR: Final = r"(?:[+-][0-9]{6}|[0-9]{4})"
_ZONE: Final = rf"([+-][0-9]{{2}}(?::?[0-9]{{2}})?|{WS}*Z)"
_MOMENT_EXTENDED: Final = re.compile(
    rf"{WS}*({_YEAR}-(?:[0-9]{{2}}-[0-9]{{2}}|W[0-9]{{2}}-[0-9]|W[0-9]{{2}}|[0-9]{{3}}|[0-9]{{2}}))"
    rf"(?:(T| )([0-9]{{2}}(?::[0-9]{{2}}(?::[0-9]{{2}}(?:[.,][0-9]+)?)?)?){_ZONE}?)?")
_MOMENT_BASIC: Final = re.compile(
    rf"{WS}*({_YEAR}(?:[0-9]{{4}}|W[0-9]{{3}}|W[0-9]{{2}}|[0-9]{{3}}|[0-9]{{2}}|))"
    rf"(?:(T| )([0-9]{{2}}(?:[0-9]{{2}}(?:[0-9]{{2}}(?:[.,][0-9]+)?)?)?){_ZONE}?)?")
# moment's date formats, tried in its order on the date part (unanchored, as moment does);
# the flag says whether a time may follow.
_ISO_DATES: Final = (
    ("Y-M-D", re.compile(r"[+-][0-9]{6}-[0-9]{2}-[0-9]{2}"), True),
    ("Y-M-D", re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), True),
    ("G-W-E", re.compile(r"[0-9]{4}-W[0-9]{2}-[0-9]"), True),
    ("G-W", re.compile(r"[0-9]{4}-W[0-9]{2}"), False),
    ("Y-DDD", re.compile(r"[0-9]{4}-[0-9]{3}"), True),
    ("Y-M", re.compile(r"[0-9]{4}-[0-9]{2}"), False),
    ("YMD6", re.compile(r"[+-][0-9]{10}"), True),
    ("YMD", re.compile(r"[0-9]{8}"), True),
    ("GWE", re.compile(r"[0-9]{4}W[0-9]{3}"), True),
    ("GW", re.compile(r"[0-9]{4}W[0-9]{2}"), False),
    ("YDDD", re.compile(r"[0-9]{7}"), True),
    ("YM", re.compile(r"[0-9]{6}"), False),
    ("Y", re.compile(r"[0-9]{4}"), False),
)
_DIGITS: Final = re.compile(r"[0-9]+")


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _month_days(year: int, month: int) -> int:
    return 29 if month == 2 and _leap(year) else (28 if month == 2 else 30 + ((month + month // 8) % 2))


def _iso_day(kind: str, text: str) -> tuple[int, int, int] | None:
    """(year, month, day) of moment's ISO date part; None where moment flags it invalid."""
    numbers = [int(n) for n in _DIGITS.findall(text)]
    if kind.startswith("YMD"):  # basic forms: split the digits by position
        digits = text.lstrip("+-")
        numbers = [int(digits[:-4]), int(digits[-4:-2]), int(digits[-2:])]
    elif kind in ("YDDD", "YM"):
        numbers = [int(text[:4]), int(text[4:])]
    elif kind in ("GWE", "GW"):
        numbers = [int(text[:4]), int(text[5:7])] + ([int(text[7:])] if kind == "GWE" else [])
    if text.startswith("-"):
        numbers[0] = -numbers[0]
    if "DDD" in kind:
        year, ordinal = numbers
        if not 1 <= ordinal <= (366 if _leap(year) else 365):
            return None
        return year, 1, ordinal  # the day runs on past January, as JS's MakeDay lets it
    if kind.startswith(("G-W", "GW")):
        year, week, weekday = [*numbers, 1][:3]
        try:
            found = date.fromisocalendar(year, week, weekday)  # ISO weeks, as moment's GGGG/WW/E
        except ValueError:
            return None  # an impossible week or weekday, or a year Python cannot hold
        return found.year, found.month, found.day
    year, month, day = [*numbers, 1, 1][:3]
    if not 1 <= month <= 12 or not 1 <= day <= _month_days(year, month):
        return None  # moment flags overflowing dates invalid (unlike JS Date)
    return year, month, day


def moment_parse(text: str, tz: tzinfo = UTC) -> int | None:
    """`moment(text).valueOf()`; None where moment gives an invalid date (NaN, stored null).

    moment reads its ISO 8601 shapes itself (date-only and without an offset: local time of
    `tz`) and hands any other text to JavaScript's `Date` (V8's rules, see jsdate.py).
    """
    match = _MOMENT_EXTENDED.fullmatch(text) or _MOMENT_BASIC.fullmatch(text)
    if match is None:
        return js_date_parse(text, tz)  # moment's "input fallback": `new Date(text)`
    date_text, _separator, time_text, offset = match.groups()
    found = next(((kind, allow_time) for kind, pattern, allow_time in _ISO_DATES
                  if pattern.search(date_text)), None)
    if found is None or (time_text and not found[1]):
        # moment marks the ISO reading failed (a time after `YYYY-MM`…) and falls back too.
        return js_date_parse(text, tz)
    day = _iso_day(found[0], date_text)
    if day is None:
        return None
    clock = [int(n) for n in _DIGITS.findall(re.split(r"[.,]", time_text or "")[0])]
    if time_text and ":" not in time_text:  # basic: HH, HHmm, HHmmss
        digits = re.split(r"[.,]", time_text)[0]
        clock = [int(digits[i:i + 2]) for i in range(0, len(digits), 2)]
    hour, minute, second = ([*clock, 0, 0, 0])[:3]
    fraction = re.split(r"[.,]", time_text)[1] if time_text and re.search(r"[.,]", time_text) else "0"
    millis = int(fraction[:3].ljust(3, "0"))
    if hour > 24 or minute > 59 or second > 59 or (hour == 24 and (minute or second or millis)):
        return None
    zone: tzinfo = tz
    if offset and offset[-1] == "Z":
        zone = UTC
    elif offset:
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        zone = timezone(sign * timedelta(minutes=int(digits[:2]) * 60 + int(digits[2:4] or 0)))
    offset_s = None if zone is tz else int(zone.utcoffset(None).total_seconds())  # type: ignore[union-attr]
    return local_ms(*day, hour, minute, second, millis, offset_s, tz)

"""Date strings to epoch milliseconds, the two ways CHT reads them.

CHT reads a `date` field with moment.js: ISO 8601 text without an offset is *local time* of
the CHT api server (UTC in CHT 4.x containers, hence our default), anything moment does not
recognise goes to JS's `Date` parser. Full-textforms values that look like `YYYY-MM-DD`
are converted earlier by the textforms parser with `new Date(...)`, which reads the strict
ISO date form as *UTC* midnight and other forms (`2012/3/12`, `2012-3-12`) as local time.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Final

from .jscompat import WS

_MOMENT_ISO: Final = re.compile(
    rf"{WS}*"
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2}))?|(?P<bm>[0-9]{2})(?P<bd>[0-9]{2}))"
    r"(?:[T ](?P<H>[0-9]{2})(?::?(?P<M>[0-9]{2})(?::?(?P<S>[0-9]{2})(?:[.,](?P<f>[0-9]+))?)?)?"
    r"(?P<tz>Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_V8_ISO_DATE: Final = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_V8_YMD: Final = re.compile(rf"{WS}*([0-9]{{4}})[-/]([0-9]{{1,2}})[-/]([0-9]{{1,2}}){WS}*")
_V8_MDY: Final = re.compile(rf"{WS}*([0-9]{{1,2}})/([0-9]{{1,2}})/([0-9]{{4}}){WS}*")


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _local_midnight(day: date, tz: tzinfo) -> int:
    return _epoch_ms(datetime(day.year, day.month, day.day, tzinfo=tz))


def _rolled_date(year: int, month: int, day: int) -> date | None:
    """JS `Date`: month 1-12 and day 1-31 are accepted, an overflowing day rolls over."""
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    try:
        return date(year, month, 1) + timedelta(days=day - 1)
    except (ValueError, OverflowError):
        return None


def js_date_parse(text: str, tz: tzinfo = UTC) -> int | None:
    """`new Date(text).valueOf()` for the date-only texts SMS forms carry; None for NaN.

    Only the shapes that reach it from the parsers are supported: `YYYY-MM-DD` (UTC),
    `YYYY-M-D` / `YYYY/M/D` and `M/D/YYYY` (local). Other free text gives None.
    """
    match = _V8_ISO_DATE.fullmatch(text)
    if match:
        day = _rolled_date(*(int(g) for g in match.groups()))
        return None if day is None else _local_midnight(day, UTC)
    match = _V8_YMD.fullmatch(text)
    if match:
        y, m, d = (int(g) for g in match.groups())
        day = _rolled_date(y, m, d)
        return None if day is None else _local_midnight(day, tz)
    match = _V8_MDY.fullmatch(text)
    if match:
        m, d, y = (int(g) for g in match.groups())
        day = _rolled_date(y, m, d)
        return None if day is None else _local_midnight(day, tz)
    return None


def moment_parse(text: str, tz: tzinfo = UTC) -> int | None:
    """`moment(text).valueOf()`; None where moment gives an invalid date (NaN, stored null)."""
    match = _MOMENT_ISO.fullmatch(text)
    if match is None:
        return js_date_parse(text, tz)  # moment's own fallback is `new Date(text)`
    year = int(match["y"])
    month = int(match["m"] or match["bm"] or 1)
    day = int(match["d"] or match["bd"] or 1)
    hour = int(match["H"] or 0)
    minute = int(match["M"] or 0)
    second = int(match["S"] or 0)
    fraction = (match["f"] or "0")[:3].ljust(3, "0")
    if not (1 <= month <= 12) or not (1 <= day <= calendar.monthrange(year, month)[1]):
        return None  # moment flags overflowing dates invalid (unlike JS Date)
    if hour > 24 or minute > 59 or second > 59 or (hour == 24 and (minute or second)):
        return None
    zone: tzinfo = tz
    offset = match["tz"]
    if offset == "Z":
        zone = UTC
    elif offset:
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        zone = timezone(sign * timedelta(minutes=minutes))
    extra_day = hour == 24
    moment = datetime(year, month, day, 0 if extra_day else hour, minute, second,
                      int(fraction) * 1000, tzinfo=zone)
    if extra_day:
        moment += timedelta(days=1)
    return _epoch_ms(moment)

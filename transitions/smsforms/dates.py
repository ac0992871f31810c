"""Date strings to epoch milliseconds, the two ways CHT reads them.

CHT reads a `date` field with moment.js: ISO 8601 text without an offset is *local time* of
the CHT api server (UTC in CHT 4.x containers, hence our default), anything moment does not
recognise goes to JS's `Date` parser (jsdate.py: V8's rules, which read `1` as 1 January
2001). Full-textforms values that look like `YYYY-MM-DD` are converted earlier by the textforms
parser with `new Date(...)`, which reads the strict ISO date form as *UTC* midnight and other
forms (`2012/3/12`, `2012-3-12`) as local time.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Final

from .jscompat import WS
from .jsdate import js_date_parse

__all__ = ["js_date_parse", "moment_parse"]

_MOMENT_ISO: Final = re.compile(
    rf"{WS}*"
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2}))?|(?P<bm>[0-9]{2})(?P<bd>[0-9]{2}))"
    r"(?:[T ](?P<H>[0-9]{2})(?::?(?P<M>[0-9]{2})(?::?(?P<S>[0-9]{2})(?:[.,](?P<f>[0-9]+))?)?)?"
    rf"(?P<tz>{WS}*Z|[+-][0-9]{{2}}(?::?[0-9]{{2}})?)?)?"
)


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


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
    if offset and offset[-1] == "Z":
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

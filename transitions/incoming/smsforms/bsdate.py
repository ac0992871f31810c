"""Bikram Sambat (BS) dates to epoch milliseconds, with CHT's calendar data and quirks.

CHT converts with the npm package `bikram-sambat` (1.8.x): BS years 1970-2090 are supported
and anything else (and any invalid month/day) is an error, stored as null. The Python BS
libraries checked (nepali-datetime, bsdatetime, bikram, bikram-sambat, bsad-converter,
nepali-date-library, pyBSDate) each disagree with it on some years, including the current
2081-2083, so the month lengths CHT uses are kept here, as bikram-sambat 1.8.1 has them (its
`daysInMonth`; an official calendar may differ, but CHT stores what its library says): one
string per BS year, one digit per month, holding the month length minus 29.
"""

from __future__ import annotations

import math
from datetime import UTC, date, timedelta, tzinfo
from typing import Any, Final

from .dates import moment_parse
from .jscompat import UNDEFINED, js_number

FIRST_YEAR: Final = 1970

_MONTH_LENGTHS: Final = (
    "223222101011",  # 1970
    "223231101011",  # 1971
    "232321110012",  # 1972
    "132321110102",  # 1973
    "223222101011",  # 1974
    "223312101011",  # 1975
    "232321110012",  # 1976
    "132321110102",  # 1977
    "223222101011",  # 1978
    "223321101011",  # 1979
    "232321110012",  # 1980
    "222322011011",  # 1981
    "223222101011",  # 1982
    "223321101011",  # 1983
    "232321110012",  # 1984
    "222322011011",  # 1985
    "223222101011",  # 1986
    "232321101011",  # 1987
    "232321110012",  # 1988
    "222322101011",  # 1989
    "223222101011",  # 1990
    "232321101011",  # 1991
    "232321110102",  # 1992
    "222322101011",  # 1993
    "223222101011",  # 1994
    "232321110011",  # 1995
    "232321110102",  # 1996
    "223222101011",  # 1997
    "223222101011",  # 1998
    "232321110012",  # 1999
    "132321110102",  # 2000
    "223222101011",  # 2001
    "223321101011",  # 2002
    "232321110012",  # 2003
    "132321110102",  # 2004
    "223222101011",  # 2005
    "223321101011",  # 2006
    "232321110012",  # 2007
    "222322011002",  # 2008
    "223222101011",  # 2009
    "223321101011",  # 2010
    "232321110012",  # 2011
    "222322011011",  # 2012
    "223222101011",  # 2013
    "223321101011",  # 2014
    "232321110012",  # 2015
    "222322011011",  # 2016
    "223222101011",  # 2017
    "232321101011",  # 2018
    "232321110102",  # 2019
    "222322101011",  # 2020
    "223222101011",  # 2021
    "232321110011",  # 2022
    "232321110102",  # 2023
    "222322101011",  # 2024
    "223222101011",  # 2025
    "232321110012",  # 2026
    "132321110102",  # 2027
    "223222101011",  # 2028
    "223231101011",  # 2029
    "232321110012",  # 2030
    "132321110102",  # 2031
    "223222101011",  # 2032
    "223321101011",  # 2033
    "232321110012",  # 2034
    "132322011002",  # 2035
    "223222101011",  # 2036
    "223321101011",  # 2037
    "232321110012",  # 2038
    "222322011011",  # 2039
    "223222101011",  # 2040
    "223321101011",  # 2041
    "232321110012",  # 2042
    "222322011011",  # 2043
    "223222101011",  # 2044
    "232321101011",  # 2045
    "232321110012",  # 2046
    "222322101011",  # 2047
    "223222101011",  # 2048
    "232321110011",  # 2049
    "232321110102",  # 2050
    "222322101011",  # 2051
    "223222101011",  # 2052
    "232321110011",  # 2053
    "232321110102",  # 2054
    "223222101011",  # 2055
    "223231101011",  # 2056
    "232321110012",  # 2057
    "132321110102",  # 2058
    "223222101011",  # 2059
    "223321101011",  # 2060
    "232321110012",  # 2061
    "132322010102",  # 2062
    "223222101011",  # 2063
    "223321101011",  # 2064
    "232321110012",  # 2065
    "222322011002",  # 2066
    "223222101011",  # 2067
    "223321101011",  # 2068
    "232321110012",  # 2069
    "222322011011",  # 2070
    "223222101011",  # 2071
    "232321101011",  # 2072
    "232321110012",  # 2073
    "222322101011",  # 2074
    "223222101011",  # 2075
    "232321110011",  # 2076
    "232321110102",  # 2077
    "222322101011",  # 2078
    "223222101011",  # 2079
    "232321110011",  # 2080
    "232321110102",  # 2081
    "223222101011",  # 2082
    "223222101011",  # 2083
    "223221110111",  # 2084
    "232312110111",  # 2085
    "132321110111",  # 2086
    "223222110111",  # 2087
    "123312110111",  # 2088
    "132321110111",  # 2089
    "132321110111",  # 2090
)
LAST_YEAR: Final = FIRST_YEAR + len(_MONTH_LENGTHS) - 1


class BsDateError(ValueError):
    pass


def _to_int32(number: float) -> int:
    if math.isnan(number) or math.isinf(number):
        return 0
    value = int(number) & 0xFFFFFFFF
    return value - 0x100000000 if value >= 0x80000000 else value


def _year_row(year: float) -> str:
    index = year - FIRST_YEAR
    if isinstance(index, float) and (math.isnan(index) or not index.is_integer()):
        raise BsDateError(f"No data for year: {year} BS")
    index = int(index)
    if not 0 <= index < len(_MONTH_LENGTHS):
        raise BsDateError(f"No data for year: {year} BS")
    return _MONTH_LENGTHS[index]


def days_in_month(year: float, month: float) -> int:
    """Length of a BS month, as the library computes it: the 2-bit slot is picked with JS
    bit shifts, so a NaN month reads Baisakh and a fractional one some neighbouring slot."""
    if month < 1 or month > 12:
        raise BsDateError(f"Invalid month value {month}")
    row = _year_row(year)
    slot = (_to_int32(month - 1) << 1) & 0x1F  # JS masks a shift count to 5 bits
    return 29 + (int(row[slot // 2]) if slot < 24 else 0)


_MS_PER_DAY: Final = 86_400_000
# The library's epoch: 1913-04-13 00:00 in Nepal (+05:30), i.e. 1913-04-12T18:30Z.
_BS_EPOCH_MS: Final = -1_789_990_200_000


def to_greg(year: Any, month: Any, day: Any) -> date | None:
    """Gregorian date of a BS date, computed as bikram-sambat's `toGreg` does; None where the
    library's arithmetic gives NaN (no error: CHT then stores null but counts the field as
    present). Raises BsDateError where the library throws (CHT stores null, field missing).

    Arguments are coerced like JS does (strings, undefined). Quirks kept: a missing month
    counts the day in Baisakh; a missing day gives NaN; a fractional day is added as a
    fraction of a day to the library's 18:30 UTC epoch (so `1.5` is the next day).
    """
    y, m, d = js_number(year), js_number(month), js_number(day)
    if m < 1:
        raise BsDateError(f"Invalid month value {month}")
    if y < FIRST_YEAR:
        raise BsDateError(f"Invalid year value {year}")
    if d < 1 or d > days_in_month(y, m):
        raise BsDateError(f"Invalid day value {day}")
    timestamp = _BS_EPOCH_MS + _MS_PER_DAY * d
    remaining = m - 1
    while y >= FIRST_YEAR:
        while remaining > 0:
            timestamp += _MS_PER_DAY * days_in_month(y, remaining)
            remaining -= 1
        remaining = 12
        y -= 1
    if math.isnan(timestamp):
        return None
    return date(1970, 1, 1) + timedelta(days=math.floor(timestamp / _MS_PER_DAY))


def bs_to_epoch(year: Any, month: Any = 1, day: Any = 1, tz: tzinfo = UTC) -> int | float | None:
    """CHT's `bsToEpoch`: local midnight (moment) of the Gregorian date; None (null, field
    missing) where the library throws; NaN (stored null, field present) where it gives NaN."""
    if year is UNDEFINED:
        return None
    try:
        greg = to_greg(year, month, day)
    except BsDateError:
        return None
    if greg is None:
        return math.nan
    return moment_parse(greg.isoformat(), tz)

"""`new Date(text)` as V8 reads it: the table was produced by Node.js 20 (TZ=UTC)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from transitions.incoming.smsforms.dates import moment_parse
from transitions.incoming.smsforms.jsdate import js_date_parse

# Literal dates: parser vectors, the text itself is the point (no clock is read).
NODE_UTC = [
    ("1", 978307200000),
    ("0", 946684800000),
    ("12", 1007164800000),
    ("13", None),
    ("32", 1956528000000),
    ("2012", 1325376000000),
    ("001992-09-07", 715824000000),
    ("1992-9-7", 715824000000),
    ("07/09/1992", 710640000000),
    ("7-9-1992", 710640000000),
    ("abc", None),
    ("2012 3 4", 1330819200000),
    ("20120304", None),
    ("1.5", 978652800000),
    ("Jan 5 2020", 1578182400000),
    ("5 Jan 2020", 1578182400000),
    ("-1", 978307200000),
    ("99", 915148800000),
    ("100", -59011459200000),
    ("31", None),
    ("2020-02-30", 1583020800000),
    ("2020/02/30", 1583020800000),
    ("  2020-02-03  ", 1580688000000),
    ("2020-13-01", None),
    ("3,5", 983750400000),
    ("+5", 988675200000),
    ("-3", 983404800000),
    ("2012-03-12Z", 1331510400000),
    ("2011-", 1293840000000),
    ("02016-07-22", 1469145600000),
    ("001999-04-17", 924307200000),
    ("2012-03-12 10:20", 1331547600000),
    ("2012-03-12T10:20", 1331547600000),
    ("2012-03-12T10:20Z", 1331547600000),
    ("2012-03-12T10:20+05:30", 1331527800000),
    ("2012-03-12 10:20 +0530", 1331527800000),
    ("Jan 5", 978652800000),
    ("Jan", None),
    ("10:20", None),
    ("2012-03-12T25:00", None),
    ("March 3, 2021 10am", None),
    ("3 pm", None),
    ("12/25/2020 3:45 pm", 1608911100000),
    ("2020-1-1 GMT+2", 1577829600000),
    ("1e3", None),
    ("x 12", 1007164800000),
    ("12 x", None),
    ("(hello) 12", 1007164800000),
    ("2012.03.12", 1331510400000),
    ("12.03.2012", 1354492800000),
    ("5 tabs", None),
    ("Sita", None),
    ("1.0 x", None),
    ("2.50", None),
    ("2088a", None),
    ("+977 984-1234567", None),
    ("9841234567", None),
    ("2018-02-29", 1519862400000),
    ("2016-02-29", 1456704000000),
    ("1 2 3 4", None),
    ("Mon, 25 Dec 1995 13:30:00 +0430", 819882000000),
    ("2001-02-03T04:05:06.789", 981173106789),
    ("2001-02-03T04:05:06.7891234Z", 981173106789),
    ("   5", 988675200000),
]


@pytest.mark.parametrize(("text", "expected"), NODE_UTC)
def test_as_node_reads_it(text: str, expected: int | None) -> None:
    assert js_date_parse(text) == expected


def test_forms_without_an_offset_are_local_time_except_the_iso_date() -> None:
    kathmandu = ZoneInfo("Asia/Kathmandu")  # +05:45
    shift = (5 * 60 + 45) * 60 * 1000
    assert js_date_parse("2012-03-12", kathmandu) == js_date_parse("2012-03-12")  # ISO date: UTC
    assert js_date_parse("2012/03/12", kathmandu) == js_date_parse("2012/03/12") - shift
    assert js_date_parse("1", kathmandu) == js_date_parse("1") - shift
    assert js_date_parse("2012-03-12T10:20Z", kathmandu) == js_date_parse("2012-03-12T10:20Z")


# `moment(text).valueOf()` (moment 2.31, Node.js 20, TZ=UTC): its ISO shapes, and the texts it
# hands to `Date` (including ISO shapes whose format it refuses, such as a time after YYYY-MM).
# Literal dates: parser vectors, as moment reads them.
MOMENT_UTC = [
    ("2012", 1325376000000),
    ("2012-03", 1330560000000),
    ("201203", 1330560000000),
    ("20120312", 1331510400000),
    ("2012-03-12", 1331510400000),
    ("2012-03-12 10:20", 1331547600000),
    ("2012-03-12T10:20:30.123456", 1331547630123),
    ("2012-03-12 1020", None),
    ("20120312T1020", 1331547600000),
    ("20120312 102030,5", 1331547630500),
    ("2012-100", 1333929600000),
    ("2012100", 1333929600000),
    ("2012-366", 1356912000000),
    ("2013-366", None),
    ("2012-W10", 1330905600000),
    ("2012-W10-3", 1331078400000),
    ("2012W103", 1331078400000),
    ("2015-W53-1", 1451260800000),
    ("2014-W53-1", None),
    ("2012-03T10:20", 1330597200000),
    ("2012T10", None),
    ("2012-02-30", None),
    ("2012-13-01", None),
    ("2012-03-12T24:00", 1331596800000),
    ("2012-03-12T24:01", None),
    ("2012-03-12T10:20+0545", 1331526900000),
    ("2012-03-12T10:20-03", 1331558400000),
    ("2012-03-12T10:20 Z", 1331547600000),
    ("-000001-01-01", -62198755200000),
    ("  2012-03-12", 1331510400000),
    ("+002012-03-12", 1331510400000),
    ("0050-01-01", -60589296000000),
    ("2012-03-12Z", 1331510400000),
    ("1", 978307200000),
    ("1992-9-7", 715824000000),
]


@pytest.mark.parametrize(("text", "expected"), MOMENT_UTC)
def test_as_moment_reads_it(text: str, expected: int | None) -> None:
    assert moment_parse(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("199708-06", 6240021667200000),        # V8 takes a six-digit year; Python's date cannot
    ("20052-07-13", 570629577600000),
    ("+275760-09-13", 8640000000000000),    # the last day JS dates reach
    ("+275760-09-14", None),
])
def test_years_beyond_pythons_date(text: str, expected: int | None) -> None:
    assert moment_parse(text) == expected

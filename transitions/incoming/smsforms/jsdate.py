"""`new Date(text).valueOf()` as Node.js (V8) computes it, for the texts SMS forms hand it.

CHT gives a date field's value to moment.js, and moment hands any text it cannot read as ISO
8601 to JavaScript's `Date` (its "input fallback"); the TextForms parser calls `new Date()`
directly. V8 reads far more than ISO there: `1` is 1 January 2001, `0` 1 January 2000, `99`
1 January 1999, `3,5` 5 March 2001, `001992-09-07` 7 September 1992, `2011-` 1 January 2011.
CHT stores those dates, so the worker must read them the same way.

This follows V8's documented date parser (src/date/dateparser*.h): first the ES5 ISO form
(`[+-yy]yyyy[-MM[-DD]][THH:mm[:ss[.sss]][Z|+hh:mm]]`, date-only UTC), and whatever is left after
it, or the whole text, by V8's legacy rules: numbers fill day fields (then `M/D/Y` or, when the
first is not a possible day, `Y/M/D`; two-digit years 0-49 → 20xx, 50-99 → 19xx), `n:` starts a
time, month names (first three letters) and am/pm, UTC/GMT/Z/EST… zones, `+hh[mm]` offsets after
a time, parentheses and other punctuation skipped, a word after a number refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from .jscompat import JS_WS_CHARS

_NONE: Final = None
_MAX_SIGNIFICANT_DIGITS: Final = 9
_JS_MAX_MS: Final = 8.64e15

# Keywords V8 knows, by their first three letters (only month names may be longer words).
_MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_ZONES: Final = {"utc": 0, "ut": 0, "gmt": 0, "z": 0, "edt": -4, "est": -5, "cdt": -5, "cst": -6,
                 "mdt": -6, "mst": -7, "pdt": -7, "pst": -8}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, symbol, keyword, space, unknown, end
    value: int | str | None = None
    length: int = 0
    keyword_type: str | None = None  # month, zone, t, ampm, None (an unknown word)


def _between(x: int, low: int, high: int) -> bool:
    return low <= x <= high


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if "0" <= ch <= "9":
            start = i
            value = 0
            while i < n and "0" <= text[i] <= "9":
                if i - start < _MAX_SIGNIFICANT_DIGITS:
                    value = value * 10 + ord(text[i]) - 48
                i += 1
            out.append(_Token("number", value, i - start))
        elif ch in ":-+.)":
            out.append(_Token("symbol", ch, 1))
            i += 1
        elif ch >= "A" and ch not in JS_WS_CHARS:
            start = i
            while i < n and text[i] >= "A" and text[i] not in JS_WS_CHARS:
                i += 1
            word = text[start:i]
            prefix = word[:3].lower() if word[:3].isascii() else word[:3]
            kind: str | None = None
            value: int | str | None = None
            if prefix in _MONTHS:
                kind, value = "month", _MONTHS.index(prefix) + 1
            elif len(word) <= 3 and prefix in _ZONES:
                kind, value = "zone", _ZONES[prefix]
            elif len(word) <= 3 and prefix == "t":
                kind = "t"
            elif len(word) <= 3 and prefix in ("am", "pm"):
                kind, value = "ampm", 0 if prefix == "am" else 12
            out.append(_Token("keyword", value, i - start, kind))
        elif ch in JS_WS_CHARS:
            start = i
            while i < n and text[i] in JS_WS_CHARS:
                i += 1
            out.append(_Token("space", None, i - start))
        elif ch == "(":
            depth = 0
            while i < n:
                if text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
            out.append(_Token("unknown"))
        else:
            out.append(_Token("unknown"))
            i += 1
    return out


class _Scanner:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._pos = 0

    def peek(self) -> _Token:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else _Token("end")

    def next(self) -> _Token:
        token = self.peek()
        self._pos += 1
        return token

    def skip_symbol(self, symbol: str) -> bool:
        if self.peek().kind == "symbol" and self.peek().value == symbol:
            self._pos += 1
            return True
        return False


def _is_number(token: _Token, length: int | None = None) -> bool:
    return token.kind == "number" and (length is None or token.length == length)


def _is_sign(token: _Token) -> bool:
    return token.kind == "symbol" and token.value in ("+", "-")


@dataclass
class _Day:
    comp: list[int] = field(default_factory=list)
    named_month: int | None = None
    iso: bool = False

    def add(self, n: int) -> bool:
        if len(self.comp) >= 3:
            return False
        self.comp.append(n)
        return True

    def write(self) -> tuple[int, int, int] | None:
        if not self.comp:
            return None
        comp = self.comp + [1] * (3 - len(self.comp))
        if self.named_month is None:
            if self.iso or not _between(comp[0], 1, 31):
                year, month, day = comp
            else:
                month, day, year = comp
        else:
            month = self.named_month
            if not _between(comp[0], 1, 31):
                year, day = comp[0], comp[1]
            else:
                day, year = comp[0], comp[1]
        if not self.iso:
            if _between(year, 0, 49):
                year += 2000
            elif _between(year, 50, 99):
                year += 1900
        if not _between(month, 1, 12) or not _between(day, 1, 31):
            return None
        return year, month, day


@dataclass
class _Time:
    comp: list[int] = field(default_factory=list)
    hour_offset: int | None = None

    def empty(self) -> bool:
        return not self.comp

    def expecting(self, n: int) -> bool:
        index = len(self.comp)
        return ((index == 1 and _between(n, 0, 59)) or (index == 2 and _between(n, 0, 59))
                or (index == 3 and _between(n, 0, 999)))

    def add(self, n: int) -> bool:
        if len(self.comp) >= 4:
            return False
        self.comp.append(n)
        return True

    def add_final(self, n: int) -> bool:
        if not self.add(n):
            return False
        self.comp += [0] * (4 - len(self.comp))
        return True

    def write(self) -> tuple[int, int, int, int] | None:
        hour, minute, second, ms = self.comp + [0] * (4 - len(self.comp))
        if self.hour_offset is not None:
            if not _between(hour, 0, 12):
                return None
            hour = hour % 12 + self.hour_offset
        if not (_between(hour, 0, 23) and _between(minute, 0, 59) and _between(second, 0, 59)
                and _between(ms, 0, 999)) and (hour, minute, second, ms) != (24, 0, 0, 0):
            return None
        return hour, minute, second, ms


@dataclass
class _Zone:
    sign: int | None = None
    hour: int | None = None
    minute: int | None = None

    def set(self, offset_hours: int) -> None:
        self.sign = -1 if offset_hours < 0 else 1
        self.hour = abs(offset_hours)
        self.minute = 0

    def expecting(self, n: int) -> bool:
        return self.hour is not None and self.minute is None and _between(n, 0, 59)

    def is_utc(self) -> bool:
        return self.hour == 0 and self.minute == 0

    def empty(self) -> bool:
        return self.hour is None

    def write(self) -> int | bool | None:
        """Offset in seconds, None for local time, False when invalid."""
        if self.sign is None:
            return None
        seconds = (self.hour or 0) * 3600 + (self.minute or 0) * 60
        if seconds > 2**30 - 1:
            return False
        return -seconds if self.sign < 0 else seconds


def _read_ms(token: _Token) -> int:
    number, length = int(token.value or 0), token.length
    if length == 1:
        return number * 100
    if length == 2:
        return number * 10
    length = min(length, _MAX_SIGNIFICANT_DIGITS)
    while length > 3:
        number //= 10
        length -= 1
    return number


_INVALID: Final = _Token("invalid")


def _parse_es5(scan: _Scanner, day: _Day, time: _Time, zone: _Zone) -> _Token:
    """V8's ES5 pass; returns the first token it leaves to the legacy pass (or end/invalid)."""
    if _is_sign(scan.peek()):
        sign_token = scan.next()
        if not _is_number(scan.peek(), 6):
            return sign_token
        year = int(scan.next().value or 0)
        if sign_token.value == "-" and year == 0:
            return sign_token
        day.add(-year if sign_token.value == "-" else year)
    elif _is_number(scan.peek(), 4):
        day.add(int(scan.next().value or 0))
    else:
        return scan.next()
    if scan.skip_symbol("-"):
        if not _is_number(scan.peek(), 2) or not _between(int(scan.peek().value or 0), 1, 12):
            return scan.next()
        day.add(int(scan.next().value or 0))
        if scan.skip_symbol("-"):
            if not _is_number(scan.peek(), 2) or not _between(int(scan.peek().value or 0), 1, 31):
                return scan.next()
            day.add(int(scan.next().value or 0))
    if scan.peek().keyword_type != "t":
        if scan.peek().kind != "end":
            return scan.next()
    else:
        scan.next()
        if not _is_number(scan.peek(), 2) or not _between(int(scan.peek().value or 0), 0, 24):
            return _INVALID
        hour_is_24 = scan.peek().value == 24
        time.add(int(scan.next().value or 0))
        if not scan.skip_symbol(":"):
            return _INVALID
        if (not _is_number(scan.peek(), 2) or not _between(int(scan.peek().value or 0), 0, 59)
                or (hour_is_24 and int(scan.peek().value or 0) > 0)):
            return _INVALID
        time.add(int(scan.next().value or 0))
        if scan.skip_symbol(":"):
            if (not _is_number(scan.peek(), 2) or not _between(int(scan.peek().value or 0), 0, 59)
                    or (hour_is_24 and int(scan.peek().value or 0) > 0)):
                return _INVALID
            time.add(int(scan.next().value or 0))
            if scan.skip_symbol("."):
                if not _is_number(scan.peek()) or (hour_is_24 and int(scan.peek().value or 0) > 0):
                    return _INVALID
                time.add(_read_ms(scan.next()))
        peek = scan.peek()
        if peek.kind == "keyword" and peek.keyword_type == "zone" and peek.length == 1:  # Z
            scan.next()
            zone.set(0)
        elif _is_sign(peek):
            zone.sign = 1 if scan.next().value == "+" else -1
            if _is_number(scan.peek(), 4):
                hourmin = int(scan.next().value or 0)
                if not _between(hourmin // 100, 0, 23) or not _between(hourmin % 100, 0, 59):
                    return _INVALID
                zone.hour, zone.minute = hourmin // 100, hourmin % 100
            else:
                if not _is_number(scan.peek(), 2) or not _between(int(scan.peek().value or 0), 0, 23):
                    return _INVALID
                zone.hour = int(scan.next().value or 0)
                if not scan.skip_symbol(":"):
                    return _INVALID
                if not _is_number(scan.peek(), 2) or not _between(int(scan.peek().value or 0), 0, 59):
                    return _INVALID
                zone.minute = int(scan.next().value or 0)
        if scan.peek().kind != "end":
            return _INVALID
    if zone.empty() and time.empty():
        zone.set(0)  # a date-only ISO form is UTC
    day.iso = True
    return _Token("end")


def _parse(text: str) -> tuple[tuple[int, int, int], tuple[int, int, int, int], int | None] | None:
    scan = _Scanner(_tokens(text))
    day, time, zone = _Day(), _Time(), _Zone()
    token = _parse_es5(scan, day, time, zone)
    if token.kind == "invalid":
        return None
    has_read_number = bool(day.comp)
    while token.kind != "end":
        if token.kind == "number":
            has_read_number = True
            n = int(token.value or 0)
            if scan.skip_symbol(":"):
                if scan.skip_symbol(":"):
                    if not time.empty():
                        return None
                    time.add(n)
                    time.add(0)
                else:
                    if not time.add(n):
                        return None
                    if scan.peek().kind == "symbol" and scan.peek().value == ".":
                        scan.next()
            elif scan.skip_symbol(".") and time.expecting(n):
                time.add(n)
                if not _is_number(scan.peek()):
                    return None
                time.add_final(_read_ms(scan.next()))
            elif zone.expecting(n):
                zone.minute = n
            elif time.expecting(n):
                time.add_final(n)
                peek = scan.peek()
                if not (peek.kind in ("end", "space") or _is_sign(peek)
                        or (peek.kind == "keyword" and peek.keyword_type == "zone" and peek.length == 1)):
                    return None
            else:
                if not day.add(n):
                    return None
                scan.skip_symbol("-")
        elif token.kind == "keyword":
            if token.keyword_type == "ampm" and not time.empty():
                time.hour_offset = int(token.value or 0)
            elif token.keyword_type == "month":
                day.named_month = int(token.value or 0)
                scan.skip_symbol("-")
            elif token.keyword_type == "zone" and has_read_number:
                zone.set(int(token.value or 0))
            else:
                if has_read_number:  # a word after a number: not a date
                    return None
                if _is_number(scan.peek()):
                    return None
        elif _is_sign(token) and (zone.is_utc() or not time.empty()):
            zone.sign = 1 if token.value == "+" else -1
            n, length = 0, 0
            if _is_number(scan.peek()):
                number = scan.next()
                n, length = int(number.value or 0), number.length
            has_read_number = True
            if scan.peek().kind == "symbol" and scan.peek().value == ":":
                zone.hour, zone.minute = n, None
            elif length in (1, 2):
                zone.hour, zone.minute = n, 0
            elif length in (3, 4):
                zone.hour, zone.minute = n // 100, n % 100
            else:
                return None
        elif (_is_sign(token) or (token.kind == "symbol" and token.value == ")")) and has_read_number:
            return None
        token = scan.next()
    ymd = day.write()
    hms = time.write()
    offset = zone.write()
    if ymd is None or hms is None or offset is False:
        return None
    return ymd, hms, offset  # type: ignore[return-value]


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, any year (JS dates reach ±275,760;
    Python's `date` stops at 9999). The day may run past the month's end, as in JS `MakeDay`."""
    y = year - (month <= 2)
    era = y // 400  # floor division: correct for negative years too
    yoe = y - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468 + day - 1


def local_ms(year: int, month: int, day: int, hour: int, minute: int, second: int, ms: int,
             offset_s: int | None, tz: tzinfo) -> int | None:
    """Epoch ms of a wall-clock time at a UTC offset (seconds), or in `tz` when None; None
    beyond JS's range (±8.64e15 ms)."""
    wall = ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + ms
    if offset_s is None:
        # The zone's offset at that wall time (for years Python cannot hold, at the nearest it can).
        probe_year = min(max(year, 1), 9999)
        try:
            probe = datetime(probe_year, month, 1) + timedelta(days=day - 1, hours=hour, minutes=minute)
        except (ValueError, OverflowError):
            probe = datetime(probe_year, 1, 1)
        offset = tz.utcoffset(probe.replace(tzinfo=None)) if tz is not UTC else None
        offset_s = int(offset.total_seconds()) if offset is not None else 0
    value = wall - offset_s * 1000
    return None if abs(value) > _JS_MAX_MS else value


def js_date_parse(text: str, tz: tzinfo = UTC) -> int | None:
    """`new Date(text).valueOf()` (V8); None where it is NaN. `tz` is the process's local zone."""
    parsed = _parse(text)
    if parsed is None:
        return None
    (year, month, day), (hour, minute, second, ms), offset = parsed
    return local_ms(year, month, day, hour, minute, second, ms, offset, tz)

"""Field types: each asserted through `parse_sms` with Muvuku or compact input."""

from zoneinfo import ZoneInfo

import pytest

from transitions.incoming.smsforms import parse_sms

# Literal dates in this file: parser vectors (a date field's text), not times the worker judges.
UTC_2012_03_12 = 1331510400000


def one(ftype, value, key="f", settings_extra=None, **field_extra):
    """Parse `1!F!<value>` for a one-field form and return the stored fields."""
    form = {"meta": {"code": "F"}, "fields": {key: {"type": ftype, **field_extra}}}
    settings = {"forms": {"F": form}, **(settings_extra or {})}
    return parse_sms(f"1!F!{value}", settings, reported_date_ms=0).fields


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12", 12), ("-3", -3), ("1.5", 1.5), ("१२", 12), ("1\u200d2", 12), ("abc", None),
     ("0x1A", 26), ("1e3", 1000), ("", None)],
)
def test_integer(value, expected):
    assert one("integer", value) == {"f": expected}


def test_integer_list_label_translated_in_settings_locale():
    options = [[1, {"en": "Yes", "fr": "Oui"}], [2, {"en": "No", "fr": "Non"}]]
    assert one("integer", "1", list=options) == {"f": "Yes"}
    assert one("integer", "2", list=options, settings_extra={"locale": "fr"}) == {"f": "Non"}
    assert one("integer", "3", list=options) == {"f": None}
    assert one("integer", "१", list=options) == {"f": None}  # lists compare raw text


def test_integer_list_message_locale_ignored():
    # Quirk: the message's locale does not choose the list label.
    form = {"meta": {"code": "F"}, "fields": {"f": {"type": "integer", "list": [[1, {
        "en": "Yes", "sw": "Ndiyo"}]]}}}
    result = parse_sms("1!F!1", {"forms": {"F": form}}, locale="sw", reported_date_ms=0)
    assert result.fields == {"f": "Yes"}


def test_string_and_string_list():
    assert one("string", "16A") == {"f": "16A"}
    assert one("string", "Faci\u200clity") == {"f": "Faci\u200clity"}  # not stripped
    options = [["m", "Male"], ["f", {"en": "Female"}]]
    assert one("string", "m", list=options) == {"f": "Male"}
    assert one("string", "f\u200b", list=options) == {"f": {"en": "Female"}}  # untranslated
    assert one("string", "x", list=options) == {"f": "x"}  # no match: raw kept


@pytest.mark.parametrize("key", ["patient_id", "place_id"])
def test_id_cleanup(key):
    assert one("string", "०३१77", key=key) == {key: "03177"}
    assert one("string", "012\u200c34", key=key) == {key: "01234"}


def test_id_from_full_textforms_is_text():
    form = {"meta": {"code": "OFF"}, "fields": {
        "patient_id": {"type": "string", "labels": {"tiny": {"en": "ID"}}},
        "reason": {"type": "string", "labels": {"tiny": {"en": "r"}}}}}
    result = parse_sms("OFF ID 12345", {"forms": {"OFF": form}}, locale="en", reported_date_ms=0)
    assert result.fields == {"patient_id": "12345"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("0", False), ("1\ufeff", True), ("१", True), ("2", None), ("yes", None)],
)
def test_boolean(value, expected):
    assert one("boolean", value) == {"f": expected}


def test_month_stays_a_number():
    assert one("month", "10") == {"f": 10}
    assert one("month", "x") == {"f": None}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2012-03-12", UTC_2012_03_12),
        ("20120312", UTC_2012_03_12),
        ("2012-03-12T10:00:00Z", UTC_2012_03_12 + 36000000),
        ("2012-03-12 10:00+01:00", UTC_2012_03_12 + 32400000),
        ("2012-03", 1330560000000),
        ("03/12/2012", UTC_2012_03_12),  # JS Date fallback: month first
        ("2012-02-30", None),  # moment rejects an overflowing day
        ("not a date", None),
    ],
)
def test_date(value, expected):
    assert one("date", value) == {"f": expected}


def test_date_is_local_time_of_tz():
    form = {"meta": {"code": "F"}, "fields": {"f": {"type": "date"}}}
    result = parse_sms("1!F!2012-03-12", {"forms": {"F": form}}, reported_date_ms=0,
                       tz=ZoneInfo("America/New_York"))
    assert result.fields == {"f": UTC_2012_03_12 + 4 * 3600000}  # EDT began 2012-03-11


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9841202020", "+9779841202020"),
        ("+9779841202020", "+9779841202020"),
        ("९८४१२३२३२३", "+9779841232323"),
        ("+९७७९८४१२३२३२३", "+9779841232323"),
        ("+918750660880", "+918750660880"),
        ("+254773087889", "+254773087889"),
        ("९८४१२३", "984123"),  # invalid: kept, digits standardised
        ("+97712312", "+97712312"),
    ],
)
def test_phone_number(value, expected):
    settings = {"default_country_code": 977, "phone_validation": "full"}
    assert one("phone_number", value, settings_extra=settings) == {"f": expected}


def test_unknown_type_keeps_raw_text():
    assert one("custom", "a b") == {"f": "a b"}


def test_dotted_keys_nest():
    form = {"meta": {"code": "D"}, "fields": {
        "a.b": {"type": "integer"}, "a.c": {"type": "string"}, "x.y.z": {"type": "string"}}}
    result = parse_sms("D 1 two three", {"forms": {"D": form}}, reported_date_ms=0)
    assert result.fields == {"a": {"b": 1, "c": "two"}, "x": {"y": {"z": "three"}}}


def test_dotted_required_missing():
    form = {"meta": {"code": "D"}, "fields": {
        "a.b": {"type": "integer", "required": True}, "a.c": {"type": "string"}}}
    result = parse_sms("D", {"forms": {"D": form}}, reported_date_ms=0)
    assert result.fields == {}
    assert result.errors[0]["code"] == "sys.missing_fields"


# --- Bikram Sambat ----------------------------------------------------------------------

BS_DATE = {"meta": {"code": "YYYT"}, "fields": {
    "patient_id": {"type": "string", "labels": {"tiny": "ID"}, "required": True},
    "lmp_date": {"type": "bsDate", "labels": {"tiny": "LMP_BS"}, "required": True}}}
BS_PARTS = {"meta": {"code": "YYYS"}, "fields": {
    "patient_id": {"type": "string", "labels": {"tiny": "ID"}},
    "lmp_year": {"type": "bsYear", "labels": {"tiny": "Y"}},
    "lmp_month": {"type": "bsMonth", "labels": {"tiny": "M"}},
    "lmp_day": {"type": "bsDay", "labels": {"tiny": "D"}},
    "lmp_date": {"type": "bsAggreDate", "labels": {"tiny": "LMP"}}}}
BS_YEAR_ONLY = {"meta": {"code": "YYYR"}, "fields": {
    "patient_id": {"type": "string", "labels": {"tiny": "ID"}},
    "lmp_year": {"type": "bsYear", "labels": {"tiny": "Y"}},
    "lmp_date": {"type": "bsAggreDate", "labels": {"tiny": "LMP"}}}}
SETTINGS = {"forms": {"YYYT": BS_DATE, "YYYS": BS_PARTS, "YYYR": BS_YEAR_ONLY}}


def bs(text):
    return parse_sms(text, SETTINGS, reported_date_ms=0).fields


def ms(iso):
    from datetime import UTC, datetime
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("YYYT 12345 2068-11-29", {"patient_id": "12345", "lmp_date": ms("2012-03-12")}),
        ("1!YYYT!12345#2068/11/29", {"patient_id": "12345", "lmp_date": ms("2012-03-12")}),
        ("YYYT 12345 २०७०-०१-०१", {"patient_id": "12345", "lmp_date": ms("2013-04-14")}),
        ("YYYT १2345 २०७7-०७-११", {"patient_id": "12345", "lmp_date": ms("2020-10-27")}),
        ("YYYT 12345 2068-11-32", {"patient_id": "12345", "lmp_date": None}),
        ("YYYT 12345 1969-01-01", {"patient_id": "12345", "lmp_date": None}),
        ("YYYT 12345 2091-01-01", {"patient_id": "12345", "lmp_date": None}),
        ("YYYT 12345 20681129", {"patient_id": "12345", "lmp_date": None}),
        # CHT's calendar data (npm bikram-sambat), not e.g. nepali-datetime's 2025-07-17.
        # bikram-sambat 1.8.1's months (what CHT stores), not the official calendar's
        ("YYYT 12345 2082-04-01", {"patient_id": "12345", "lmp_date": ms("2025-07-17")}),
        ("YYYT 12345 2082-03-32", {"patient_id": "12345", "lmp_date": ms("2025-07-16")}),
        ("YYYT 12345 2083-02-32", {"patient_id": "12345", "lmp_date": None}),
    ],
)
def test_bs_date(text, expected):
    assert bs(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("YYYS 12345 2068 11 29", {"patient_id": "12345", "lmp_year": "2068", "lmp_month": "11",
                                   "lmp_day": "29", "lmp_date": ms("2012-03-12")}),
        ("YYYS#ID 12345 #Y 2068 #M 11 #D 29", {
            "patient_id": "12345", "lmp_year": "2068", "lmp_month": "11", "lmp_day": "29",
            "lmp_date": ms("2012-03-12")}),
        ("YYYS ०३१77 २०८० १ १", {"patient_id": "03177", "lmp_year": "2080", "lmp_month": "1",
                                "lmp_day": "1", "lmp_date": ms("2023-04-14")}),
        ("YYYS ०३१77 २०70 08 १4", {"patient_id": "03177", "lmp_year": "2070",
                                  "lmp_month": "08", "lmp_day": "14",
                                  "lmp_date": ms("2013-11-29")}),
        ("YYYS 12345 123 11 29", {"patient_id": "12345", "lmp_year": "123", "lmp_month": "11",
                                  "lmp_day": "29", "lmp_date": None}),
        ("YYYS 12345", {"patient_id": "12345"}),
        ("YYYR 12345 2068", {"patient_id": "12345", "lmp_year": "2068",
                             "lmp_date": ms("2011-04-14")}),
    ],
)
def test_bs_parts(text, expected):
    assert bs(text) == expected


def test_bs_parts_missing_day_is_null():
    # Quirk: a bsDay field left out of the message is "undefined", not 1: no date.
    assert bs("YYYS 12345 2068 11") == {"patient_id": "12345", "lmp_year": "2068",
                                        "lmp_month": "11", "lmp_date": None}


def test_bs_parts_zero_width():
    assert bs("YYYS 12345 २०८\u200b० 1 1")["lmp_year"] == "2080"

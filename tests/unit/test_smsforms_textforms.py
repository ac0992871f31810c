"""Full and compact TextForms, parsed through `parse_sms` (the exact stored `fields`)."""

from zoneinfo import ZoneInfo

import pytest

from transitions.incoming.smsforms import parse_sms

# Literal dates in this file: parser vectors (a date field's text), not times the worker judges.
UTC_2012_03_12 = 1331510400000


def _field(ftype, tiny=None, short=None, **extra):
    labels = {}
    if tiny is not None:
        labels["tiny"] = tiny
    if short is not None:
        labels["short"] = short
    return {"type": ftype, "labels": labels, **extra}


YYYY = {
    "meta": {"code": "YYYY"},
    "fields": {
        "facility_id": _field("string", "HFI", required=True),
        "year": _field("integer", "RPY", required=True),
        "quantity_dispensed.cotrimoxazole": _field("integer", "CDT"),
        "quantity_dispensed.zinc": _field("integer", "ZDT"),
    },
}
ANCR = {
    "meta": {"code": "ANCR"},
    "fields": {
        "name": _field("string", "N", "Name"),
        "lmp": _field("integer", "LMP", "LMP"),
        "somedate": _field("date", "D", "Date"),
    },
}
N_FORM = {
    "meta": {"code": "N"},
    "fields": {
        "place_id": _field("string", {"en": "place_id"}, {"en": "HH ID"}, position=0),
        "gender": _field("string", {"en": "gender"}, {"en": "Gender"}, position=1),
        "age": _field("integer", {"en": "age"}, {"en": "Age"}, position=2),
        "patient_name": _field("string", {"en": "patient_name"}, position=3),
    },
}
R_FORM = {"meta": {"code": "R"}, "fields": {"name": _field("string", {"en": "n", "sw": "j"}, "Name")}}
NOTE = {"meta": {"code": "NOTE"}, "fields": {"text": _field("string", "T"), "day": _field("date", "D")}}


def fields_of(text, form, **kwargs):
    settings = {"forms": {form["meta"]["code"]: form}}
    return parse_sms(text, settings, reported_date_ms=0, **kwargs).fields


# --- full textforms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("YYYY#HFI!foobar#ZDT-999#RPY 2012", {"facility_id": "foobar", "year": 2012,
                                             "quantity_dispensed": {"zinc": 999}}),
        ("YYYY#HFI-foobar#ZDT-999#RPY--2012", {"facility_id": "foobar", "year": 2012,
                                              "quantity_dispensed": {"zinc": 999}}),
        ("YYYY CDT 33 #HFI foobar# ZDT 999 #RPY 2012", {
            "facility_id": "foobar", "year": 2012,
            "quantity_dispensed": {"cotrimoxazole": 33, "zinc": 999}}),
        ("YYYY CDT33#ZDT999#RPY2012", {"year": 2012,
                                      "quantity_dispensed": {"cotrimoxazole": 33, "zinc": 999}}),
        ("YYYY CDT33#HFI001#RPY2012", {"facility_id": "001", "year": 2012,
                                      "quantity_dispensed": {"cotrimoxazole": 33}}),
        ("YYYY hfi 01ach#rpy 2012", {"facility_id": "01ach", "year": 2012}),
        ("YYYY CDT33", {"quantity_dispensed": {"cotrimoxazole": 33}}),
    ],
)
def test_full_textforms(text, expected):
    assert fields_of(text, YYYY) == expected


def test_full_textforms_needs_hashes_between_pairs():
    # Without "#" the first label takes the rest; "33HFI foobar…" is no integer: null.
    assert fields_of("YYYY CDT 33 HFI foobar ZDT 999 RPY 2012", YYYY) == {
        "quantity_dispensed": {"cotrimoxazole": None}
    }


def test_full_textforms_two_bangs_make_a_plain_message():
    # Quirk: with two "!" the text is read as Muvuku-style for detection (code "FOOBAR#ZDT").
    result = parse_sms("YYYY#HFI!foobar#ZDT!999#RPY 2012", {"forms": {"YYYY": YYYY}},
                       reported_date_ms=0)
    assert (result.form, result.sms_form, result.fields) == (None, "FOOBAR#ZDT", {})


def test_full_textforms_devanagari_digits():
    assert fields_of("YYYY#HFI foobar#ZDT ९९९#RPY २०१२", YYYY) == {
        "facility_id": "foobar", "year": 2012, "quantity_dispensed": {"zinc": 999}}


def test_full_textforms_number_in_string_field_is_stored_as_number():
    # Quirk: TextForms types "12345" as a number, and a string field keeps it.
    assert fields_of("YYYY HFI 12345#RPY 2012", YYYY) == {"facility_id": 12345, "year": 2012}


def test_full_textforms_number_then_words_glued():
    # Quirk: a number followed by words is re-joined without the space, the number as typed
    # (CHT's numeric-type test never matches, so both halves stay text).
    assert fields_of("NOTE T 12 Main St", NOTE) == {"text": "12Main St"}
    assert fields_of("NOTE T 1.50 off", NOTE) == {"text": "1.50off"}


def test_full_textforms_leading_zero_stays_text():
    assert fields_of("NOTE T 012345", NOTE) == {"text": "012345"}


def test_full_textforms_decimal():
    assert fields_of("NOTE T 2.5", NOTE) == {"text": 2.5}


def test_full_textforms_iso_date_is_utc_midnight():
    kolkata = ZoneInfo("Asia/Kolkata")
    assert fields_of("NOTE D 2012-03-12", NOTE, tz=kolkata) == {"day": UTC_2012_03_12}


def test_full_textforms_slash_date_is_local_midnight():
    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+05:30
    assert fields_of("NOTE D 2012/03/12", NOTE, tz=kolkata) == {"day": UTC_2012_03_12 - 19800000}
    assert fields_of("NOTE D 2012-3-12", NOTE, tz=kolkata) == {"day": UTC_2012_03_12 - 19800000}


def test_full_textforms_date_in_string_field_becomes_epoch():
    assert fields_of("NOTE T 2012-03-12", NOTE) == {"text": UTC_2012_03_12}


def test_full_textforms_invalid_date_leaves_field_absent():
    # Quirk: an impossible date is NaN, which is falsy, so the field is dropped.
    assert fields_of("NOTE D 2012-13-45#T hi", NOTE) == {"text": "hi"}


def test_full_textforms_multiline_value_keeps_last_line_as_key():
    # Quirk: a value cannot run over a line break; the last word becomes the label.
    assert fields_of("NOTE T hello\nworld", NOTE) == {}
    # "T hello\nT again" is read as label "hello" with value "T again".
    assert fields_of("NOTE D 2012-03-12#T hello\nT again", NOTE) == {"day": UTC_2012_03_12}


def test_full_textforms_repeated_label_makes_a_list():
    assert fields_of("NOTE T one#T two", NOTE) == {"text": ["one", "two"]}


def test_full_textforms_whitespace_everywhere():
    form = {"meta": {"code": "ABCD"}, "fields": {
        "q": _field("integer", "q", list=[[0, "Yes"], [1, "No"]]),
        "name": _field("string", "name")}}
    assert fields_of("\t\n ABCD\t\n  Q \t\n 0 \t\n# \t\n Name John Smith\n \t", form) == {
        "q": "Yes", "name": "John Smith"}


def test_full_textforms_label_in_message_locale():
    assert fields_of("R j jane", R_FORM, locale="sw") == {"name": "jane"}
    assert fields_of("r J jane", R_FORM, locale="sw") == {"name": "jane"}


def test_full_textforms_tiny_label_translation_key():
    form = {"meta": {"code": "R"}, "fields": {"name": _field("string", "form.r.name.tiny")}}
    tr = {"sw": {"form.r.name.tiny": "J"}}
    assert fields_of("R j jane", form, locale="sw", translations=tr) == {"name": "jane"}


def test_mixed_case_field_keys():
    form = {"meta": {"code": "R"}, "fields": {"ooOoo": _field("string", "n")}}
    assert fields_of("R n jane", form) == {"ooOoo": "jane"}
    assert fields_of("R jane", form) == {"ooOoo": "jane"}


# --- compact textforms ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ANCR sarah 24 2012-03-12", {"name": "sarah", "lmp": 24, "somedate": UTC_2012_03_12}),
        ("ANCR#sarah", {"name": "sarah"}),
        ("ANCR!sarah", {"name": "sarah"}),
        ("ANCR-sarah", {"name": "sarah"}),
        ('ANCR "Sarah Connor" 24 2012-03-12', {"name": "Sarah Connor", "lmp": 24,
                                              "somedate": UTC_2012_03_12}),
        ('ANCR "Sarah "killer bee" Connor" 24 2012-03-12', {
            "name": 'Sarah "killer bee" Connor', "lmp": 24, "somedate": UTC_2012_03_12}),
        ('ANCR "Sarah Connor" 24', {"name": "Sarah Connor", "lmp": 24}),
        ('ANCR "Sarah Connor" 24 2012-03-12 comment', {
            "name": "Sarah Connor", "lmp": 24, "somedate": UTC_2012_03_12}),
        ("ANCR sarah abc 2012-03-12", {"name": "sarah", "lmp": None, "somedate": UTC_2012_03_12}),
    ],
)
def test_compact(text, expected):
    assert fields_of(text, ANCR) == expected


def test_compact_date_is_local_midnight():
    kolkata = ZoneInfo("Asia/Kolkata")
    assert fields_of("ANCR sarah 24 2012-03-12", ANCR, tz=kolkata)["somedate"] == (
        UTC_2012_03_12 - 19800000
    )


def test_compact_last_string_takes_rest():
    assert fields_of("N 12345 F 20 Jane Cho", N_FORM) == {
        "place_id": "12345", "gender": "F", "age": 20, "patient_name": "Jane Cho"}


def test_compact_uses_field_order_not_position():
    # Quirk: `position` is ignored; the JSON order of `fields` decides.
    form = {"meta": {"code": "X"}, "fields": {
        "b": _field("string", position=1), "a": _field("integer", position=0)}}
    assert fields_of("X hello 5", form) == {"b": "hello", "a": 5}


def test_compact_name_starting_with_tiny_label():
    form = {"meta": {"code": "R"}, "fields": {"name": _field("string", "N", "Name")}}
    assert fields_of("R North West", form) == {"name": "North West"}


def test_compact_label_followed_by_digit_is_full_textforms():
    form = {"meta": {"code": "R"}, "fields": {"name": _field("string", "N", "Name")}}
    assert fields_of("R N5 Jane", form) == {"name": "5Jane"}


def test_compact_label_of_other_locale():
    assert fields_of("R n jane", R_FORM, locale="sw") == {"name": "n jane"}


def test_compact_without_meta_code_keeps_code_as_value():
    form = {"meta": {}, "fields": {"a": _field("string", "A"), "b": _field("string", "B")}}
    settings = {"forms": {"X": form}}
    assert parse_sms("X one two", settings, reported_date_ms=0).fields == {"a": "X", "b": "one two"}


def test_compact_non_ascii_code():
    form = {"meta": {"code": "ग"}, "fields": {"foo": _field("string", "foo", "foo")}}
    settings = {"forms": {"ग": form}}
    assert parse_sms("ग 16A", settings, reported_date_ms=0).fields == {"foo": "16A"}
    assert parse_sms("ग foo 16A", settings, reported_date_ms=0).fields == {"foo": "16A"}
    assert parse_sms("1!ग!16A", settings, reported_date_ms=0).fields == {"foo": "16A"}

"""`parse_sms` as a whole: form/plain message, errors, locale, refid, reported_date."""

import pytest

from tests.support.cht_translations import by_locale
from transitions.incoming.smsforms import SmsParseResult, parse_sent_timestamp, parse_sms

FORM = {"meta": {"code": "FORM"}, "fields": {"some_data": {"type": "string", "position": 0}}}
N_FORM = {
    "meta": {"code": "N", "label": {"en": "New Person Registration"}},
    "fields": {
        "place_id": {"labels": {"tiny": {"en": "place_id"}, "short": {"en": "HH ID"}},
                     "position": 0, "type": "string", "length": [1, 13], "required": True},
        "gender": {"labels": {"tiny": {"en": "gender"}, "short": {"en": "Gender"}},
                   "position": 1, "type": "string", "length": [1, 6], "required": True},
        "age": {"labels": {"tiny": {"en": "age"}, "short": {"en": "Age"}},
                "position": 2, "type": "integer", "length": [1, 2], "required": True},
        "patient_name": {"labels": {"tiny": {"en": "patient_name"}},
                         "position": 3, "type": "string", "length": [3, 30], "required": True},
    },
}
REF = {"meta": {"code": "REF"}, "facility_reference": "rc",
       "fields": {"rc": {"type": "string"}, "n": {"type": "integer"}}}
SETTINGS = {"forms": {"FORM": FORM, "N": N_FORM, "REF": REF}, "locale": "en"}
# A fixed receipt time handed to the parser (an injected clock); the dates below are parser vectors.
NOW = 1700000000000


def parse(text, settings=SETTINGS, **kwargs):
    kwargs.setdefault("reported_date_ms", NOW)
    kwargs.setdefault("translations", by_locale())  # CHT's shipped messages-* docs
    return parse_sms(text, settings, **kwargs)


def test_form_the_data():
    result = parse("FORM the data")
    assert result == SmsParseResult(
        form="FORM", fields={"some_data": "the data"}, errors=[], locale="en",
        reported_date_ms=NOW, sms_form="FORM", sms_locale=None)
    assert result.doc_updates() == {
        "form": "FORM", "fields": {"some_data": "the data"}, "errors": [], "reported_date": NOW}
    assert result.sms_message_updates() == {"form": "FORM"}


def test_registration_like_cht():
    result = parse("N 12345 F 20 Jane Cho", locale="en")
    assert result.doc_updates() == {
        "form": "N",
        "fields": {"place_id": "12345", "gender": "F", "age": 20, "patient_name": "Jane Cho"},
        "errors": [],
        "reported_date": NOW,
    }
    assert result.sms_message_updates() == {"form": "N", "locale": "en"}


def test_length_limits_are_not_checked_at_parse_time():
    # CHT's api only checks `required`; `length` is for sentinel's validations.
    result = parse("N 1234567890123456 Female 200 Jo")
    assert result.errors == []
    assert result.fields["gender"] == "Female"


def test_plain_message():
    result = parse("hello world! anyone there?")
    assert (result.form, result.fields, result.errors) == (None, {}, [])
    assert result.sms_form == "HELLO"  # CHT keeps the read code on sms_message
    assert "form" not in result.doc_updates()


def test_unknown_code_in_forms_only_mode():
    settings = {**SETTINGS, "forms_only_mode": True}
    result = parse("foo bar baz", settings)
    assert (result.form, result.fields) == ("FOO", {})
    assert result.errors == [{"code": "sys.form_not_found", "message": "Form 'FOO' not found."}]


@pytest.mark.parametrize("text", ["", " ", "\t\n", "\ufeff"])
def test_empty_message(text):
    result = parse(text)
    assert (result.form, result.sms_form, result.fields) == (None, None, {})
    assert result.errors == [{"code": "sys.empty", "message": "Message appears empty."}]


def test_empty_message_in_forms_only_mode():
    result = parse(" ", {**SETTINGS, "forms_only_mode": True})
    assert result.errors == [
        {"code": "sys.empty", "message": "Message appears empty."},
        {"code": "sys.form_not_found", "message": "Form '' not found."},
    ]


def test_missing_fields_error_shape():
    # CHT >= 3.5: the field list is rendered into the message (comma-separated), no `fields` key.
    result = parse("N 12345 F")
    assert result.fields == {"place_id": "12345", "gender": "F"}
    assert result.errors == [{
        "code": "sys.missing_fields", "message": "Missing or invalid fields: age,patient_name."}]


def test_non_number_counts_as_missing_required():
    result = parse("N 12345 F old Jane")
    assert result.fields["age"] is None
    assert result.errors == [{"code": "sys.missing_fields", "message": "Missing or invalid fields: age."}]


def test_error_messages_translated_in_record_locale():
    translations = {
        "fr": {"sys.form_not_found": "Formulaire '{{form}}' non trouvé",
               "sys.missing_fields": "Champs manquants: {{fields}}."},
        "en": {"sys.form_not_found": "Form '{{form}}' not found.",
               "sys.missing_fields": "Missing or invalid fields: {{fields}}."},
    }
    settings = {**SETTINGS, "forms_only_mode": True, "locale": "fr"}
    result = parse("XYZ 1", settings, translations=translations)
    assert result.locale == "fr"
    assert result.errors[0]["message"] == "Formulaire 'XYZ' non trouvé"
    result = parse("N 1", settings, translations=translations, locale="en")
    assert (result.locale, result.errors[0]["message"]) == (
        "en", "Missing or invalid fields: gender,age,patient_name.")


def test_settings_translations_are_not_read():
    # CHT 4.x reads texts only from the messages-* docs, never from app settings.
    settings = {**SETTINGS, "forms_only_mode": True,
                "translations": {"en": {"sys.form_not_found": "No form {{form}}"}}}
    assert parse("XYZ 1", settings).errors[0]["message"] == "Form 'XYZ' not found."


def test_without_translation_docs_the_text_is_the_key():
    assert parse("XYZ 1", {**SETTINGS, "forms_only_mode": True}, translations=None).errors == [
        {"code": "sys.form_not_found", "message": "sys.form_not_found"}]


def test_locale_field_wins():
    form = {"meta": {"code": "L"}, "fields": {"locale": {"type": "string"},
                                              "x": {"type": "integer", "required": True}}}
    result = parse("L sw", {"forms": {"L": form}, "locale": "fr"}, locale="en")
    assert result.locale == "sw"


@pytest.mark.parametrize(
    ("settings_locale", "sms_locale", "expected"),
    [(None, None, "en"), ("fr", None, "fr"), ("fr", "sw", "sw")],
)
def test_locale_fallbacks(settings_locale, sms_locale, expected):
    settings = {"forms": {}} | ({"locale": settings_locale} if settings_locale else {})
    assert parse("hi", settings, locale=sms_locale).locale == expected


def test_refid_upper_cased():
    result = parse("REF abc12 5")
    assert (result.has_refid, result.refid) == (True, "ABC12")
    assert result.doc_updates()["refid"] == "ABC12"


def test_refid_absent_when_no_value():
    result = parse("REF")
    assert result.has_refid is False
    assert "refid" not in result.doc_updates()


def test_refid_null_from_empty_muvuku_value():
    result = parse("1!REF!#5")
    assert (result.has_refid, result.refid, result.fields) == (True, None, {"rc": None, "n": 5})


def test_refid_keeps_number_type():
    form = {"meta": {"code": "R2"}, "facility_reference": "rc",
            "fields": {"rc": {"type": "string", "labels": {"tiny": "RC"}}}}
    assert parse("R2 RC 42", {"forms": {"R2": form}}).refid == 42


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (None, NOW),
        (1352399720000, 1352399720000),
        ("1352399720000", 1352399720000),
        ("2012-11-08T18:35:20.000Z", 1352399720000),
        ("ts:1352399720000", NOW),  # contains 13 digits, but Number() of it is NaN
        ("garbage", NOW),
        (0, NOW),
    ],
)
def test_reported_date(sent, expected):
    assert parse("hi", sent_timestamp=sent).reported_date_ms == expected


def test_parse_sent_timestamp_local_date():
    assert parse_sent_timestamp("2012-11-08 18:35") == 1352399700000


def test_zero_width_characters_cht_example():
    yyyy = {"meta": {"code": "YYYY"}, "fields": {
        "facility_id": {"type": "string"}, "year": {"type": "integer"},
        "month": {"type": "integer", "list": [[12, {"en": "December"}]]},
        "misoprostol_administered": {"type": "boolean"}}}
    text = "YY\u200bYY Faci\u200clity 19\u200c99 1\u200d2 1\ufeff"
    result = parse(text, {"forms": {"YYYY": yyyy}})
    assert result.form == "YYYY"
    assert result.sms_form == "YYYY"
    assert result.fields == {"facility_id": "Faci\u200clity", "year": 1999, "month": "December",
                             "misoprostol_administered": True}


def test_zero_width_lower_case_code_quirk():
    # Quirk: the code is found but not removed, so it becomes the first compact value.
    form = {"meta": {"code": "AB"}, "fields": {"x": {"type": "string"}, "y": {"type": "string"}}}
    result = parse("a\u200bb hello there", {"forms": {"AB": form}})
    assert (result.form, result.fields) == ("AB", {"x": "a\u200bb", "y": "hello there"})


def test_settings_without_forms():
    result = parse("FORM x", {})
    assert (result.form, result.fields, result.errors) == (None, {}, [])

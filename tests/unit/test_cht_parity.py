"""Each difference from CHT found against its own stored docs (issue: SMS forms parity), as
small named cases. The figures were read from CHT Core's records.createByForm (5.x, TZ=UTC)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from config.settings import parse_settings
from tests.support.cht_translations import cht_translations
from transitions.cht.translations import Translations, translations_from_docs
from transitions.incoming.record import IncomingMessage, Invalid, build_record, parse_webhook_body
from transitions.incoming.smsforms.bsdate import bs_to_epoch

N_FORM = {"meta": {"code": "N"}, "fields": {
    "patient_name": {"labels": {"tiny": "N"}, "type": "string", "required": True}}}
NP_FORM = {"meta": {"code": "NP"}, "fields": {
    "patient_age": {"labels": {"tiny": "A"}, "type": "integer"},
    "phone_number": {"labels": {"tiny": "P"}, "type": "phone_number"}}}
BS_FORM = {"meta": {"code": "YYYT"}, "fields": {
    "patient_id": {"labels": {"tiny": "ID"}, "type": "string", "required": True},
    "lmp_date": {"labels": {"tiny": "LMP_BS"}, "type": "bsDate", "required": True}}}
DATE_FORM = {"meta": {"code": "D"}, "fields": {
    "patient_id": {"labels": {"tiny": "ID"}, "type": "string", "required": True},
    "lmp": {"labels": {"tiny": "LMP"}, "type": "date", "required": True}}}
NOTE_FORM = {"meta": {"code": "NOTE"}, "fields": {
    "patient_id": {"labels": {"tiny": "ID"}, "type": "string"},
    "notes": {"labels": {"tiny": "T"}, "type": "string"}}}
FORMS = {"N": N_FORM, "NP": NP_FORM, "YYYT": BS_FORM, "D": DATE_FORM, "NOTE": NOTE_FORM}


def record(text: str, locale: str = "en", sender: str = "+9779841234567", country: int = 977,
           translations: Translations | None = None, **app: Any) -> dict[str, Any]:
    settings = parse_settings({"settings": {"forms": FORMS, "locale": locale,
                                            "default_country_code": country, **app}})
    return build_record(IncomingMessage(id="rp-1", sender=sender, content=text), settings, 1000,
                        translations=translations or cht_translations())


# 1. ------------------------------------------------------------------- sms_message.locale
def test_1_no_locale_in_sms_message_whatever_the_settings_locale() -> None:
    for locale in ("en", "fr", "ne"):
        assert "locale" not in record("N Sita", locale=locale)["sms_message"]


# 2. ------------------------------------------------------------------ sys.missing_fields
def test_2_missing_fields_rendered_into_the_message_without_a_fields_key() -> None:
    assert record("N")["errors"] == [
        {"code": "sys.missing_fields", "message": "Missing or invalid fields: patient_name."}]


def test_2_several_missing_fields_are_comma_separated() -> None:
    assert record("YYYT")["errors"] == [
        {"code": "sys.missing_fields", "message": "Missing or invalid fields: patient_id,lmp_date."}]


# 3. ------------------------------------------------------------------ sys.incorrect_type
def test_3_a_fraction_in_an_integer_field_is_kept_and_reported() -> None:
    doc = record("NP .5")
    assert doc["fields"]["patient_age"] == 0.5
    assert doc["errors"] == [{"code": "sys.incorrect_type",
                              "message": "Incorrect type of field patient_age, expected integer."}]


def test_3_a_number_in_a_string_field_is_reported() -> None:
    doc = record("NOTE ID 42#T 7")
    assert doc["fields"] == {"patient_id": "42", "notes": 7}  # IDs are always text
    assert doc["errors"] == [{"code": "sys.incorrect_type",
                              "message": "Incorrect type of field notes, expected string."}]


def test_3_incorrect_types_come_before_missing_fields() -> None:
    form = {"meta": {"code": "X"},
            "fields": {"a": {"type": "integer"}, "b": {"type": "string", "required": True}}}
    settings = parse_settings({"settings": {"forms": {"X": form}}})
    doc = build_record(IncomingMessage("1", "+9779841234567", "X 1.5"), settings, 1,
                       translations=cht_translations())
    assert [e["code"] for e in doc["errors"]] == ["sys.incorrect_type", "sys.missing_fields"]


# Literal dates below: calendar and parser vectors measured on CHT; no clock is read.
# 4. ------------------------------------------------------------------ Bikram Sambat
def test_4_bs_2081_chaitra_as_bikram_sambat_1_8_1_counts_it() -> None:
    assert record("YYYT 2 2081-12-2")["fields"]["lmp_date"] == 1741996800000  # 2025-03-15


def test_4_bs_2081_chaitra_has_31_days() -> None:
    doc = record("YYYT 2 2081-12-31")
    assert doc["fields"]["lmp_date"] == 1744502400000  # 2025-04-13
    assert doc["errors"] == []


@pytest.mark.parametrize(("bs", "greg"), [
    ("2082-03-32", "2025-07-16"), ("2082-04-01", "2025-07-17"), ("2083-01-01", "2026-04-14"),
])
def test_4_current_nepali_years(bs: str, greg: str) -> None:
    expected = int(datetime.fromisoformat(greg + "T00:00+00:00").timestamp() * 1000)
    assert bs_to_epoch(*bs.split("-")) == expected


def test_4_a_day_past_the_months_end_is_null_and_missing() -> None:
    doc = record("YYYT 2 2083-02-32")
    assert doc["fields"]["lmp_date"] is None
    assert doc["errors"][0]["message"] == "Missing or invalid fields: lmp_date."


# 5. ------------------------------------------------------------------ invalid required date
def test_5_an_invalid_required_date_is_null_but_not_missing() -> None:
    doc = record("D 12345 2020-02-30")
    assert doc["fields"] == {"patient_id": "12345", "lmp": None}
    assert doc["errors"] == []
    assert "NaN" not in json.dumps(doc)  # stored as null, as JSON.stringify does


def test_5_a_missing_day_in_a_bs_date_is_null_but_not_missing() -> None:
    doc = record("YYYT 2 2081-12")
    assert doc["fields"]["lmp_date"] is None
    assert doc["errors"] == []


# 6. ------------------------------------------------------------------ translated errors
def test_6_french_deployment() -> None:
    assert record("N", locale="fr")["errors"] == [
        {"code": "sys.missing_fields", "message": "Champs invalides ou manquants: patient_name."}]


def test_6_nepali_deployment() -> None:
    message = record("N", locale="ne")["errors"][0]["message"]
    assert message == cht_translations().by_locale["ne"]["sys.missing_fields"].replace(
        "{{fields}}", "patient_name")


def test_6_a_deployments_custom_text_wins() -> None:
    docs = [{**doc, "custom": {"sys.missing_fields": "Tuma tena: {{fields}}"}} if doc["code"] == "sw"
            else doc for doc in cht_translations().docs.values()]
    assert record("N", locale="sw", translations=translations_from_docs(docs))["errors"][0][
        "message"] == "Tuma tena: patient_name"


def test_6_a_locale_without_the_key_falls_back_to_english_then_to_the_key() -> None:
    translations = Translations().with_doc(
        {"_id": "messages-en", "type": "translations", "code": "en",
         "generic": {"sys.missing_fields": "Missing: {{fields}}"}})
    assert record("N", locale="xx", translations=translations)["errors"][0]["message"] == \
        "Missing: patient_name"
    assert record("NP 1.5", locale="xx", translations=translations)["errors"][0]["message"] == \
        "sys.incorrect_type"


# 7. ------------------------------------------------------------------ TextForms values
def test_7_number_then_text_is_kept_as_typed() -> None:
    assert record("NOTE ID 3.10 ml#T 2.50 kg")["fields"] == {"patient_id": "3.10ml", "notes": "2.50kg"}


def test_7_a_repeated_label_keeps_every_value() -> None:
    assert record("NOTE T Sita#T Sita#ID 1")["fields"]["notes"] == ["Sita", "Sita"]


def test_7_a_number_right_after_the_label_is_a_number() -> None:
    assert record("NOTE ID 042#T 3.10")["fields"] == {"patient_id": "042", "notes": 3.1}


# 8. ------------------------------------------------------------------ JavaScript's Date
@pytest.mark.parametrize(("value", "stored"), [
    ("1", 978307200000),             # 2001-01-01: V8 reads a lone number as a month (year 2001)
    ("0", 946684800000),             # 2000-01-01: not a month, so a two-digit year
    ("99", 915148800000),            # 1999-01-01
    ("001992-09-07", 715824000000),  # a six-digit year
    ("3,5", 983750400000),           # 2001-03-05
    ("2011-", 1293840000000),        # 2011-01-01
    ("13", None),                    # not a month, not a year V8 takes: NaN, stored null
])
def test_8_dates_moment_hands_to_javascript(value: str, stored: int | None) -> None:
    assert record(f"D 12345 {value}")["fields"]["lmp"] == stored


# 9. ------------------------------------------------------------------ blank content or sender
def test_9_whitespace_only_content_is_stored_with_sys_empty() -> None:
    body = {"id": "1", "from": "+9779841234567", "content": "  \n"}
    message = parse_webhook_body(json.dumps(body).encode())
    assert isinstance(message, IncomingMessage)
    settings = parse_settings({"settings": {"forms": FORMS}})
    doc = build_record(message, settings, 1, translations=cht_translations())
    assert doc["errors"] == [{"code": "sys.empty", "message": "Message appears empty."}]


def test_9_whitespace_only_sender_is_stored_raw() -> None:
    message = parse_webhook_body(json.dumps({"id": "1", "from": " ", "content": "N Sita"}).encode())
    assert isinstance(message, IncomingMessage)
    assert record("N Sita", sender=" ")["from"] == " "


@pytest.mark.parametrize("name", ["id", "from", "content"])
def test_9_an_empty_value_is_still_refused_as_cht_refuses_it(name: str) -> None:
    body = {"id": "1", "from": "+9779841234567", "content": "x", name: ""}
    assert parse_webhook_body(json.dumps(body).encode()) == Invalid(f"empty_{name}")


# Senders in Devanagari digits ------------------------------------------------------------
def test_a_sender_in_devanagari_digits_is_kept_raw_as_cht_does() -> None:
    # CHT's google-libphonenumber does not read Devanagari digits; Python's phonenumbers does.
    assert record("N Sita", sender="९८४१२३४५६७")["from"] == "९८४१२३४५६७"
    assert record("N Sita", sender="٩٨٤١٢٣٤٥٦٧")["from"] == "+9779841234567"  # Arabic-Indic: both read


# Muvuku and a non-object field ------------------------------------------------------------
def test_a_muvuku_value_for_a_non_object_field_is_filed_under_no_field() -> None:
    form = {"meta": {"code": "YYYX"}, "fields": {
        "id": {"type": "string"}, "foo": {"type": "string"}, "facility_reference": "id",
        "facility_required": True}}
    settings = parse_settings({"settings": {"forms": {"YYYX": form}}})
    doc = build_record(IncomingMessage("1", "+9779841234567", "1!YYYX!1#Jane#Mary#Li"), settings, 1,
                       translations=cht_translations())
    assert doc["fields"] == {"id": "1", "foo": "Jane"}
    assert doc["errors"] == []


def test_9_reconciliation_keeps_blank_texts_as_the_webhook_does() -> None:
    from worker.incoming.reconcile import message_from_api
    item = {"uuid": "u-1", "direction": "in", "urn": "tel:+9779841234567", "text": " "}
    assert message_from_api(item) == IncomingMessage(id="u-1", sender="+9779841234567", content=" ")
    assert message_from_api({**item, "text": ""}) is None


@pytest.mark.parametrize(("raw", "country", "validation", "stored"), [
    ("87937", 254, "none", "87937"),      # a valid Kenyan short code: national format, as CHT
    (" 131463", 44, "partial", "131463"),
    ("0712345678", 254, "none", "+254712345678"),
])
def test_a_valid_short_number_is_formatted_nationally_as_cht_does(
        raw: str, country: int, validation: str, stored: str) -> None:
    from transitions.cht.phone import normalise_phone
    assert normalise_phone(raw, country, validation) == stored

"""Pure tests of transitions/incoming/record.py: body validation, doc ids and the CHT record."""

from __future__ import annotations

import json
import uuid

import pytest

from config.settings import parse_settings
from tests.support.couch_fixtures import load_example_settings
from transitions.incoming.record import (
    IncomingMessage,
    Invalid,
    ParsedSms,
    build_record,
    doc_id_for,
    get_form_code,
    parse_webhook_body,
    plain_message,
)

SETTINGS = parse_settings({"settings": load_example_settings()})  # default_country_code 254, form FORM


def body(**values: object) -> bytes:
    return json.dumps(values).encode()


# ---------------------------------------------------------------------------- body validation
def test_a_valid_body_is_read() -> None:
    parsed = parse_webhook_body(body(id="abc", **{"from": "+254712345678"}, content="hello"))
    assert parsed == IncomingMessage(id="abc", sender="+254712345678", content="hello")


def test_extra_keys_are_ignored_and_utf8_text_kept() -> None:
    raw = '{"id": "1", "from": "0712345678", "content": "habari 👋 é", "flow": {"x": 1}}'.encode()
    parsed = parse_webhook_body(raw)
    assert isinstance(parsed, IncomingMessage) and parsed.content == "habari 👋 é"


def test_a_utf8_bom_is_tolerated() -> None:
    assert isinstance(parse_webhook_body(b"\xef\xbb\xbf" + body(id="1", content="x", **{"from": "1"})),
                      IncomingMessage)


@pytest.mark.parametrize("name", ["id", "from", "content"])
@pytest.mark.parametrize(("value", "reason"), [
    (None, "missing"), ("", "empty"), (12, "invalid"), (["x"], "invalid"),
    ({"a": 1}, "invalid"), (True, "invalid"),
])
def test_each_field_must_be_a_non_empty_string(name: str, value: object, reason: str) -> None:
    values: dict[str, object] = {"id": "1", "from": "+254712345678", "content": "hello"}
    if value is None:
        del values[name]
    else:
        values[name] = value
    assert parse_webhook_body(json.dumps(values).encode()) == Invalid(f"{reason}_{name}")


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "not_json"),
    (b"{", "not_json"),
    (b"id=1&from=2&content=3", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'"text"', "not_object"),
    (b"42", "not_object"),
    (b"null", "not_object"),
    (b'{"id": "\xff\xfe", "from": "1", "content": "x"}', "not_utf8"),
    ('{"id": "1", "from": "1", "content": "x"}'.encode("utf-16"), "not_utf8"),
    (b"[" * 100_000 + b"]" * 100_000, "not_json"),
    (b'{"id": "\\ud800", "from": "1", "content": "x"}', "invalid_id"),
])
def test_bad_bodies_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    assert parse_webhook_body(raw) == Invalid(reason)


# ---------------------------------------------------------------------------- doc ids
@pytest.mark.parametrize("rapidpro_id", [
    "abc", "4105426", "0199bb98-3637-778d-9dfc-0ab85c950d7c", "_design/x", "_local", "a/b?c#d",
    "é" * 500, " spaced ", "\x00",
])
def test_doc_ids_are_deterministic_valid_and_never_start_with_an_underscore(rapidpro_id: str) -> None:
    doc_id = doc_id_for(rapidpro_id)
    assert doc_id == doc_id_for(rapidpro_id)
    assert not doc_id.startswith("_")
    assert str(uuid.UUID(doc_id)) == doc_id  # plain hex and dashes: safe in any URL


def test_different_ids_get_different_doc_ids() -> None:
    ids = ["1", "01", "1 ", "a", "A", "abc", "0199bb98-3637-778d-9dfc-0ab85c950d7c"]
    assert len({doc_id_for(i) for i in ids}) == len(ids)


def test_doc_ids_are_stable_across_releases() -> None:
    # A repeat after an upgrade must meet the doc stored before it.
    assert doc_id_for("0199bb98-3637-778d-9dfc-0ab85c950d7c") == "cc66d942-4cc5-5599-9b3d-c70e13b8c11e"
    assert doc_id_for("abc") == str(uuid.uuid5(uuid.UUID("0f8b7a9c-3d52-5e1b-9c47-6a1d2e5f8b30"),
                                               "rapidpro:abc"))


# ---------------------------------------------------------------------------- the record
def test_a_plain_message_is_stored_as_cht_stores_it() -> None:
    message = IncomingMessage(id="rp-1", sender="0712345678", content="Hello there")
    # An injected receipt time: the record must carry exactly it.
    record = build_record(message, SETTINGS, 1_764_000_000_123)
    assert record == {
        "_id": doc_id_for("rp-1"),
        "type": "data_record",
        "from": "+254712345678",
        "errors": [],
        "tasks": [],
        "fields": {},
        "reported_date": 1_764_000_000_123,
        "sms_message": {
            "type": "sms_message",
            "message": "Hello there",
            "form": "HELLO",  # CHT's getFormCode, even for a plain message
            "from": "0712345678",
            "gateway_ref": "rp-1",
        },
    }
    assert "form" not in record


@pytest.mark.parametrize(("sender", "stored"), [
    ("+254712345678", "+254712345678"),
    ("254712345678", "+254712345678"),
    ("0712 345 678", "+254712345678"),
    ("SAFARICOM", "SAFARICOM"),  # not a phone number: kept raw
    ("12", "12"),
    ("whatsapp:254712345678", "whatsapp:254712345678"),
])
def test_from_is_normalised_or_kept_raw(sender: str, stored: str) -> None:
    record = build_record(IncomingMessage(id="1", sender=sender, content="hi"), SETTINGS, 1)
    assert record["from"] == stored
    assert record["sms_message"]["from"] == sender


def test_a_configured_form_code_makes_a_report() -> None:
    record = build_record(IncomingMessage(id="1", sender="+254712345678", content="FORM some value"),
                          SETTINGS, 5)
    assert record["form"] == "FORM"
    assert record["fields"] == {"some_data": "some value"}
    assert record["errors"] == []
    assert record["sms_message"]["form"] == "FORM"
    assert record["sms_message"]["gateway_ref"] == "1"
    assert record["reported_date"] == 5


def test_a_form_code_in_lower_case_also_makes_a_report() -> None:
    record = build_record(IncomingMessage(id="1", sender="+254712345678", content="form x"), SETTINGS, 5)
    assert record["form"] == "FORM"


def test_without_a_forms_parser_a_form_code_is_a_plain_message() -> None:
    record = build_record(IncomingMessage(id="1", sender="+254712345678", content="FORM some value"),
                          SETTINGS, 5, parser=plain_message)
    assert "form" not in record
    assert record["fields"] == {}
    assert record["sms_message"]["form"] == "FORM"


def test_a_failing_parser_still_stores_the_message_as_plain() -> None:
    failures: list[Exception] = []

    def broken(*_args: object) -> ParsedSms:
        raise RuntimeError("parser bug")

    record = build_record(IncomingMessage(id="1", sender="+254712345678", content="FORM x"), SETTINGS, 7,
                          parser=broken, on_parser_error=failures.append)
    assert record["sms_message"]["message"] == "FORM x"
    assert "form" not in record and record["reported_date"] == 7
    assert len(failures) == 1


def test_no_sms_message_locale_is_stored() -> None:
    # Item 1: CHT's RapidPro endpoint passes no locale, and CHT sentinel would prefer
    # sms_message.locale over locale_outgoing for its automatic replies.
    settings = parse_settings({"settings": {**load_example_settings(), "locale": "sw"}})
    record = build_record(IncomingMessage(id="1", sender="+254712345678", content="hi"), settings, 1)
    assert "locale" not in record["sms_message"]


@pytest.mark.parametrize(("text", "code"), [
    ("hello world", "HELLO"), ("  form,1", "FORM"), ("1!ANC!x", "ANC"), ("#", None), ("", None),
])
def test_form_code_fallback_reads_like_cht(text: str, code: str | None) -> None:
    assert get_form_code(text) == code

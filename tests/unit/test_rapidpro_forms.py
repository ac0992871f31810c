"""RapidPro's stored forms of a text and a URN (transitions/outgoing/rapidpro_forms.py), checked against
what RapidPro's own code does (nyaruka/rapidpro v26.1.101: DRF CharField in
temba/api/v2/fields.py, URN.normalize / URN.validate in temba/contacts/models.py), and the
in-doubt lookup finding a broadcast under those forms. Every row of TEXTS and URNS was also run
through RapidPro's own `fields.validate_urn` and DRF's `CharField.run_validation` (v26.1.101,
DRF 3.16.1) with the same results."""

from __future__ import annotations

import pytest

from transitions.cht.timestamps import rapidpro_time
from transitions.outgoing.in_doubt import Kind, Listing, Window, decide
from transitions.outgoing.rapidpro_forms import (
    BLANK,
    NULL_CHARACTERS,
    TOO_LONG,
    rapidpro_text,
    rapidpro_urn,
    same_urn,
    text_refusal,
    workspace_country,
)

TEXTS = [
    # (CHT's text, what RapidPro stores, RapidPro's 400 reason)
    ("Visit due", "Visit due", None),
    ("  padded text \n", "padded text", None),
    ("\tTab\t", "Tab", None),
    ("line one\r\nline two\r\n", "line one\r\nline two", None),
    ("\u00a0no-break\u00a0", "no-break", None),
    ("\u2003em space\u3000", "em space", None),
    ("\u200bzero width\u200b", "\u200bzero width\u200b", None),  # not whitespace for str.strip
    ("\ufeffbom", "\ufeffbom", None),
    ("  👋🏽 Habari  ", "👋🏽 Habari", None),
    ("inner  spaces kept", "inner  spaces kept", None),
    ("   ", "", BLANK),
    ("\r\n\t\u00a0", "", BLANK),
    ("a\x00b", "a\x00b", NULL_CHARACTERS),
    (" \x00 ", "\x00", NULL_CHARACTERS),  # NUL is not whitespace: trimmed around it
    ("x" * 4096 + "  ", "x" * 4096, None),  # the limit counts the trimmed text
    ("x" * 4097, "x" * 4097, TOO_LONG),
]


@pytest.mark.parametrize(("text", "stored", "refusal"), TEXTS)
def test_text_as_rapidpro_stores_it(text: str, stored: str, refusal: str | None) -> None:
    assert rapidpro_text(text) == stored
    assert text_refusal(text) == refusal


URNS = [
    # (URN sent, workspace country, what RapidPro stores or None for 400 "Invalid URN")
    ("tel:+254712345678", "KE", "tel:+254712345678"),
    ("tel:+254712345678", None, "tel:+254712345678"),
    ("tel:0712345678", "KE", "tel:+254712345678"),  # local
    ("tel:0712345678", None, None),  # local, workspace without a country: refused
    ("tel:254712345678", "KE", "tel:+254712345678"),  # country code, no +
    ("tel:254712345678", None, "tel:+254712345678"),  # 12 digits, not 0: read as international
    ("tel:+254 712-345 678", "KE", "tel:+254712345678"),  # spaced and dashed
    ("tel:0712 345 678", "KE", "tel:+254712345678"),
    ("tel:(071) 234-5678", "KE", "tel:+254712345678"),
    ("tel:+254712345678 ", "KE", "tel:+254712345678"),  # the path is trimmed
    (" tel:+254712345678", "KE", None),  # the URN is not: " tel" is no scheme
    ("tel: 0712345678", "KE", "tel:+254712345678"),
    ("tel:712345678", "KE", "tel:+254712345678"),  # without the trunk 0
    ("tel:+1 (202) 555-0143", "KE", "tel:+12025550143"),
    ("tel:12025550143", "KE", "tel:+12025550143"),  # 11 digits, not 0: international
    ("tel:0712", "KE", None),  # too short: not a possible number
    ("tel:12", "KE", None),
    ("tel:+25471234567890123", "KE", None),  # too long
    ("tel:", "KE", None),
    ("tel:abc", "KE", None),
    ("0712345678", "KE", None),  # no scheme
    ("TEL:+254712345678", "KE", None),  # schemes are case-sensitive in RapidPro
]


@pytest.mark.parametrize(("urn", "country", "stored"), URNS)
def test_urn_as_rapidpro_normalises_it(urn: str, country: str | None, stored: str | None) -> None:
    assert rapidpro_urn(urn, country) == stored


def test_same_urn_reads_both_sides_in_the_workspace_country() -> None:
    assert same_urn("tel:0712345678", "tel:+254712345678", "KE")
    assert same_urn("tel:254712345678", "tel:+254 712 345 678", "KE")
    assert not same_urn("tel:0712345678", "tel:+254712345679", "KE")
    assert not same_urn("tel:0712345678", "tel:+254712345678", "TZ")


def test_workspace_country() -> None:
    assert workspace_country({"country": "KE"}) == "KE"
    assert workspace_country({"country": ""}) is None
    assert workspace_country({"country": None}) is None
    assert workspace_country([]) is None


# ---- the in-doubt lookup finds the broadcast RapidPro stored under those forms

CLAIMED_AT = 1_800_000_000.0


def _listing(*broadcasts: dict) -> Listing:
    return Listing(Window(CLAIMED_AT - 3600, CLAIMED_AT + 3600), CLAIMED_AT + 3600, True, broadcasts)


def _broadcast(urn: str, text: str) -> dict:
    return {"id": 22, "uuid": "u22", "urns": [urn], "text": {"eng": text}, "status": "queued",
            "created_on": rapidpro_time(CLAIMED_AT + 1)}


@pytest.mark.parametrize(("claimed_urn", "cht_text", "country"), [
    ("tel:+254712345678", "  padded text \n", "KE"),
    ("tel:+254712345678", "\u00a0Visit due\r\n", "KE"),
    ("tel:0712345678", "Visit due", "KE"),
    ("tel:254712345678", "Visit due", "KE"),
    ("tel:+254 712-345 678", "Visit due", "KE"),
    ("tel:254712345678", "Visit due", None),
])
def test_in_doubt_finds_what_rapidpro_stored(claimed_urn: str, cht_text: str, country: str | None) -> None:
    stored = _broadcast("tel:+254712345678", rapidpro_text(cht_text))
    decision = decide(urn=claimed_urn, text=cht_text, claimed_at=CLAIMED_AT, listing=_listing(stored),
                      recorded=(), rapidpro_timeout=30, margin=60, country=country)
    assert decision.kind is Kind.FOUND, decision.reason
    assert decision.broadcast is stored


def test_in_doubt_still_tells_other_numbers_and_texts_apart() -> None:
    stored = _broadcast("tel:+254712345678", "Visit due")
    for urn, text in (("tel:0712345679", "Visit due"), ("tel:0712345678", "Visit due!")):
        decision = decide(urn=urn, text=text, claimed_at=CLAIMED_AT, listing=_listing(stored), recorded=(),
                          rapidpro_timeout=30, margin=60, country="KE")
        assert decision.kind is Kind.RESEND

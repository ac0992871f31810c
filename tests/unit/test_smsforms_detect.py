"""Form-code detection: case, separators, zero-width characters, Muvuku headers."""

import pytest

from transitions.incoming.smsforms import detect_form, get_form_code, is_muvuku
from transitions.incoming.smsforms.detect import strip_form_code

FORMS = {"YYYY": {"meta": {"code": "YYYY"}, "fields": {}}, "P": {"meta": {"code": "P"}}}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", None),
        ("   ", None),
        ("YYYY", "YYYY"),
        ("YYYY CDT33", "YYYY"),
        ("yyyy CDT33", "YYYY"),
        ("YYYY-CDT33", "YYYY"),
        ("YYYY,x", "YYYY"),
        ("YYYY:x", "YYYY"),
        ("YYYY#foo#2011#11#", "YYYY"),
        ("YYYY!foo#2011#11#", "YYYY"),
        ("  \t\nYYYY x", "YYYY"),
        ("द CDT33", "द"),
        ("\ufeffYYYY 1", "YYYY"),  # U+FEFF is whitespace to JS
        ("1!ANCR!sarah", "ANCR"),
        ("1!anc r!x", "ANC R"),
    ],
)
def test_get_form_code(text, code):
    assert get_form_code(text) == code


def test_two_bangs_read_as_muvuku_code():
    # Quirk: any text with 2+ "!" takes its code from between the first two "!".
    assert get_form_code("YYYY#HFI!foobar#ZDT!999") == "FOOBAR#ZDT"
    assert get_form_code("Hello! are you there! ok") == " ARE YOU THERE"
    assert get_form_code("R jane!!") == ""


@pytest.mark.parametrize(
    "text", ["1!A!s", "1!ANCR!sarah#11", "1!ग!sarah#11", "1!?!sarah", "A1!a!x", "Z9!a!y", " 1!a!b"]
)
def test_is_muvuku(text):
    assert is_muvuku(text)


@pytest.mark.parametrize("text", ["1?ANCR!sarah", "a?b?c", "41!a!s", "4T!a!s", "00!a!s", "1!a!", "१!a!b"])
def test_is_not_muvuku(text):
    assert not is_muvuku(text)


def test_detect_known_form_any_case():
    found = detect_form("yyyy 1 2", FORMS)
    assert (found.code, found.definition, found.message) == ("YYYY", FORMS["YYYY"], "yyyy 1 2")


def test_detect_unknown_code():
    found = detect_form("HELLO there", FORMS)
    assert (found.code, found.definition) == ("HELLO", None)


def test_detect_zero_width_inside_code_is_fixed_in_parsed_text():
    found = detect_form("YY\u200bYY 1999", FORMS)
    assert (found.code, found.definition, found.message) == ("YYYY", FORMS["YYYY"], "YYYY 1999")


@pytest.mark.parametrize("char", ["\u200b", "\u200c", "\u200d"])
def test_detect_zero_width_before_code(char):
    found = detect_form(f"{char}P 12345", FORMS)
    assert (found.code, found.message) == ("P", "P 12345")


def test_detect_zero_width_lower_case_code_text_not_fixed():
    # Quirk: the fix replaces the upper-cased code, case-sensitively: nothing replaced.
    found = detect_form("yy\u200byy 1999", FORMS)
    assert (found.code, found.definition, found.message) == ("YYYY", FORMS["YYYY"], "yy\u200byy 1999")


def test_detect_zero_width_code_still_unknown():
    found = detect_form("XX\u200bX 1", FORMS)
    assert (found.code, found.definition, found.message) == ("XX\u200bX", None, "XX\u200bX 1")


@pytest.mark.parametrize(
    ("code", "text", "rest"),
    [
        ("YYYY", "YYYY 1 2", "1 2"),
        ("YYYY", "yyyy#1", "1"),
        ("YYYY", "YYYY!-,:# 1", "1"),
        ("YYYY", "YYYYX 1", "X 1"),  # no word boundary in CHT's pattern
        (".*.*", ".*.*  n jane", "n jane"),  # regex characters are escaped
        (None, "YYYY 1", "YYYY 1"),  # no meta.code: nothing stripped
    ],
)
def test_strip_form_code(code, text, rest):
    assert strip_form_code(code, text) == rest

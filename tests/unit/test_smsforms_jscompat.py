"""The JavaScript semantics the parser relies on."""

import math

import pytest

from transitions.incoming.smsforms.jscompat import (
    UNDEFINED,
    js_number,
    js_number_to_string,
    js_trim,
    js_truthy,
    standardise_digits,
)
from transitions.incoming.smsforms.messages import Translator, render_template


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12", 12), (" 12 ", 12), ("", 0), ("1.5", 1.5), ("0x10", 16), ("1e3", 1000),
     ("-0", 0), ("12a", math.nan), ("Infinity", math.inf), (None, 0)],
)
def test_js_number(text, expected):
    got = js_number(text)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_js_number_undefined_is_nan():
    assert math.isnan(js_number(UNDEFINED))


@pytest.mark.parametrize(
    ("number", "text"),
    [(1.0, "1"), (1.5, "1.5"), (1e21, "1e+21"), (1e-7, "1e-7"), (0.000001, "0.000001"), (12, "12")],
)
def test_js_number_to_string(number, text):
    assert js_number_to_string(number) == text


def test_js_trim_and_truthiness():
    assert js_trim("\ufeff a \u3000") == "a"
    assert js_trim("\u200ba") == "\u200ba"  # zero-width space is not JS whitespace
    assert [js_truthy(v) for v in ("", "0", 0, math.nan, {}, [], None, UNDEFINED)] == [
        False, True, False, False, True, True, False, False]


def test_standardise_digits():
    assert standardise_digits("९८४१\u200b") == "9841"
    assert standardise_digits(2068) == "2068"
    assert standardise_digits("") == ""


def test_templates():
    assert render_template("Form '{{form}}' not found.", {"form": "X"}) == "Form 'X' not found."
    assert render_template("Form '{{form}}' not found.", {"form": UNDEFINED}) == "Form '' not found."
    assert render_template("Missing: {{fields}}.", {}) == "Missing: {{fields}}."


def test_translate_label_objects():
    tr = Translator({"locale": "fr"}, None)
    assert tr.translate({"en": "Yes", "fr": "Oui"}) == "Oui"
    assert tr.translate({"en": "Yes", "fr": "Oui"}, "sw") == "Yes"
    assert tr.translate({"sw": "Ndiyo"}, "fr") == "Ndiyo"
    assert tr.translate({"translations": [{"locale": "fr", "content": "Oui"}]}) == "Oui"
    assert tr.translate({"translation_key": "form.x"}) == "form.x"
    assert tr.translate("unknown.key") == "unknown.key"

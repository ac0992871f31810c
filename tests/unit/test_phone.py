import pytest

from transitions.cht.phone import mask_phone, normalise_phone, region_for_country_code

# --- region_for_country_code ---


@pytest.mark.parametrize(
    ("code", "region"),
    [
        (254, "KE"),
        ("254", "KE"),
        ("+254", "KE"),
        (" 254 ", "KE"),
        (1, "US"),
        (44, "GB"),
        (7, "RU"),
        (800, None),  # non-geographic
        (999, None),
        ("abc", None),
        ("", None),
        (None, None),
        (True, None),
        (254.0, None),
    ],
)
def test_region_for_country_code(code, region):
    assert region_for_country_code(code) == region


# --- normalise_phone ---


@pytest.mark.parametrize(
    ("raw", "code", "expected"),
    [
        ("0712345678", 254, "+254712345678"),
        ("712345678", 254, "+254712345678"),
        ("0712345678", "254", "+254712345678"),
        ("0712 345 678", "+254", "+254712345678"),
        ("+254 (712) 345-678", 254, "+254712345678"),
        ("+254712345678", None, "+254712345678"),
        ("+254712345678", 1, "+254712345678"),
        ("+44 20 7946 0958", 254, "+442079460958"),
        ("+1 202 555 0123", 254, "+12025550123"),
    ],
)
def test_normalise_valid(raw, code, expected):
    assert normalise_phone(raw, code) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("0712345678", None),  # local number, no country to read it in
        ("0712345678", 999),
        ("+2547123", 254),  # too short
        ("+254912345678", 254),  # possible length, invalid prefix
        ("", 254),
        ("   ", 254),
        ("not a number", 254),
        ("1-800-MICROSOFT", 1),  # letters refused even where libphonenumber accepts them
        ("tel:+254712345678", 254),
        ("SAFARICOM", 254),
    ],
)
def test_normalise_invalid(raw, code):
    assert normalise_phone(raw, code) is None


@pytest.mark.parametrize("raw", [None, 254712345678, b"+254712345678"])
def test_normalise_non_string(raw):
    assert normalise_phone(raw, 254) is None


def test_validation_partial_accepts_possible_but_invalid():
    assert normalise_phone("+254912345678", 254, "partial") == "+254912345678"


def test_validation_partial_refuses_impossible_length():
    assert normalise_phone("+2547123", 254, "partial") is None


def test_validation_none_accepts_any_parseable():
    assert normalise_phone("+2547123", 254, "none") == "+2547123"
    assert normalise_phone("12", 254, "none") == "+25412"


def test_validation_none_still_refuses_letters_and_garbage():
    assert normalise_phone("+2547123x", 254, "none") is None
    assert normalise_phone("1", 254, "none") is None


@pytest.mark.parametrize("mode", ["full", "FULL", None, "bogus", 3])
def test_validation_defaults_to_full(mode):
    assert normalise_phone("+254912345678", 254, mode) is None
    assert normalise_phone("+254712345678", 254, mode) == "+254712345678"


def test_validation_case_insensitive():
    assert normalise_phone("+254912345678", 254, "Partial") == "+254912345678"
    assert normalise_phone("+2547123", 254, "NONE") == "+2547123"


# --- mask_phone ---


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+254712345678", "+2547******78"),
        ("+2547123456789012", "+2547**********12"),
        ("0712345678", "071*****78"),
        ("+1234567", "+1****67"),
        ("12345", "***45"),
        ("1234", "***4"),
        ("123", "***"),
        ("+12", "***"),
        ("1", "***"),
        ("", ""),
        ("ORANGE NET", "ORA*****ET"),
    ],
)
def test_mask_phone(number, masked):
    assert mask_phone(number) == masked


@pytest.mark.parametrize("length", range(1, 30))
def test_mask_never_reveals_full_number_or_half(length):
    number = "+" + "9" * (length - 1) if length > 1 else "9"
    masked = mask_phone(number)
    assert masked != number
    assert masked.count("*") >= max(3, length // 2)


def test_mask_non_string():
    assert mask_phone(None) == ""
    assert mask_phone(254712345678) == "2547******78"

"""Muvuku (`1!FORM!a#b`) and JavaRosa (`J1!FORM!label#value`) messages."""

from tests.support.cht_translations import by_locale
from transitions.incoming.smsforms import parse_sms

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
ITEMS = [("la_6x1", "L1"), ("la_6x2", "L2"), ("cotrimoxazole", "C"), ("zinc", "Z"),
         ("ors", "O"), ("eye_ointment", "E")]
YYYY = {
    "meta": {"code": "YYYY"},
    "fields": {
        "facility_id": {"type": "string", "labels": {"tiny": "HFI"}, "required": True},
        "year": {"type": "integer", "labels": {"tiny": "RPY"}, "required": True},
        "month": {"type": "integer", "labels": {"tiny": "RPM"}, "required": True,
                  "list": [[i, {"en": m}] for i, m in enumerate(MONTHS, 1)]},
        "misoprostol_administered": {"type": "boolean", "labels": {"tiny": {"en": "MSP"}}},
        **{f"quantity_dispensed.{k}": {"type": "integer", "labels": {"tiny": f"{t}T"}}
           for k, t in ITEMS},
        **{f"days_stocked_out.{k}": {"type": "integer", "labels": {"tiny": f"{t}O"}}
           for k, t in ITEMS},
    },
}
SETTINGS = {"forms": {"YYYY": YYYY}}
FULL = {
    "facility_id": "facility", "year": 2011, "month": "November",
    "misoprostol_administered": False,
    "quantity_dispensed": {"la_6x1": 1, "la_6x2": 2, "cotrimoxazole": 3, "zinc": 4, "ors": 5,
                           "eye_ointment": 6},
    "days_stocked_out": {"la_6x1": 9, "la_6x2": 8, "cotrimoxazole": 7, "zinc": 6, "ors": 5,
                         "eye_ointment": 4},
}


def parse(text, settings=SETTINGS):
    return parse_sms(text, settings, reported_date_ms=0, translations=by_locale())


def test_valid_muvuku():
    result = parse("1!YYYY!facility#2011#11#0#1#2#3#4#5#6#9#8#7#6#5#4")
    assert (result.form, result.fields, result.errors) == ("YYYY", FULL, [])


def test_lower_case_form_code():
    assert parse("1!yyyy!facility#2011#11#0#1#2#3#4#5#6#9#8#7#6#5#4").form == "YYYY"


def test_wrong_types_are_null():
    result = parse("1!YYYY!facility#2011#11#yyyyy#zzzz#2#3#4#5#6#9#8#7#6#5#4")
    assert result.fields["misoprostol_administered"] is None
    assert result.fields["quantity_dispensed"]["la_6x1"] is None


def test_fields_past_the_end_are_absent_but_parents_exist():
    result = parse("1!YYYY!facility#2011#11#1#1#2#3")
    assert result.fields == {
        "facility_id": "facility", "year": 2011, "month": "November",
        "misoprostol_administered": True,
        "quantity_dispensed": {"la_6x1": 1, "la_6x2": 2, "cotrimoxazole": 3},
        "days_stocked_out": {},
    }


def test_empty_values_are_null():
    form = {"meta": {"code": "Z"}, "fields": {
        "one": {"type": "string"}, "two": {"type": "string"}, "birth": {"type": "date"}}}
    # A parser vector: the date's text is the point.
    result = parse("1!Z!##2012-03-12", {"forms": {"Z": form}})
    assert result.fields == {"one": None, "two": None, "birth": 1331510400000}


def test_empty_list_value_is_null():
    form = {"meta": {"code": "Q"}, "fields": {
        "q1": {"type": "integer", "list": [[0, "Yes"], [1, "No"]]},
        "q2": {"type": "integer", "list": [[0, "Yes"], [1, "No"]]}}}
    assert parse("1!Q!1#", {"forms": {"Q": form}}).fields == {"q1": "No", "q2": None}
    assert parse("1!Q!0", {"forms": {"Q": form}}).fields == {"q1": "Yes"}


def test_values_are_trimmed_but_keep_inner_newlines():
    form = {"meta": {"code": "Q"}, "fields": {
        "q": {"type": "integer", "list": [[0, "Yes"], [1, "No"]]}, "name": {"type": "string"}}}
    settings = {"forms": {"Q": form}}
    assert parse("1!Q!\t\n 1 \t\n#\n \t John \nSmith \n \t", settings).fields == {
        "q": "No", "name": "John \nSmith"}


def test_bang_inside_first_value():
    form = {"meta": {"code": "Q"}, "fields": {"foo": {"type": "string"}}}
    assert parse("1!Q!16A!", {"forms": {"Q": form}}).fields == {"foo": "16A!"}


def test_leading_zero_string():
    form = {"meta": {"code": "Q"}, "fields": {"foo": {"type": "string"}}}
    assert parse("1!Q!012345", {"forms": {"Q": form}}).fields == {"foo": "012345"}


def test_extra_fields_error():
    result = parse("1!YYYY!facility#2011#11#0#1#2#3#1#1#1#1#1#1#1#1#1#1#####77#")
    assert result.errors == [{"code": "extra_fields", "message": "Extra fields."}]
    assert "_extra_fields" not in result.fields


def test_trailing_hash_counts_as_extra_value():
    # Quirk: "a#" is two values, the second empty.
    form = {"meta": {"code": "Q"}, "fields": {"foo": {"type": "string"}}}
    result = parse("1!Q!a#", {"forms": {"Q": form}})
    assert (result.fields, [e["code"] for e in result.errors]) == ({"foo": "a"}, ["extra_fields"])


def test_missing_required_fields():
    result = parse("1!YYYY!foo")
    assert result.errors == [
        {"code": "sys.missing_fields", "message": "Missing or invalid fields: year,month."}]


def test_unknown_parser_code_stores_no_fields():
    result = parse("2!YYYY!facility#2011")
    assert result.form == "YYYY"
    assert result.fields == {}
    assert result.errors[0]["message"] == "Missing or invalid fields: facility_id,year,month."


def test_javarosa():
    result = parse("J1!YYYY!HFI#facility#RPY#2011#RPM#11#MSP#0#L1T#1#ZO#6")
    assert result.fields == {
        "facility_id": "facility", "year": 2011, "month": "November",
        "misoprostol_administered": False,
        "quantity_dispensed": {"la_6x1": 1}, "days_stocked_out": {"zinc": 6},
    }


def test_javarosa_escaped_hash_and_spaces_in_labels():
    result = parse("J1!YYYY!L2T#2#HFI #fa\\\\cility\\#2\\#3#  rpy#2015")
    assert result.fields["facility_id"] == "fa\\\\cility#2#3"
    assert result.fields["year"] == 2015


def test_javarosa_similar_labels():
    form = {"meta": {"code": "T"}, "fields": {
        "problem": {"type": "string", "labels": {"tiny": "P"}},
        "meta_problem": {"type": "string", "labels": {"tiny": "MetaP"}}}}
    assert parse("J1!T!p#Bar#metap#foo", {"forms": {"T": form}}).fields == {
        "problem": "Bar", "meta_problem": "foo"}

"""RapidPro's flow templates, the part the relay flow uses (transitions/rapidpro/excellent.py), read as
goflow reads them (excellent/scanner.go) and evaluated as goflow evaluates them."""

from __future__ import annotations

import json

import pytest

from transitions.rapidpro.excellent import (
    Call,
    Number,
    Path,
    TemplateError,
    Text,
    evaluate_template,
    parse_expression,
    parse_template,
    render_template,
)

# The relay flow's body (transitions/rapidpro/relay_flow.py), as the flow editor holds it.
WEBHOOK_BODY = ('@(json(object("id", input.uuid, "from", replace(urns.tel, "tel:+", "+"), '
                '"content", input.text)))')


def test_identifiers_and_expressions_in_text():
    assert parse_template("Token @globals.cht_api_key") == ("Token ", Path(("globals", "cht_api_key")))
    assert parse_template("@(globals.cht_url)") == (Path(("globals", "cht_url")),)
    # Not a top-level of the run context: text (an e-mail address); `@@` is a literal @.
    assert parse_template("mail me@example.com, @@home") == ("mail me@example.com, @home",)
    # A trailing period ends the identifier; an unbalanced @( stays text.
    assert parse_template("Hi @contact.name.") == ("Hi ", Path(("contact", "name")), ".")
    assert parse_template("@(json(") == ("@(json(",)


def test_the_relay_body_is_read_as_calls_paths_and_text():
    (body,) = parse_template(WEBHOOK_BODY)
    assert body == Call("json", (Call("object", (
        Text("id"), Path(("input", "uuid")),
        Text("from"), Call("replace", (Path(("urns", "tel")), Text("tel:+"), Text("+"))),
        Text("content"), Path(("input", "text")))),))
    # Spacing and quotes inside text literals do not matter; the rendering is stable.
    assert parse_expression('json(object( "id" ,input.uuid))') == \
        parse_expression('json(object("id", input.uuid))')
    assert render_template(parse_template(WEBHOOK_BODY)) == WEBHOOK_BODY
    assert parse_expression(r'"say \"hi\""') == Text('say "hi"')
    assert parse_expression("-12.5") == Number("-12.5")


@pytest.mark.parametrize("source", ["1 + 2", "contact.fields[0]", "json(", "a b", ")"])
def test_what_the_relay_never_uses_is_refused(source):
    with pytest.raises(TemplateError):
        parse_expression(source)


def test_the_body_evaluates_to_json_whatever_the_text_holds():
    text = 'He said "hi"\nand left \\ 100%'
    context = {"input": {"uuid": "0199bb98-3637-778d-9dfc-0ab85c950d7c", "text": text},
               "urns": {"tel": "tel:+254712345678"}, "run": {"uuid": "x"}}
    body = evaluate_template(WEBHOOK_BODY, context)
    # goflow's json() of an object: sorted keys, compact (excellent/types/object.go).
    assert body.startswith('{"content":')
    assert json.loads(body) == {"id": "0199bb98-3637-778d-9dfc-0ab85c950d7c", "from": "+254712345678",
                                "content": text}
    # No tel URN: replace() of nothing is empty text, as in goflow.
    assert json.loads(evaluate_template(WEBHOOK_BODY, {**context, "urns": {}}))["from"] == ""
    assert evaluate_template("Token @globals.k", {"globals": {"k": "v"}}) == "Token v"

"""3,000 incoming SMS and the doc CHT Core itself stored for each (tests/support/cht_vectors.py).

Every vector goes through the worker's pure incoming path (`parse_webhook_body` + `build_record`)
with CHT's translation docs in force, and the whole stored doc must equal CHT's (less `_id`, and
`reported_date` where CHT used its clock). The one deliberate exception: where CHT's code throws
(it answers 500 and the SMS is lost), the worker stores the report CHT would have stored without
the crash — asserted on its own below.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from config.settings import parse_settings
from tests.support.cht_vectors import (
    RECEIPT_MS,
    Vector,
    compare,
    profiles,
    translations,
    vectors,
    worker_outcome,
)
from transitions.incoming.record import IncomingMessage, build_record


def _report(failures: list[tuple[Vector, list[str]]]) -> str:
    by_path = Counter(path for _, diff in failures for path in diff)
    lines = [f"{len(failures)} vectors differ from CHT; differing paths: {dict(by_path.most_common(10))}"]
    for vector, diff in failures[:15]:
        lines.append(f"  {vector.id} [{vector.profile} {vector.format} {','.join(vector.tags)}] "
                     f"{vector.text!r} from {vector.sender!r}: {diff}")
    return "\n".join(lines)


def test_the_fixture_holds_the_whole_sample() -> None:
    outcomes = Counter(v.outcome for v in vectors())
    assert sum(outcomes.values()) == 3000
    assert outcomes["stored"] > 2800 and outcomes["rejected"] > 0 and outcomes["throws"] > 0


@pytest.mark.parametrize("fmt", sorted({v.format for v in vectors()}))
def test_every_vector_stores_what_cht_stores(fmt: str) -> None:
    failures = [(v, diff) for v in vectors() if v.format == fmt and v.outcome != "throws"
                for diff in [compare(v)] if diff]
    assert not failures, _report(failures)


def test_the_comparison_can_fail() -> None:
    # The harness must see a one-character difference anywhere in the doc, and number vs boolean.
    vector = next(v for v in vectors() if v.outcome == "stored" and v.cht.get("fields"))
    assert compare(vector) == []
    for mutate in (
        lambda d: d["fields"].update({"extra": 1}),
        lambda d: d["sms_message"].update({"locale": "en"}),
        lambda d: d["errors"].append({"code": "x", "message": "x"}),
        lambda d: d.update({"from": d["from"] + "1"}),
    ):
        changed = copy.deepcopy(vector.cht)
        mutate(changed)
        assert compare(Vector(**{**vector.__dict__, "cht": changed})) != []


# ---------------------------------------------------------------- deliberate difference (a)
def _throwing_vectors() -> list[Vector]:
    return [v for v in vectors() if v.outcome == "throws"]


def test_where_cht_crashes_the_worker_stores_the_report_anyway() -> None:
    """CHT reads `labels.tiny` of every field while mapping full-TextForms labels and throws on
    a field with no `labels` (or a non-object field such as `"facility_reference": "id"`); the
    webhook then answers 500 and the SMS is lost. The worker stores the report CHT would have
    stored had that field simply had no tiny label: the same record as for a form whose
    label-less fields get `labels: {}` (primitive fields have no labels to give)."""
    throwing = _throwing_vectors()
    assert throwing and all("reading 'tiny'" in v.cht["throws"] for v in throwing)
    for vector in throwing:
        record = worker_outcome(vector)
        assert isinstance(record, dict) and record.get("form"), vector.id
        settings = profiles()[vector.profile]
        patched: dict[str, Any] = copy.deepcopy(dict(settings.raw))
        for form in patched["forms"].values():
            for key, field in form["fields"].items():
                if isinstance(field, dict) and "labels" not in field:
                    form["fields"][key] = {**field, "labels": {}}
        fixed = parse_settings({"_id": "settings", "settings": patched})
        message = IncomingMessage(id=vector.id, sender=vector.sender, content=vector.text)
        assert record == build_record(message, fixed, RECEIPT_MS, translations=translations()), vector.id


def test_a_form_with_a_primitive_field_crashes_cht_but_is_stored() -> None:
    vector = next(v for v in _throwing_vectors() if v.id == "c00035")
    assert vector.text == "YYYX Id 8187319#foo १२ # facility_reference no # facility_required Ram"
    record = worker_outcome(vector)
    assert isinstance(record, dict)
    assert record["form"] == "YYYX"
    assert record["fields"] == {"id": 8187319, "foo": "१२", "facility_reference": "no",
                                "facility_required": "Ram"}
    assert record["errors"] == [
        {"code": "sys.incorrect_type", "message": "Incorrect type of field id, expected string."}]

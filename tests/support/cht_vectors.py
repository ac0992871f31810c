"""What CHT Core stored for 3,000 incoming SMS, and the comparison of the worker's record with it.

The vectors (tests/fixtures/cht_sms_vectors/) were made by running CHT Core's own
`records.createByForm` (api/src/services/records.js, 5.x line, TZ=UTC) as its RapidPro endpoint
calls it, with CHT's shipped translations: one JSON line per SMS with the webhook body
(`id`, `from`, `text`), the settings profile in force and CHT's stored doc (`cht`), or
`{"rejected": ...}` (CHT answered 400, stored nothing) or `{"throws": ...}` (CHT crashed, 500).

`python -m tests.support.cht_vectors` prints the agreement, overall and per format/tag.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from config.settings import Settings, parse_settings
from transitions.cht.translations import Translations, translations_from_docs
from transitions.incoming.record import IncomingMessage, Invalid, build_record, parse_webhook_body

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cht_sms_vectors"
# CHT's translation docs recorded with the vectors; the playground seeds them too.
TRANSLATIONS = Path(__file__).resolve().parents[2] / "playground" / "cht" / "translations.json"
RECEIPT_MS = 1_764_000_000_000  # the receipt time handed to the worker; CHT's is "<receipt time>"
RECEIPT_MARK = "<receipt time>"


@dataclass(frozen=True)
class Vector:
    id: str
    profile: str
    text: Any
    sender: Any
    format: str
    tags: tuple[str, ...]
    cht: dict[str, Any]

    @property
    def outcome(self) -> str:
        if "rejected" in self.cht:
            return "rejected"
        if "throws" in self.cht:
            return "throws"
        return "stored"


@cache
def vectors() -> tuple[Vector, ...]:
    with gzip.open(FIXTURES / "vectors.jsonl.gz", "rt", encoding="utf-8") as lines:
        return tuple(
            Vector(id=v["id"], profile=v["profile"], text=v["text"], sender=v["from"],
                   format=v["format"], tags=tuple(v["tags"]), cht=v["cht"])
            for v in map(json.loads, lines)
        )


@cache
def profiles() -> dict[str, Settings]:
    raw = json.loads((FIXTURES / "profiles.json").read_text(encoding="utf-8"))
    return {name: parse_settings({"_id": "settings", "settings": app}) for name, app in raw.items()}


@cache
def translation_docs() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(TRANSLATIONS.read_text(encoding="utf-8")))


@cache
def translations() -> Translations:
    return translations_from_docs(translation_docs())


def webhook_body(vector: Vector) -> bytes:
    return json.dumps({"id": vector.id, "from": vector.sender, "content": vector.text}).encode()


def worker_outcome(vector: Vector) -> Invalid | dict[str, Any]:
    """What the worker's pure incoming path makes of the vector's webhook body."""
    message = parse_webhook_body(webhook_body(vector))
    if isinstance(message, Invalid):
        return message
    assert isinstance(message, IncomingMessage)
    return build_record(message, profiles()[vector.profile], RECEIPT_MS, translations=translations())


def comparable(record: dict[str, Any], cht: dict[str, Any]) -> dict[str, Any]:
    """The worker's record as CHT's vector shows a stored doc: no `_id`, CHT's clock marked."""
    out = {k: v for k, v in record.items() if k != "_id"}
    if cht.get("reported_date") == RECEIPT_MARK and out.get("reported_date") == RECEIPT_MS:
        out["reported_date"] = RECEIPT_MARK
    return out


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Paths where two JSON values differ. Numbers compare by value (12 == 12.0), never with
    booleans (true != 1); NaN counts as null (JSON.stringify stores NaN as null)."""
    if isinstance(ours, float) and math.isnan(ours):
        ours = None
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out: list[str] = []
        for key in list(theirs) + [k for k in ours if k not in theirs]:
            sub = f"{path}.{key}" if path else key
            if key not in ours:
                out.append(f"{sub} (missing)")
            elif key not in theirs:
                out.append(f"{sub} (extra)")
            else:
                out.extend(differences(ours[key], theirs[key], sub))
        return out
    if isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            return [f"{path} (length)"]
        out = []
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            out.extend(differences(a, b, f"{path}[{index}]"))
        return out
    numbers = (int, float)
    if isinstance(ours, bool) or isinstance(theirs, bool):
        same = isinstance(ours, bool) and isinstance(theirs, bool) and ours == theirs
    elif isinstance(ours, numbers) and isinstance(theirs, numbers):
        same = ours == theirs
    else:
        same = type(ours) is type(theirs) and ours == theirs
    return [] if same else [path or "(doc)"]


def compare(vector: Vector) -> list[str]:
    """Differences between the worker and CHT for a stored or rejected vector ([] = agree)."""
    outcome = worker_outcome(vector)
    if vector.outcome == "rejected":
        return [] if isinstance(outcome, Invalid) else ["stored, CHT rejected"]
    if isinstance(outcome, Invalid):
        return [f"rejected ({outcome.reason}), CHT stored"]
    return differences(comparable(outcome, vector.cht), vector.cht)


def groups(vector: Vector) -> Iterator[str]:
    yield f"format={vector.format}"
    yield f"profile={vector.profile}"
    for tag in vector.tags:
        yield f"tag={tag}"


def main() -> None:  # pragma: no cover - a report for people
    total: Counter[str] = Counter()
    agree: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    compared = 0
    agreed = 0
    for vector in vectors():
        if vector.outcome == "throws":
            continue
        diff = compare(vector)
        compared += 1
        agreed += not diff
        for group in groups(vector):
            total[group] += 1
            agree[group] += not diff
        for item in sorted({d.split("[")[0] if d.startswith("errors") else d for d in diff}):
            paths[item] += 1
    print(f"overall: {agreed}/{compared} agree ({100 * agreed / compared:.1f}%), "
          f"{sum(v.outcome == 'throws' for v in vectors())} where CHT throws not compared")
    for group in sorted(total):
        print(f"  {group}: {agree[group]}/{total[group]} ({100 * agree[group] / total[group]:.1f}%)")
    print("differing paths:")
    for path, count in paths.most_common():
        print(f"  {count:5d} {path}")


if __name__ == "__main__":
    main()

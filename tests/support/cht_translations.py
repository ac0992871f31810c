"""CHT's shipped translation docs (`messages-<code>`, the keys SMS parsing uses), for tests.

A copy of what CHT Core ships in api/resources/translations (tests/fixtures/cht_sms_vectors/
translations.json); in production the worker reads them from the medic database.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from transitions.cht.translations import Translations, translations_from_docs

# Recorded beside the vectors; the playground seeds them too.
_PATH = Path(__file__).resolve().parents[2] / "playground" / "cht" / "translations.json"


@cache
def cht_translation_docs() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(_PATH.read_text(encoding="utf-8")))


@cache
def cht_translations() -> Translations:
    return translations_from_docs(cht_translation_docs())


def by_locale() -> Any:
    """`{locale: {key: text}}`, what `parse_sms(translations=...)` takes."""
    return cht_translations().by_locale

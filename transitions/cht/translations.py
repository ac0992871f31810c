"""CHT's translation docs (`messages-<locale>` in medic) as the lookup CHT's api uses.

Pure logic: no I/O. The worker reads the docs at start and follows their changes
(worker/cht/translations.py); here they become `{locale: {key: text}}` the way CHT's api builds
its translation cache (api/src/services/config-watcher.js `loadTranslations`, CHT 4.x):

- a doc counts when it has `type: "translations"`, a `code` and an object `generic` (or, for
  docs older than CHT 3.x's format, `values`) — others are ignored, as CHT ignores them;
- its texts are `generic` overlaid with the deployment's `custom` (custom wins), or `values`;
- `${other_key}` inside a text is replaced by that key's text (shared-libs/translation-utils);
- several docs with one `code`: the one whose id sorts last wins (CHT reads `_all_docs` in order).

`lookup` falls back as CHT's `config.translate` does: the locale's text, else English, else the
key itself (an empty text counts as none).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MESSAGES_PREFIX: Final = "messages-"
DOC_TYPE: Final = "translations"
_KEY_REFERENCE: Final = re.compile(r"\$\{([^}\r\n]*)\}")


def is_translations_doc_id(doc_id: Any) -> bool:
    return isinstance(doc_id, str) and doc_id.startswith(MESSAGES_PREFIX)


def valid_translations_doc(doc: Any) -> bool:
    """CHT's test: `type: "translations"`, a truthy `code`, and `generic` or `values` objects."""
    if not isinstance(doc, Mapping) or doc.get("type") != DOC_TYPE or doc.get("_deleted"):
        return False
    code = doc.get("code")
    if not code or not isinstance(code, str):
        return False
    return isinstance(doc.get("generic"), Mapping) or isinstance(doc.get("values"), Mapping)


def _texts(doc: Mapping[str, Any]) -> dict[str, str]:
    generic = doc.get("generic")
    if isinstance(generic, Mapping):
        values: dict[str, Any] = dict(generic)
        custom = doc.get("custom")
        if isinstance(custom, Mapping):
            values.update(custom)
    else:
        values = dict(doc.get("values") or {})
    # translation-utils resolves `${key}` against the values as it goes (in key order, so a
    # text may see an already-resolved one), leaving a reference it cannot fill as it is.
    for key in list(values):
        text = values[key]
        if isinstance(text, str):
            def substitute(match: re.Match[str]) -> str:
                found = values.get(match.group(1))
                if isinstance(found, bool) or not isinstance(found, (str, int, float)) or not found:
                    return match.group(0)
                return found if isinstance(found, str) else _number_text(found)

            values[key] = _KEY_REFERENCE.sub(substitute, text)
    return {key: text for key, text in values.items() if isinstance(text, str)}


def _number_text(number: int | float) -> str:
    return str(int(number)) if isinstance(number, float) and number.is_integer() else str(number)


@dataclass(frozen=True)
class Translations:
    """The translation docs in force (by doc id) and the texts they give, by locale code."""

    docs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    by_locale: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def with_doc(self, doc: Mapping[str, Any]) -> Translations:
        """These translations after `doc` (a `messages-*` doc, new, changed or deleted) changed."""
        doc_id = doc.get("_id")
        if not is_translations_doc_id(doc_id):
            return self  # CHT reads only the `messages-` id range
        valid = valid_translations_doc(doc)
        if (not valid and doc_id not in self.docs) or (valid and self.docs.get(doc_id) == doc):
            return self  # nothing changes (an ignored doc, or a revision already in force)
        docs = {k: v for k, v in self.docs.items() if k != doc_id}
        if valid:
            docs[doc_id] = doc
        return translations_from_docs(docs.values())

    def without(self, doc_id: str) -> Translations:
        if doc_id not in self.docs:
            return self
        return translations_from_docs(d for k, d in self.docs.items() if k != doc_id)

    def lookup(self, key: str, locale: str | None) -> str:
        """CHT's fallback: the locale's text, then English, then the key itself."""
        for code in (locale, "en"):
            texts = self.by_locale.get(code) if code else None
            text = texts.get(key) if texts else None
            if text:
                return text
        return key

    def summary(self) -> dict[str, Any]:
        return {"locales": sorted(self.by_locale), "docs": len(self.docs)}


def translations_from_docs(docs: Iterable[Mapping[str, Any]]) -> Translations:
    """Translation docs (e.g. `_all_docs` rows' docs) → Translations; invalid docs are ignored."""
    valid = {d["_id"] if is_translations_doc_id(d.get("_id")) else f"{MESSAGES_PREFIX}{d['code']}": d
             for d in docs if valid_translations_doc(d)}
    by_locale: dict[str, Mapping[str, str]] = {}
    for doc_id in sorted(valid):
        doc = valid[doc_id]
        by_locale[doc["code"]] = _texts(doc)
    return Translations(docs=valid, by_locale=by_locale)


EMPTY: Final = Translations()

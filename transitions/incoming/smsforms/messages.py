"""Translation lookups the way CHT's api `config.translate` does them.

CHT keeps UI/message translations in `messages-<locale>` docs; the worker's caller passes them
as `{locale: {key: text}}` (see transitions/cht/translations.py). A key with no text in the locale
nor in English is its own text, as in CHT: the worker ships no copy of CHT's translations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from .jscompat import UNDEFINED, js_to_string, js_truthy

Translations = Mapping[str, Mapping[str, str]]

_PLACEHOLDER: Final = re.compile(r"\{\{(.+?)\}\}")
_IDENTIFIER: Final = re.compile(r"\s*([A-Za-z_$][\w$]*)\s*")


class Translator:
    """`translate(key, locale, ctx)` bound to the app settings and the translation docs."""

    def __init__(self, settings: Mapping[str, Any], translations: Translations | None) -> None:
        self._settings_locale = settings.get("locale") if isinstance(settings, Mapping) else None
        self._translations: dict[str, Mapping[str, str]] = {}
        if isinstance(translations, Mapping):
            for loc, values in translations.items():
                if isinstance(values, Mapping):
                    self._translations[str(loc)] = values

    @property
    def settings_locale(self) -> str:
        loc = self._settings_locale
        return loc if isinstance(loc, str) and loc else "en"

    def translate(self, key: Any, locale: str | None = None, ctx: Mapping[str, Any] | None = None):
        locale = locale or self.settings_locale
        if isinstance(key, Mapping):
            # A label object ({en: ..., sw: ...} or {translations: [...]}) is resolved in place.
            found = get_message(key, locale)
            return found if js_truthy(found) else key
        if not isinstance(key, str):
            return key  # CHT's template call throws on non-strings and hands the key back
        value = (
            _lookup(self._translations.get(locale), key)
            or _lookup(self._translations.get("en"), key)
            or key
        )
        return render_template(value, ctx or {})


def _lookup(values: Mapping[str, str] | None, key: str) -> str | None:
    if values is None:
        return None
    found = values.get(key)
    return found if isinstance(found, str) and found else None


def get_message(value: Mapping[str, Any], locale: str) -> Any:
    """Pick a translation out of a label object: locale, `default`, `en`, then the first one."""

    def find(loc: str) -> Any:
        translations = value.get("translations")
        if js_truthy(translations):
            if isinstance(translations, list):
                for item in translations:
                    if isinstance(item, Mapping) and item.get("locale") == loc:
                        return item.get("content")
            return None
        return value.get(loc)

    for candidate in (find(locale), value.get("default"), find("en")):
        if js_truthy(candidate):
            return candidate
    translations = value.get("translations")
    if isinstance(translations, list) and translations and isinstance(translations[0], Mapping):
        first = translations[0].get("content")
        if js_truthy(first):
            return first
    for first_value in value.values():
        return first_value
    return None


def render_template(template: str, ctx: Mapping[str, Any]) -> str:
    """Fill `{{name}}` placeholders like CHT's underscore template does.

    CHT renders with `_.template(value)(ctx)` and, when a placeholder names a variable that is
    not in `ctx`, the template throws and CHT keeps the raw text. So `sys.missing_fields`
    (rendered without a ctx) is stored with its `{{fields}}` placeholder intact, and
    `{{form}}` with `form: undefined` renders as an empty string.
    """
    missing = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal missing
        name = _IDENTIFIER.fullmatch(match.group(1))
        if name is None or name.group(1) not in ctx:
            missing = True
            return match.group(0)
        value = ctx[name.group(1)]
        if value is None or value is UNDEFINED:
            return ""
        return js_to_string(value)

    rendered = _PLACEHOLDER.sub(substitute, template)
    return template if missing else rendered

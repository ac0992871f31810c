"""The translations watcher: a `messages-*` doc changed, so the error texts in force change too.

The docs arrive in the same changes feed as everything else (CHT's api reloads its translations
the same way, on any change of a `messages-` doc). A deleted doc takes its texts with it; a doc
that is not a valid translations doc is ignored, as CHT ignores it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from transitions.cht.translations import is_translations_doc_id


class TranslationsWatcher:
    name = "translations_watcher"

    def __init__(self, put_in_force: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self._put_in_force = put_in_force

    def matches(self, doc: Mapping[str, Any]) -> bool:
        return is_translations_doc_id(doc.get("_id"))

    async def apply(self, doc: dict[str, Any]) -> None:
        await self._put_in_force(doc)

"""CHT's translation docs in force (`messages-<locale>` in medic), read at start and kept up to
date from the changes feed, for the error texts of incoming SMS reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transitions.cht.translations import EMPTY, MESSAGES_PREFIX, Translations, translations_from_docs
from worker.couch.client import CouchError, CouchUnavailable, Database
from worker.logs import get_logger

log = get_logger(__name__)


class TranslationsStore:
    def __init__(self) -> None:
        self.current: Translations = EMPTY

    async def load(self, medic: Database) -> None:
        """Read every `messages-*` doc at once, as CHT's api does at start (`_all_docs` range).

        CouchDB unreachable: raised, so start-up waits for it. Any other refusal (no read
        permission, say) is logged and the worker starts anyway, as CHT's api does: error texts
        are then their keys until a translations doc comes through the feed.
        """
        try:
            result = await medic.all_docs(start_key=MESSAGES_PREFIX, end_key=MESSAGES_PREFIX + "\ufff0",
                                          include_docs=True)
        except CouchUnavailable:
            raise
        except CouchError as exc:
            log.error("translations_load_failed", error=str(exc))
            return
        rows = result.get("rows") if isinstance(result, Mapping) else None
        docs = [row["doc"] for row in rows or []
                if isinstance(row, Mapping) and isinstance(row.get("doc"), dict)]
        self.current = translations_from_docs(docs)
        if not self.current.by_locale:
            # CHT ships these docs; without them every error text is its key, as in CHT.
            log.warning("translations_missing", detail="no messages-* translation docs in medic")
        log.info("translations_loaded", **self.current.summary())

    async def put_in_force(self, doc: dict[str, Any]) -> None:
        """A `messages-*` doc changed (or was deleted): its texts replace the old ones."""
        updated = self.current.with_doc(doc)
        if updated is self.current:
            return
        self.current = updated
        log.info("translations_loaded", doc_id=doc.get("_id"), **updated.summary())

"""A standby follows no feed, yet serves the webhook: it re-reads CHT's settings (SMS forms) and
translation docs when their revisions change, as the feed would have told it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from config.settings import SETTINGS_DOC_ID
from transitions.cht.translations import MESSAGES_PREFIX
from worker.cht.settings import SettingsStore
from worker.cht.translations import TranslationsStore
from worker.couch.client import CouchError, Database
from worker.logs import get_logger

log = get_logger(__name__)

# How often a standby checks whether the settings or translations changed.
STANDBY_REFRESH_S = 10.0


class StandbyRefresh:
    def __init__(self, medic: Database, settings: SettingsStore, translations: TranslationsStore, *,
                 active: Callable[[], bool], timeout: float) -> None:
        self._medic = medic
        self._settings = settings
        self._translations = translations
        self._active = active
        self._timeout = timeout

    async def run(self, every: float | None = None) -> None:
        seen: tuple[Any, Any] | None = None
        while True:
            await asyncio.sleep(STANDBY_REFRESH_S if every is None else every)
            if self._active():
                seen = None  # the feed keeps them current
                continue
            try:
                async with asyncio.timeout(self._timeout):
                    seen = await self._refresh(seen)
            except (CouchError, TimeoutError) as exc:
                log.debug("standby_refresh_failed", error=str(exc) or type(exc).__name__)

    async def _refresh(self, seen: tuple[Any, Any] | None) -> tuple[Any, Any]:
        settings_doc = await self._medic.get_or_none(SETTINGS_DOC_ID)
        rows = (await self._medic.all_docs(start_key=MESSAGES_PREFIX,
                                           end_key=MESSAGES_PREFIX + "\ufff0")).get("rows") or []
        revs = (settings_doc.get("_rev") if settings_doc else None,
                tuple((row.get("id"), (row.get("value") or {}).get("rev")) for row in rows))
        current = self._settings.current.rev if self._settings.current else None
        if revs[0] != current and (seen is None or revs[0] != seen[0]):
            await self._settings.load(self._medic)
        if seen is not None and revs[1] != seen[1]:
            await self._translations.load(self._medic)
        return revs

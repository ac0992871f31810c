"""The app settings in force, and who is told when they change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from config.settings import SETTINGS_DOC_ID, Settings, SettingsError, parse_settings
from worker.couch.client import Database
from worker.logs import get_logger

log = get_logger(__name__)

Listener = Callable[[Settings | None, Settings], Awaitable[None]]


class SettingsStore:
    def __init__(self) -> None:
        self.current: Settings | None = None
        self.last_error: str | None = None
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """`listener(old, new)` runs after every accepted change of the settings."""
        self._listeners.append(listener)

    async def load(self, medic: Database) -> None:
        """Read the settings doc once, directly (at start). Missing → CHT's defaults."""
        doc = await medic.get_or_none(SETTINGS_DOC_ID)
        if doc is None:
            log.warning("settings_missing", detail="no settings doc in medic; using CHT defaults")
            await self.put_in_force(Settings())
            return
        try:
            settings = parse_settings(doc)
        except SettingsError as exc:
            await self.refuse(str(exc), doc.get("_rev"))
            if self.current is None:
                # Nothing good to keep: run with the defaults, which never send.
                await self.put_in_force(Settings())
            return
        await self.put_in_force(settings)

    async def put_in_force(self, settings: Settings) -> None:
        old = self.current
        self.current = settings
        self.last_error = None
        log.info("settings_loaded", **settings.summary())
        for listener in self._listeners:
            await listener(old, settings)

    async def refuse(self, reason: str, rev: str | None) -> None:
        self.last_error = reason
        log.error("settings_invalid", error=reason, rev=rev,
                  kept_rev=self.current.rev if self.current else None)

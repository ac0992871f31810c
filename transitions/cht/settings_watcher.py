"""The settings watcher: the `settings` doc changed, so the app settings are reloaded.

The doc arrives in the same changes feed as everything else. A broken doc is reported and the
last good settings stay in force; an unchanged one (same rev) is ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from config.settings import SETTINGS_DOC_ID, Settings, SettingsError, parse_settings


@dataclass(frozen=True)
class SettingsDecision:
    settings: Settings | None  # new settings to put in force, or None
    error: str | None = None  # why the doc was refused


def decide(doc: Mapping[str, Any], current: Settings | None) -> SettingsDecision:
    """Pure: what a new revision of the settings doc means for the settings in force."""
    if current is not None and current.rev is not None and doc.get("_rev") == current.rev:
        return SettingsDecision(None)
    try:
        return SettingsDecision(parse_settings(doc))
    except SettingsError as exc:
        return SettingsDecision(None, str(exc))


class SettingsWatcher:
    name = "settings_watcher"

    def __init__(
        self,
        current: Callable[[], Settings | None],
        put_in_force: Callable[[Settings], Awaitable[None]],
        refuse: Callable[[str, str | None], Awaitable[None]],
    ) -> None:
        self._current = current
        self._put_in_force = put_in_force
        self._refuse = refuse

    def matches(self, doc: Mapping[str, Any]) -> bool:
        return doc.get("_id") == SETTINGS_DOC_ID

    async def apply(self, doc: dict[str, Any]) -> None:
        decision = decide(doc, self._current())
        if decision.error is not None:
            await self._refuse(decision.error, doc.get("_rev"))
        elif decision.settings is not None:
            await self._put_in_force(decision.settings)

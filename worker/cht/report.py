"""The part of /healthz about CHT's settings and translations in force (no metrics of its own)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric

from worker.cht.settings import SettingsStore
from worker.cht.translations import TranslationsStore


class ChtReport:
    def __init__(self, settings: SettingsStore, translations: TranslationsStore) -> None:
        self._settings = settings
        self._translations = translations

    async def health(self) -> dict[str, Any]:
        current = self._settings.current
        return {"settings": current.summary() if current else None,
                "settings_error": self._settings.last_error,
                "translations": self._translations.current.summary()}

    def metrics(self, part: Mapping[str, Any]) -> Iterable[Metric]:
        return ()

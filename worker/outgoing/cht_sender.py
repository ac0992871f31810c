"""Watches whether CHT's own RapidPro sender runs; while it does, the worker stands down.

CHT's api sends every minute through the service `sms.outgoing_service` names; for 'rapidpro' it
sends when `sms.rapidpro.url` is set and its vault holds `rapidpro:outgoing` (transitions/dispatch.py
`cht_sender_runs`). Two senders for one CHT send messages twice, so while CHT's sender is on the
worker sends nothing (the sending gate says why), logs an error every check, and shows it in
/healthz and the metrics. The settings are re-checked as they change, the vault every `interval`;
once CHT's sender is off, `on_change` lets the worker take over (a sweep of pending messages).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from config.settings import Settings
from transitions.dispatch import CHT_SENDER_ON, CHT_SENDER_UNKNOWN, cht_sender_runs
from worker.couch.client import CouchError, Unauthorized
from worker.logs import get_logger
from worker.rapidpro.credentials import Vault

log = get_logger(__name__)


class ChtSenderWatch:
    def __init__(self, vault: Vault, settings: Callable[[], Settings | None], *, interval: float = 60.0,
                 on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        self._vault = vault
        self._settings = settings
        self._interval = interval
        self.on_change = on_change
        self.on = False  # CHT's own sender runs, or cannot be ruled out (as last seen)
        self.reason: str | None = None  # why the worker stands down (CHT_SENDER_ON / _UNKNOWN)
        self.vault_error: str | None = None  # the vault could not be read
        self.checks = 0

    async def check(self, *, notify: bool = True) -> bool:
        """Look again (the settings as loaded, the vault now); True while CHT's sender runs or
        cannot be ruled out. Calls `on_change` when that flips (unless `notify` is False)."""
        settings = self._settings()
        in_vault, reason = False, self.reason  # CouchDB away: as last seen
        if settings is not None and settings.outgoing_service == "rapidpro":
            try:
                in_vault = await self._vault.has("rapidpro:outgoing")
                self.vault_error, reason = None, CHT_SENDER_ON
            except Unauthorized as exc:
                # CHT 4.x's vault is for server admins only: a user that may not read it cannot
                # tell whether CHT's sender runs, so it must not send under CHT's own service name.
                self.vault_error, in_vault, reason = f"{exc}", True, CHT_SENDER_UNKNOWN
            except CouchError as exc:
                self.vault_error, in_vault = f"{type(exc).__name__}: {exc}", self.on
        now_on = cht_sender_runs(settings, in_vault)
        self.checks += 1
        changed = now_on != self.on
        self.on, self.reason = now_on, (reason or CHT_SENDER_ON) if now_on else None
        if now_on:
            log.error("cht_sender_on", detail=self.reason, vault_error=self.vault_error)
        elif changed:
            log.info("cht_sender_off", detail="CHT's own RapidPro sender is off: the worker may send")
        if changed and notify and self.on_change is not None:
            await self.on_change()
        return now_on

    async def run(self) -> None:
        """Re-check every interval (a log line each time while CHT's sender is on)."""
        while True:
            await asyncio.sleep(self._interval)
            await self.check()

"""Watches whether CHT's own RapidPro sender runs; while it does, the worker stands down.

CHT's api sends every minute through the service `sms.outgoing_service` names; for 'rapidpro' it
sends when `sms.rapidpro.url` is set and its vault holds `rapidpro:outgoing` (transitions/outgoing/dispatch.py
`cht_sender_runs`). Two senders for one CHT send messages twice, so while CHT's sender is on the
worker sends nothing (the sending gate says why), logs an error every check, and shows it in
/healthz and the metrics. Whether it runs is judged on the settings in force at each send and on
the vault as last read (every `interval`); once CHT's sender is off, `on_change` lets the worker
take over (a sweep of pending messages).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from config.settings import Settings
from transitions.outgoing.dispatch import CHT_SENDER_ON, CHT_SENDER_UNKNOWN, cht_sender_runs
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
        self._in_vault: bool | None = None  # rapidpro:outgoing in CHT's vault, as last read (None: never)
        self._unreadable = False  # the vault is closed to this user: CHT's sender cannot be ruled out
        self.vault_error: str | None = None  # why the last read failed
        self.checks = 0

    @property
    def reason(self) -> str | None:
        """Why the worker stands down (CHT_SENDER_ON / _UNKNOWN), or None. Judged on the settings
        in force now and the vault as last read, so a settings change counts at once."""
        if not cht_sender_runs(self._settings(), True):
            return None  # CHT's sender is off whatever the vault holds
        if self._unreadable:
            return CHT_SENDER_UNKNOWN
        return None if self._in_vault is False else CHT_SENDER_ON  # never read: assume it runs

    @property
    def on(self) -> bool:
        return self.reason is not None

    async def check(self, *, notify: bool = True) -> bool:
        """Read the vault again; True while CHT's sender runs or cannot be ruled out. Calls
        `on_change` when the answer flips (unless `notify` is False)."""
        was = self.on
        try:
            self._in_vault = await self._vault.has("rapidpro:outgoing")
            self._unreadable, self.vault_error = False, None
        except Unauthorized as exc:
            # CHT 4.x's vault is for server admins only: a user that may not read it cannot tell
            # whether CHT's sender runs, so it must not send under CHT's own service name.
            self._unreadable, self.vault_error = True, str(exc)
        except CouchError as exc:  # CouchDB away: the last reading stands
            self.vault_error = f"{type(exc).__name__}: {exc}"
        self.checks += 1
        now = self.on
        if now:
            log.error("cht_sender_on", detail=self.reason, vault_error=self.vault_error)
        elif was:
            log.info("cht_sender_off", detail="CHT's own RapidPro sender is off: the worker may send")
        if was != now and notify and self.on_change is not None:
            await self.on_change()
        return now

    async def run(self) -> None:
        """Re-read every interval (a log line each time while CHT's sender is on)."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception as exc:  # a bug or an unforeseen answer (the take-over included): log it,
                # keep watching; an uncaught error here would stop the whole daemon
                log.error("cht_sender_check_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=True)

"""The channel watcher: every CHANNEL_CHECK_INTERVAL the active worker reads `channels.json`
(one call, at the budget's CHANNELS priority) and keeps each channel's `last_seen`, battery and
network for /healthz (`rapidpro.channels`) and /metrics. The judging is transitions/rapidpro/channels.py.

An Android relayer that went to sleep is the commonest silent failure on the sending side:
RapidPro accepts and queues the messages, the worker records them as sent to the gateway, and
nothing leaves the phone. A channel that stops syncing is logged once (`channel_asleep`), and
once again when it is back (`channel_awake`); a workspace left without an active channel logs
`no_active_channel`. A failed read keeps the last reading (with `last_error`) and tries
again at the next interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from config.settings import Settings
from transitions.cht.timestamps import cht_time
from transitions.rapidpro.channels import Channel, active_count, asleep, channel_health, read_channels
from worker.couch.client import CouchError
from worker.logs import get_logger
from worker.rapidpro.budget import Priority
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.credentials import Credential
from worker.rapidpro.errors import RapidProError
from worker.rapidpro.workspace import Workspace

log = get_logger(__name__)


class ChannelWatcher:
    def __init__(self, *, client: RapidProClient, token: Credential, settings: Callable[[], Settings | None],
                 interval: float, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._token = token
        self._settings = settings
        self.interval = interval
        self._clock = clock
        self.running = False
        self.channels: list[Channel] | None = None  # the last reading; None before the first
        self.checked_at: float | None = None
        self.last_error: str | None = None
        self.skipped_reason: str | None = None
        self._asleep: set[str] = set()
        self._none_active = False

    async def run(self) -> None:
        """Until cancelled (the session ends): a reading now, then one every interval."""
        self.running = True
        try:
            while True:
                try:
                    await self.check_once()
                except Exception as exc:  # a bug or an answer we did not foresee: log it, keep going
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("channel_check_crashed", error=self.last_error, exc_info=True)
                await asyncio.sleep(self.interval)
        finally:
            self.running = False

    async def check_once(self) -> None:
        """One reading; a failure is kept in `last_error` (and logged), the last reading stays."""
        try:
            await self._read()
        except (RapidProError, CouchError) as exc:  # CouchDB: the token may come from CHT's vault
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("channel_check_failed", error=self.last_error)

    async def _read(self) -> None:
        settings = self._settings()
        url = settings.rapidpro_url if settings is not None else None
        token = await self._token.get() if url else None
        if not url or not token:
            self.skipped_reason = "no RapidPro API token" if url else "no sms.rapidpro.url in CHT's settings"
            return
        self.skipped_reason = None
        rows = await Workspace(self._client, url, token, priority=Priority.CHANNELS).channels()
        self.last_error = None
        self.checked_at = self._clock()
        self.channels = read_channels(rows)
        self._log_changes(self.channels, self.checked_at)

    def _log_changes(self, channels: list[Channel], now: float) -> None:
        sleeping = {c.uuid for c in channels if asleep(c, now)}
        for channel in channels:
            was, now_asleep = channel.uuid in self._asleep, channel.uuid in sleeping
            if now_asleep and not was:
                seen = cht_time(channel.last_seen) if channel.last_seen is not None else None
                log.warning("channel_asleep", channel=channel.uuid, name=channel.name,
                            address=channel.address, last_seen=seen)
            elif was and not now_asleep:
                log.info("channel_awake", channel=channel.uuid, name=channel.name, address=channel.address)
        self._asleep = sleeping
        none_active = active_count(channels, now) == 0
        if none_active and not self._none_active:
            log.warning("no_active_channel", channels=len(channels))
        self._none_active = none_active

    def health(self) -> dict[str, Any]:
        now = self._clock()
        channels = self.channels
        return {
            "watching": self.running, "interval_s": self.interval,
            "checked_at": cht_time(self.checked_at) if self.checked_at is not None else None,
            "last_error": self.last_error, "skipped_reason": self.skipped_reason,
            "active": None if channels is None else active_count(channels, now),
            "items": None if channels is None else [channel_health(c, now) for c in channels],
        }

"""Whether the worker sends, re-judged when CHT's settings or CHT's own sender change: switched
to the worker (or to another RapidPro host), it sends what is pending now and asks RapidPro about
every non-final message, as CHT does on such a switch."""

from __future__ import annotations

from collections.abc import Callable

from config.settings import Settings
from worker.logs import get_logger
from worker.outgoing.cht_sender import ChtSenderWatch
from worker.outgoing.sender import OutgoingSender
from worker.outgoing.sweep import PendingSweep

log = get_logger(__name__)


class SendingSwitch:
    def __init__(self, sender: OutgoingSender, cht_sender: ChtSenderWatch,
                 settings: Callable[[], Settings | None], sweep: Callable[[], PendingSweep | None],
                 rescan: Callable[[], None], started: Callable[[], bool]) -> None:
        self._sender = sender
        self._cht_sender = cht_sender
        self._settings = settings
        self._sweep = sweep  # the active session's, or None (a standby, or start-up)
        self._rescan = rescan  # status tracking: ask about every non-final message
        self._started = started  # the feed runs (start-up checks CHT's sender once by itself)

    async def settings_changed(self, old: Settings | None, new: Settings) -> None:
        if self._started():
            await self._cht_sender.check(notify=False)  # the switch below covers a change
        url_changed = old is not None and old.rapidpro_url != new.rapidpro_url
        await self.in_charge_changed(url_changed)

    async def in_charge_changed(self, url_changed: bool = False) -> None:
        """The settings, or CHT's own sender, changed: whether the worker sends may have too."""
        was_in_charge = self._sender.gate.not_in_charge is None
        now_in_charge = await self._sender.refresh_gate()
        sweep = self._sweep()
        if now_in_charge and (not was_in_charge or url_changed) and sweep is not None:
            settings = self._settings()
            log.info("outgoing_switched", rapidpro_url=settings.rapidpro_url if settings else None)
            sweep.trigger()
            self._rescan()

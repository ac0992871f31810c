"""systemd's service notification protocol, spoken directly (sd_notify(3)).

The message is one datagram of `KEY=VALUE` lines sent to the AF_UNIX socket named by
`$NOTIFY_SOCKET` (a path, or `@name` for Linux's abstract namespace). Outside systemd the variable
is unset and every call does nothing. The watchdog interval comes from `$WATCHDOG_USEC` (honoured
only when `$WATCHDOG_PID` is unset or names this process, as sd_watchdog_enabled(3) says).

Pings are sent by a task on the event loop, so a loop that stops turning (a blocking call, a
busy loop) stops the pings and systemd restarts the service after `WatchdogSec=`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

from worker.logs import get_logger

log = get_logger(__name__)


def _address(raw: str) -> str | bytes | None:
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()  # abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # vsock and other forms systemd may use: not for us


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._socket: socket.socket | None = None
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if self._address is not None and usec.isdigit() and int(usec) > 0 \
                and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str) -> bool:
        """Send `KEY=value` lines (`ready="1"` → `READY=1`); True when the datagram was sent."""
        if self._address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)  # never stall the loop on a full queue
            self._socket.sendto(message, self._address)
            return True
        except OSError as exc:
            log.warning("sd_notify_failed", error=f"{type(exc).__name__}: {exc}")
            return False

    def ready(self, status: str | None = None) -> None:
        fields = {"ready": "1"}
        if status:
            fields["status"] = status
            self._last_status = status
        self.notify(**fields)

    def status(self, text: str) -> None:
        """STATUS= for `systemctl status`; sent only when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.notify(status=text)

    def stopping(self) -> None:
        self.notify(stopping="1", status="stopping")

    async def watchdog(self) -> None:
        """Ping at half the interval, for as long as the event loop runs this task."""
        if self.watchdog_interval is None:
            return
        while True:
            self.notify(watchdog="1")
            await asyncio.sleep(self.watchdog_interval / 2)

    async def status_loop(self, describe: Callable[[], Awaitable[str]], interval: float = 10.0) -> None:
        """Keep STATUS= current (feed caught up or backlog, sending or why not)."""
        if not self.enabled:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                self.status(await describe())
            except Exception as exc:  # a status line is never worth a crash
                log.warning("sd_status_failed", error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None

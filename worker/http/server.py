"""The worker's HTTP server: /healthz, /livez, and the webhook added by its module.

`/livez` is the systemd watchdog's signal over HTTP, for orchestrators without sd_notify
(Kubernetes' liveness probe): it is answered from the event loop and asks nothing else (no
CouchDB, no RapidPro), so it stops answering exactly when a wedged loop would stop the
WATCHDOG=1 pings, and keeps answering while CouchDB is down (a restart would not help then).

Shutdown is ours, not aiohttp's: aiohttp's own (AppRunner.cleanup) first closes every connection
for reading — a request whose body is still arriving can then never complete — and then waits
up to its shutdown timeout (60 s by default) for that very request. Instead `stop(grace)` stops
listening at once, lets requests in progress finish (bodies still arrive) for up to `grace`
seconds, then sets `STOPPING_KEY` so the handlers still running answer 503 at once, and only
then closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from worker.logs import get_logger
from worker.stopping import STOPPING_KEY

log = get_logger(__name__)

HealthProvider = Callable[[], Awaitable[dict[str, Any]]]
HEALTH_KEY = web.AppKey("health", HealthProvider)

# After STOPPING_KEY is set: how long handlers get to send their 503, and how long aiohttp then
# waits for each connection. Together they bound what shutdown adds to `grace`.
ANSWER_WAIT = 0.5
CLOSE_WAIT = 0.5


async def healthz(request: web.Request) -> web.Response:
    body = await request.app[HEALTH_KEY]()
    return web.json_response(body, status=200)


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"alive": True}, status=200)


def build_app(health: HealthProvider) -> web.Application:
    app = web.Application()
    app[HEALTH_KEY] = health
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    return app


class ListenError(Exception):
    """The server could not bind its address."""


class HttpServer:
    """aiohttp's AppRunner + TCPSite: the server is one part of a bigger program."""

    def __init__(self, app: web.Application, host: str, port: int, *,
                 keepalive_timeout: float = 75.0, door: str = "operator") -> None:
        self.stopping = asyncio.Event()
        app[STOPPING_KEY] = self.stopping
        app.middlewares.append(self._track)
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # keepalive_timeout also bounds how long a new connection may take to send its headers.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_WAIT,
                                     keepalive_timeout=keepalive_timeout)
        self._host = host
        self._door = door
        self._port = port
        self.port: int | None = None

    @web.middleware
    async def _track(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self._active += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:  # the port is taken (often by a previous run still stopping)
            await self._runner.cleanup()
            raise ListenError(f"cannot listen on {self._host}:{self._port} ({self._door} door): "
                              f"{exc.strerror or exc}") from None
        # The runner's bound addresses tell the real port when 0 was asked for.
        addresses = self._runner.addresses
        self.port = addresses[0][1] if addresses else self._port
        log.info("http_listening", host=self._host, port=self.port, door=self._door)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening now; give requests in progress `grace` s, then cut them off (503)."""
        for site in list(self._runner.sites):
            await site.stop()
        if not await self._until_idle(grace):
            log.warning("http_requests_cut_off", requests=self._active, grace_s=grace)
            self.stopping.set()
            await self._until_idle(ANSWER_WAIT)
        self.stopping.set()
        await self._runner.cleanup()

    async def _until_idle(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self._idle.is_set()

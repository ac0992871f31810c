"""The worker's HTTP server: /healthz now; the webhook and metrics are added by their modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from worker.logs import get_logger

log = get_logger(__name__)

HealthProvider = Callable[[], Awaitable[dict[str, Any]]]
HEALTH_KEY = web.AppKey("health", HealthProvider)


async def healthz(request: web.Request) -> web.Response:
    body = await request.app[HEALTH_KEY]()
    return web.json_response(body, status=200)


def build_app(health: HealthProvider) -> web.Application:
    app = web.Application()
    app[HEALTH_KEY] = health
    app.router.add_get("/healthz", healthz)
    return app


class HttpServer:
    """aiohttp's AppRunner + TCPSite: the server is one part of a bigger program."""

    def __init__(self, app: web.Application, host: str, port: int, *,
                 keepalive_timeout: float = 75.0, door: str = "operator") -> None:
        # keepalive_timeout also bounds how long a new connection may take to send its headers.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=keepalive_timeout)
        self._host = host
        self._door = door
        self._port = port
        self.port: int | None = None

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # the bound socket tells the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("http_listening", host=self._host, port=self.port, door=self._door)

    async def stop(self) -> None:
        await self._runner.cleanup()

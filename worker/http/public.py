"""The public door: what RapidPro (or CHT's nginx in front of it) may reach, and nothing else.

`WEBHOOK_LISTEN_HOST`/`WEBHOOK_LISTEN_PORT` open a second listener serving only the two webhook
paths (the same handler as the operator's door) and a minimal `GET /readyz` (`{"ready": bool}`,
no reasons: they name CouchDB and the settings). Every other path answers aiohttp's plain 404.

Abuse is refused cheaply here:
- at most `concurrency` requests per client are handled at once; as many more may wait for a
  slot up to `read_timeout`, any beyond answer 429 at once (no lock-out: the next request is
  judged afresh, so RapidPro can never lock itself out);
- a request body must arrive within `read_timeout` of the headers, or the connection is closed
  (the headers themselves are bounded by the server's keep-alive timeout, which aiohttp arms
  from the moment a connection opens);
- `/readyz` asks CouchDB at most once a second, however often it is called.
The webhook itself checks the key before any CouchDB work (worker/incoming/webhook.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from worker.http.metrics import Readiness
from worker.incoming.webhook import IncomingWebhook
from worker.logs import get_logger

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READY_CACHE_SECONDS = 1.0


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def client_of(request: web.Request) -> str:
    """Who is asking: the peer, or, when the peer is a proxy on this machine (CHT's nginx), the
    address it passes on in X-Real-IP / X-Forwarded-For. Only a local process can be that peer,
    so a remote client cannot choose its own key this way."""
    peer = request.remote or "unknown"
    if _loopback(peer):
        forwarded = (request.headers.get("X-Real-IP")
                     or request.headers.get("X-Forwarded-For", "").split(",")[-1]).strip()
        if forwarded:
            return forwarded[:64]
    return peer


class _Slots:
    __slots__ = ("active", "freed", "waiting")

    def __init__(self) -> None:
        self.active = 0
        self.waiting = 0
        self.freed = asyncio.Event()


class ClientLimiter:
    """At most `concurrency` requests per client at once, `concurrency` more waiting."""

    def __init__(self, concurrency: int, wait: float) -> None:
        self.concurrency = concurrency
        self.wait = wait
        self._clients: dict[str, _Slots] = {}
        self.refused = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = client_of(request)
        slots = self._clients.setdefault(key, _Slots())
        try:
            if not await self._acquire(slots):
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:  # a flood is one line, not thousands
                    log.warning("public_request_refused", reason="too many at once from one client",
                                refused_total=self.refused)
                return web.json_response({"code": 429, "error": "Too many requests"}, status=429,
                                         headers={"Retry-After": "1"})
            try:
                return await handler(request)
            finally:
                slots.active -= 1
                slots.freed.set()
        finally:
            if slots.active == 0 and slots.waiting == 0:
                self._clients.pop(key, None)

    async def _acquire(self, slots: _Slots) -> bool:
        if slots.active < self.concurrency:
            slots.active += 1
            return True
        if slots.waiting >= self.concurrency:
            return False
        slots.waiting += 1
        try:
            async with asyncio.timeout(self.wait):
                while slots.active >= self.concurrency:
                    slots.freed.clear()
                    await slots.freed.wait()
        except TimeoutError:
            return False
        finally:
            slots.waiting -= 1
        slots.active += 1
        return True


def body_deadline(read_timeout: float, max_body: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Wait (without consuming it) until a POST body has arrived, at most `read_timeout`; a
    client trickling its body is cut off then instead of holding a slot for ever."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        # A declared oversized body is refused by the handler without reading it.
        oversized = length is not None and length > max_body
        if request.method == "POST" and request.body_exists and not oversized:
            try:
                # A connection lost before we got here leaves the error on the stream, which
                # wait_eof() would not notice.
                if request.content.exception() is not None or request.transport is None:
                    raise ConnectionResetError("connection lost")
                async with asyncio.timeout(read_timeout):
                    await request.content.wait_eof()
            except ConnectionError:  # the client hung up mid-body: nothing to answer
                log.info("public_request_abandoned", reason="client closed the connection", path=request.path)
                return web.Response(status=400)
            except TimeoutError:
                log.warning("public_request_dropped", reason="body not received in time",
                            timeout_s=read_timeout, path=request.path)
                response = web.json_response({"code": 408, "error": "Request timeout"}, status=408)
                response.force_close()
                with contextlib.suppress(ConnectionError):
                    await response.prepare(request)
                    await response.write_eof()
                if request.transport is not None:
                    request.transport.close()
                return response
        return await handler(request)

    return middleware


class PublicReadiness:
    """`{"ready": bool}` only; CouchDB is asked at most once per READY_CACHE_SECONDS."""

    def __init__(self, readiness: Readiness, clock: Callable[[], float] = time.monotonic) -> None:
        self._readiness = readiness
        self._clock = clock
        self._lock = asyncio.Lock()
        self._ready = False
        self._checked_at: float | None = None

    async def handle(self, request: web.Request) -> web.Response:
        async with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= READY_CACHE_SECONDS:
                self._ready = not await self._readiness()
                self._checked_at = self._clock()
            ready = self._ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)


async def _hide_versions(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would name itself and Python with their versions: nothing the internet needs.
    response.headers["Server"] = "cht-rapidpro-worker"


def build_public_app(webhook: IncomingWebhook, *, readiness: Readiness,
                     observe_webhook: Callable[[web.Application], None], client_concurrency: int,
                     read_timeout: float, max_body: int) -> web.Application:
    limiter = ClientLimiter(client_concurrency, wait=read_timeout)
    app = web.Application(middlewares=[
        limiter.middleware,
        body_deadline(read_timeout, max_body),
    ])
    app.on_response_prepare.append(_hide_versions)
    webhook.register(app)
    observe_webhook(app)
    app.router.add_get("/readyz", PublicReadiness(readiness).handle)
    return app

"""Operator requests to the running daemon: rescan statuses, retry parked changes.

`POST /admin/rescan` and `POST /admin/parked/retry` on the daemon's own listener. The listener
also serves RapidPro's webhook and may face a network, so these answer only requests from the
loopback interface that carry the admin token: an HMAC of the CouchDB credentials, which the
command line derives from the same configuration and nobody else has.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from config.env import Config
from worker.couch.client import CouchError
from worker.feed.parking import NotRunning
from worker.logs import get_logger

log = get_logger(__name__)

RESCAN_PATH = "/admin/rescan"
PARKED_RETRY_PATH = "/admin/parked/retry"


def admin_token(config: Config) -> str:
    """What the command line presents; only someone holding the CouchDB credentials can make it."""
    key = f"{config.couch.username or ''}:{config.couch.password or ''}".encode()
    return hmac.new(key, f"cht-rapidpro-worker admin {config.couch.server_url}".encode(),
                    hashlib.sha256).hexdigest()


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Admin:
    """The operator's requests, answered by the parts that own them: `rescan` (status tracking)
    and `retry_parked` (the feed's parked changes)."""

    def __init__(self, token: str, *, rescan: Callable[[], None],
                 retry_parked: Callable[[list[str] | None], Awaitable[dict[str, list[str]]]]) -> None:
        self._token = token
        self._rescan = rescan
        self._retry_parked = retry_parked

    def register(self, app: web.Application) -> None:
        app.router.add_post(RESCAN_PATH, self._guard(self.rescan))
        app.router.add_post(PARKED_RETRY_PATH, self._guard(self.retry_parked))

    def _guard(self, handler: Callable[[web.Request], Awaitable[web.Response]]
               ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def guarded(request: web.Request) -> web.Response:
            presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not _loopback(request.remote) or not hmac.compare_digest(presented, self._token):
                log.warning("admin_refused", path=request.path, remote=request.remote)
                return web.json_response({"error": "forbidden"}, status=403)
            return await handler(request)
        return guarded

    async def rescan(self, request: web.Request) -> web.Response:
        self._rescan()
        log.info("admin_rescan")
        return web.json_response({"rescan": "started"}, status=202)

    async def retry_parked(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": 'expected {"doc_ids": [...]} or {"all": true}'}, status=400)
        doc_ids: list[str] | None
        if body.get("all") is True:
            doc_ids = None
        elif isinstance(body.get("doc_ids"), list) and all(isinstance(d, str) for d in body["doc_ids"]):
            doc_ids = list(body["doc_ids"])
        else:
            return web.json_response({"error": "doc_ids must be a list of strings"}, status=400)
        try:
            result = await self._retry_parked(doc_ids)
        except NotRunning as exc:
            return web.json_response({"error": str(exc)}, status=503)
        except CouchError as exc:
            return web.json_response({"error": f"CouchDB: {exc}"}, status=503)
        log.info("admin_parked_retry", **{k: len(v) for k, v in result.items()})
        return web.json_response(result, status=202)

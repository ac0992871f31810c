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
from typing import TYPE_CHECKING, Any

from aiohttp import web

from config.env import Config
from worker.couch.client import CouchError
from worker.feed.changes import Change
from worker.logs import get_logger

if TYPE_CHECKING:
    from worker.app import Worker

log = get_logger(__name__)

RESCAN_PATH = "/admin/rescan"
PARKED_RETRY_PATH = "/admin/parked/retry"
Process = Callable[[Change], Awaitable[None]]


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
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._token = admin_token(worker.config)
        self._retrying: set[str] = set()

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
        self._worker.status.trigger_rescan()
        log.info("admin_rescan")
        return web.json_response({"rescan": "started"}, status=202)

    async def retry_parked(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": 'expected {"doc_ids": [...]} or {"all": true}'}, status=400)
        dispatcher = self._worker.dispatcher
        if dispatcher is None:
            return web.json_response({"error": "the worker is still starting"}, status=503)
        parked = self._worker.parked
        try:
            if body.get("all") is True:
                doc_ids = [str(doc["doc_id"]) for doc in await parked.list() if doc.get("doc_id")]
            elif isinstance(body.get("doc_ids"), list) and all(isinstance(d, str) for d in body["doc_ids"]):
                doc_ids = list(body["doc_ids"])
            else:
                return web.json_response({"error": "doc_ids must be a list of strings"}, status=400)
            result: dict[str, list[str]] = {"retrying": [], "not_parked": [], "gone": []}
            for doc_id in doc_ids:
                if await parked.get(doc_id) is None:
                    result["not_parked"].append(doc_id)
                    continue
                doc = await self._worker.medic.get_or_none(doc_id)
                if doc is None or doc.get("_deleted"):
                    await parked.drop(doc_id)  # nothing left to process
                    result["gone"].append(doc_id)
                    continue
                self._retrying.add(doc_id)
                # seq None: not a feed position, so the checkpoint ignores it (as the sweep does)
                await dispatcher.submit(Change(seq=None, doc_id=doc_id, doc=doc))
                result["retrying"].append(doc_id)
        except CouchError as exc:
            return web.json_response({"error": f"CouchDB: {exc}"}, status=503)
        log.info("admin_parked_retry", **{k: len(v) for k, v in result.items()})
        return web.json_response(result, status=202)

    def wrap(self, process: Process) -> Process:
        """The dispatcher's process step, dropping the parked entry once a retried doc succeeds
        (a failure parks it again, with the new error)."""
        async def processed(change: Change) -> None:
            await process(change)
            if change.doc_id in self._retrying:
                self._retrying.discard(change.doc_id)
                await self._worker.parked.drop(change.doc_id)
                log.info("parked_change_retried", doc_id=change.doc_id)
        return processed

    def health(self) -> dict[str, Any]:
        return {"retrying": len(self._retrying)}

"""An HTTP proxy in front of CouchDB that records every request (method, path) the worker makes.

Works the same in front of the test server and Apache CouchDB, so "no CouchDB request" can be
checked on both. Optionally it swaps the worker's Basic credentials for the real admin's: the
worker can then be given a distinctive password to look for in its output, while CouchDB's own
admin password stays what the test server or the CouchDB under test was started with.

`accept_only` plays a clustered CouchDB whose writes reach too few copies: a write of a doc it
names is stored (one node has it, as one copy of a cluster would) but answered as a coordinator
answers then — 202, and `"accepted": true` for that doc in `_bulk_docs`.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Callable

import aiohttp
import yarl
from aiohttp import web

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "host", "content-length"}


class CountingProxy:
    def __init__(self, target_url: str, *, accept: tuple[str, str] | None = None) -> None:
        """`target_url`: the server with admin credentials in it; `accept`: (user, password) the
        worker presents, replaced by the target's credentials (None: forwarded as they are)."""
        parts = urllib.parse.urlsplit(target_url)
        self._target = f"{parts.scheme}://{parts.hostname}:{parts.port}"
        self._real_auth = None
        if parts.username is not None:
            raw = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._real_auth = "Basic " + base64.b64encode(raw.encode()).decode()
        self._accept = None
        if accept is not None:
            self._accept = "Basic " + base64.b64encode(f"{accept[0]}:{accept[1]}".encode()).decode()
        self.requests: list[tuple[str, str]] = []
        # (db name, doc id) -> True when its writes are to be answered "accepted" (202).
        self.accept_only: Callable[[str, str], bool] | None = None
        self.accepted: list[tuple[str, str]] = []  # the writes answered so
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    def url(self, user: str, password: str, db: str) -> str:
        return (f"http://{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
                f"@127.0.0.1:{self.port}/{db}")

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.requests.append((request.method, request.path))
        # aiohttp's server has already decompressed a gzip request body (the CouchDB SDK sends them).
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _HOP_BY_HOP and k.lower() != "content-encoding"}
        if self._accept is not None:
            if headers.get("Authorization") != self._accept:
                return web.json_response({"error": "unauthorized", "reason": "proxy: wrong credentials"},
                                         status=401)
            if self._real_auth is not None:
                headers["Authorization"] = self._real_auth
        body = await request.read()
        target = yarl.URL(self._target + request.raw_path, encoded=True)  # the query exactly as sent
        accepting = self._accepting(request.method, request.path, body)
        if accepting:
            return await self._forward_accepted(request, target, headers, body, accepting)
        async with self._session.request(request.method, target, headers=headers, data=body or None,
                                         timeout=aiohttp.ClientTimeout(total=120)) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers[key] = value
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionError:  # the worker hung up (a long poll it gave up on, shutdown)
                pass
            return response

    def _accepting(self, method: str, path: str, body: bytes) -> set[str]:
        """The doc ids of this write to answer as accepted (empty: forward as it is)."""
        if self.accept_only is None or method not in ("PUT", "POST"):
            return set()
        parts = [urllib.parse.unquote(part) for part in path.strip("/").split("/")]
        if len(parts) == 2 and parts[1] == "_bulk_docs" and method == "POST":
            try:
                docs = json.loads(body or b"{}").get("docs") or []
            except ValueError:
                return set()
            return {str(doc.get("_id")) for doc in docs
                    if isinstance(doc, dict) and self.accept_only(parts[0], str(doc.get("_id")))}
        if len(parts) == 2 and method == "PUT" and not parts[1].startswith("_"):
            return {parts[1]} if self.accept_only(parts[0], parts[1]) else set()
        return set()

    async def _forward_accepted(self, request: web.Request, target: yarl.URL, headers: dict[str, str],
                                body: bytes, ids: set[str]) -> web.Response:
        assert self._session is not None
        async with self._session.request(request.method, target, headers=headers, data=body or None,
                                         timeout=aiohttp.ClientTimeout(total=120)) as upstream:
            raw = await upstream.read()
            status = upstream.status
        if status not in (200, 201):
            return web.Response(status=status, body=raw, content_type="application/json")
        answer = json.loads(raw)
        if isinstance(answer, list):  # _bulk_docs: per doc
            for item in answer:
                if isinstance(item, dict) and "error" not in item and item.get("id") in ids:
                    item["accepted"] = True
                    self.accepted.append((request.path, str(item.get("id"))))
        else:
            self.accepted.append((request.path, next(iter(ids))))
        return web.json_response(answer, status=202)

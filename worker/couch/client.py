"""A small async interface to CouchDB.

Document calls go through `ibmcloudant` (our chosen SDK), which is blocking: each call runs in a
bounded thread pool with a request timeout, so the event loop never blocks and at most
`couch_threads` calls are outstanding. The `_changes` feed is read with aiohttp instead: a
longpoll can last a minute and a thread cannot be cancelled, while an aiohttp request is
cancelled at once on shutdown, and we see `Retry-After` on 429/503 (the SDK's follower ignores it).

Errors are types: `NotFound`, `Conflict`, `Unauthorized`, `PreconditionFailed`, `BadRequest`,
`CouchUnavailable` (network, timeout, 5xx, 429 — worth retrying later), and `Accepted`.

On a clustered CouchDB (n copies of every doc, CHT's 3-node setup) there is no atomic
compare-and-set: each copy decides a write alone, and the coordinator answers 201 when `w` copies
took it, 202 (`"ok": true`, `"accepted": true` in `_bulk_docs`) when fewer but at least one did
(CouchDB's src/fabric/src/fabric_doc_update.erl). Writes that decide something — a claim, the
lease — ask for a quorum explicitly (`w`, from the database's `n`) and treat anything but 201 as
undecided (`Accepted`); reads that decide ask a quorum (`r`) and see every conflicting leaf
(`leaves`). One node, as tests and small deployments run it, always answers 201.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import requests
from ibm_cloud_sdk_core import ApiException, DetailedResponse
from ibm_cloud_sdk_core.authenticators import BasicAuthenticator, NoAuthAuthenticator
from ibmcloudant.cloudant_v1 import BulkDocs, CloudantV1

from config.env import CouchConnection
from worker.backoff import parse_retry_after

T = TypeVar("T")


class CouchError(Exception):
    status: int | None = None

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(Exception):
    """Worth retrying later as it is: nothing is wrong with the request itself."""

    retry_after: float | None = None
    # Set when the error knows better than a backoff when a retry can succeed (e.g. sending
    # paused until RapidPro is back): the retry waits for this instead.
    resume: Callable[[], Awaitable[None]] | None = None


class CouchUnavailable(CouchError, TransientError):
    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class NotFound(CouchError):
    pass


class Conflict(CouchError):
    pass


class PreconditionFailed(CouchError):
    pass


class Unauthorized(CouchError):
    """401/403: a configuration problem (wrong password, missing role)."""


class BadRequest(CouchError):
    pass


class Accepted(CouchError, TransientError):
    """A write stored on fewer copies than the quorum it asked for (HTTP 202, or `accepted` in
    `_bulk_docs`): it exists somewhere and may yet win or lose a conflict, so it decides nothing.
    `rev` is the revision it created on the copies that took it."""

    def __init__(self, message: str, rev: str | None) -> None:
        super().__init__(message, 202)
        self.rev = rev


def _error_for(status: int, reason: str, retry_after: float | None = None) -> CouchError:
    if status in (401, 403):
        return Unauthorized(reason, status)
    if status == 404:
        return NotFound(reason, status)
    if status == 409:
        return Conflict(reason, status)
    if status == 412:
        return PreconditionFailed(reason, status)
    if status == 429 or status >= 500:
        return CouchUnavailable(reason, status, retry_after)
    return BadRequest(reason, status)


def _translate(exc: ApiException) -> CouchError:
    response = exc.http_response
    retry_after = parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
    reason = exc.message or ""
    if response is not None and not reason:
        reason = response.text[:200]
    return _error_for(exc.status_code or 0, f"{exc.status_code}: {reason}", retry_after)


def _json_result(response: DetailedResponse) -> Any:
    """The SDK returns a raw `requests.Response` when a server forgets the JSON content type."""
    result = response.get_result()
    if isinstance(result, requests.Response):
        return json.loads(result.content or b"null")
    return result


@dataclass(frozen=True)
class ChangesPage:
    results: list[dict[str, Any]]
    last_seq: Any
    pending: int | None
    size: int | None = None  # bytes of the response, when known (sizes the next page)


class CouchServer:
    """One CouchDB server: the SDK client, its thread pool and an aiohttp session."""

    def __init__(self, connection: CouchConnection, *, timeout: float = 10.0, threads: int = 8) -> None:
        self.connection = connection
        self.timeout = timeout
        if connection.username:
            authenticator: Any = BasicAuthenticator(connection.username, connection.password or "")
        else:
            authenticator = NoAuthAuthenticator()
        self._sdk = CloudantV1(authenticator=authenticator)
        self._sdk.set_service_url(connection.server_url)
        self._sdk.set_http_config({"timeout": (min(5.0, timeout), timeout)})
        # requests' default pool holds 10 connections; match the thread count so none is thrown away
        adapter = requests.adapters.HTTPAdapter(pool_connections=threads, pool_maxsize=threads)
        self._sdk.get_http_client().mount("http://", adapter)
        self._sdk.get_http_client().mount("https://", adapter)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="couch")
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Accept": "application/json"}
        if connection.username:
            self._headers["Authorization"] = aiohttp.encode_basic_auth(connection.username,
                                                                       connection.password or "")

    def db(self, name: str) -> Database:
        return Database(self, name)

    async def call(self, fn: Callable[..., DetailedResponse], *args: Any, **kwargs: Any) -> DetailedResponse:
        """Run one SDK call in the pool, translating its errors to ours."""
        loop = asyncio.get_running_loop()
        job = functools.partial(fn, *args, **kwargs)
        try:
            # The SDK's own timeout bounds the thread; this bounds our wait even if it did not.
            async with asyncio.timeout(self.timeout * 2 + 5):
                return await loop.run_in_executor(self._pool, job)
        except ApiException as exc:
            raise _translate(exc) from None
        except (requests.exceptions.RequestException, TimeoutError, OSError) as exc:
            raise CouchUnavailable(f"{type(exc).__name__}: {exc}") from None

    @property
    def sdk(self) -> CloudantV1:
        return self._sdk

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No compression: a gzip-buffering server would hold longpoll output back.
            self._session = aiohttp.ClientSession(headers=self._headers,
                                                  skip_auto_headers=("Accept-Encoding",))
        return self._session

    async def request_json(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                           body: Any = None, timeout: float | None = None) -> Any:
        """A raw JSON request with aiohttp (for calls the SDK cannot cancel or does not offer)."""
        return (await self.request_json_sized(method, path, params=params, body=body, timeout=timeout))[0]

    async def request_json_status(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                                  body: Any = None, timeout: float | None = None) -> tuple[int, Any]:
        """`request_json`'s answer with its HTTP status (a 2xx: 201 and 202 differ on a cluster)."""
        status, answer, _ = await self._request(method, path, params=params, body=body, timeout=timeout)
        return status, answer

    async def request_json_sized(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                                 body: Any = None, timeout: float | None = None) -> tuple[Any, int]:
        """`request_json`'s answer and the size of the response body in bytes."""
        _, answer, size = await self._request(method, path, params=params, body=body, timeout=timeout)
        return answer, size

    async def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None,
                       body: Any, timeout: float | None) -> tuple[int, Any, int]:
        url = f"{self.connection.server_url}/{path.lstrip('/')}"
        client_timeout = aiohttp.ClientTimeout(total=timeout or self.timeout, connect=min(5.0, self.timeout))
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self.session().request(method, url, params=params, data=data, headers=headers,
                                              timeout=client_timeout) as response:
                raw = await response.read()
                if response.status >= 400:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    reason = f"{response.status}: {raw[:200].decode(errors='replace')}"
                    raise _error_for(response.status, reason, retry_after)
                # CouchDB-compatible servers do not always label JSON as JSON: parse regardless.
                return response.status, json.loads(raw or b"null"), len(raw)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CouchUnavailable(f"{type(exc).__name__}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise CouchUnavailable(f"invalid JSON from CouchDB: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class Database:
    """One database on a CouchServer.

    Every method that writes calls `_before_write()` first: with a `fence` (a callable that
    raises when this process may no longer write, e.g. a deposed lease holder), every write is
    refused in this one place, whichever method it goes through.
    """

    def __init__(self, server: CouchServer, name: str, *, fence: Callable[[], None] | None = None) -> None:
        self.server = server
        self.name = name
        self.on_write: Callable[[str, str], None] | None = None  # (doc_id, rev) after our writes
        self._quorum: int | None = None
        self._fence = fence

    def _before_write(self) -> None:
        if self._fence is not None:
            self._fence()

    def _wrote(self, doc_id: str, rev: str | None) -> None:
        if self.on_write is not None and rev:
            self.on_write(doc_id, rev)

    async def info(self) -> dict[str, Any]:
        return _json_result(await self.server.call(self.server.sdk.get_database_information, self.name))

    async def exists(self) -> bool:
        """`GET /db`: whether the database exists (a member may ask; creating needs a server admin)."""
        try:
            await self.server.request_json("GET", quote(self.name, safe=""))
        except NotFound:
            return False
        return True

    async def create(self) -> bool:
        """Create the database; False when it already exists."""
        self._before_write()
        try:
            await self.server.call(self.server.sdk.put_database, self.name)
        except PreconditionFailed:
            return False
        return True

    async def get(self, doc_id: str) -> dict[str, Any]:
        return _json_result(await self.server.call(self.server.sdk.get_document, self.name, doc_id))

    async def quorum(self) -> int:
        """Copies that make a majority of the database's `n` (`GET /db` → `cluster.n`): the `w`
        and `r` of decisive writes and reads. 1 on one node, or when the server does not say."""
        if self._quorum is None:
            info = await self.server.request_json("GET", quote(self.name, safe=""))
            n = (info.get("cluster") or {}).get("n") if isinstance(info, dict) else None
            self._quorum = n // 2 + 1 if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        return self._quorum

    async def write(self, doc: dict[str, Any]) -> str:
        """PUT `doc` asking a quorum of copies (cancellable, no thread); returns the new rev.

        Raises Conflict (stale `_rev`, or the doc exists for a create), and `Accepted` when fewer
        copies than the quorum took it (202): the caller has not won anything."""
        self._before_write()
        w = await self.quorum()
        path = f"{quote(self.name, safe='')}/{quote(doc['_id'], safe='')}"
        status, body = await self.server.request_json_status("PUT", path, params={"w": str(w)}, body=doc)
        rev = body.get("rev") if isinstance(body, dict) else None
        if status == 202:
            raise Accepted(f"{doc['_id']}: stored on fewer than {w} copies", rev)
        self._wrote(doc["_id"], rev)
        return str(rev)

    async def leaves(self, doc_id: str) -> list[dict[str, Any]]:
        """Every current (non-deleted) revision of a doc, read from a quorum: CouchDB's winner
        first, then its conflicts; [] when the doc does not exist (or is deleted)."""
        r = str(await self.quorum())
        path = f"{quote(self.name, safe='')}/{quote(doc_id, safe='')}"
        try:
            winner = await self.server.request_json("GET", path, params={"conflicts": "true", "r": r})
        except NotFound:
            return []
        if not isinstance(winner, dict):
            raise CouchUnavailable(f"unexpected answer for {doc_id}")
        conflicts = winner.pop("_conflicts", None)
        if not conflicts:
            return [winner]
        found = await self.server.request_json("GET", path, params={"open_revs": json.dumps(conflicts),
                                                                      "r": r})
        others = [item["ok"] for item in found or [] if isinstance(item, dict)
                  and isinstance(item.get("ok"), dict) and not item["ok"].get("_deleted")]
        return [winner, *others]

    async def get_or_none(self, doc_id: str) -> dict[str, Any] | None:
        try:
            return await self.get(doc_id)
        except NotFound:
            return None

    async def put(self, doc: dict[str, Any]) -> str:
        """Write `doc` (create when it has no `_rev`, update otherwise); returns the new rev.

        Raises Conflict when the rev is stale or the doc exists (create-only semantics).
        """
        self._before_write()
        sdk = self.server.sdk
        result = _json_result(await self.server.call(sdk.put_document, self.name, doc["_id"], doc))
        rev = result.get("rev")
        self._wrote(doc["_id"], rev)
        return rev

    async def delete(self, doc_id: str, rev: str) -> None:
        self._before_write()
        await self.server.call(self.server.sdk.delete_document, self.name, doc_id, rev=rev)

    async def bulk(self, docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """`_bulk_docs`: one result per doc, `{"id","rev"}` or `{"id","error","reason"}`."""
        self._before_write()
        docs = list(docs)
        result = _json_result(await self.server.call(self.server.sdk.post_bulk_docs, self.name,
                                                     BulkDocs(docs=docs)))
        for item in result:
            if "error" not in item:
                self._wrote(item.get("id", ""), item.get("rev"))
        return result

    async def bulk_docs(self, docs: list[dict[str, Any]], timeout: float | None = None, *,
                        quorum: bool = False) -> list[dict[str, Any]]:
        """`_bulk_docs` through aiohttp (no thread; cancellable): one result per doc, in order.
        With `quorum`, asks `w` = a quorum of copies; an item stored on fewer says `accepted`."""
        self._before_write()
        params = {"w": str(await self.quorum())} if quorum else None
        result = await self.server.request_json("POST", f"{quote(self.name, safe='')}/_bulk_docs",
                                                params=params, body={"docs": docs}, timeout=timeout)
        if not isinstance(result, list) or len(result) != len(docs):
            raise CouchUnavailable("unexpected _bulk_docs response")
        for item in result:
            if isinstance(item, dict) and "error" not in item:
                self._wrote(str(item.get("id", "")), item.get("rev"))
        return result

    async def all_docs(self, **params: Any) -> dict[str, Any]:
        return _json_result(await self.server.call(self.server.sdk.post_all_docs, self.name, **params))

    async def view(self, ddoc: str, view: str, **params: Any) -> dict[str, Any]:
        sdk = self.server.sdk
        return _json_result(await self.server.call(sdk.post_view, self.name, ddoc, view, **params))

    async def get_local(self, local_id: str) -> dict[str, Any] | None:
        try:
            sdk = self.server.sdk
            return _json_result(await self.server.call(sdk.get_local_document, self.name, local_id))
        except NotFound:
            return None

    async def put_local(self, local_id: str, doc: dict[str, Any]) -> str | None:
        """Write a `_local` doc; returns its new rev."""
        self._before_write()
        result = _json_result(await self.server.call(self.server.sdk.put_local_document, self.name,
                                                     local_id, doc))
        return result.get("rev") if isinstance(result, dict) else None

    async def changes(self, since: Any, *, limit: int, include_docs: bool = True, longpoll: bool = False,
                      timeout_ms: int = 25_000) -> ChangesPage:
        """One page of `_changes`. Seqs are opaque: `since` is sent back exactly as received."""
        params: dict[str, Any] = {"since": since if isinstance(since, str) else json.dumps(since),
                                  "limit": str(limit)}
        if include_docs:
            params["include_docs"] = "true"
        request_timeout = None
        if longpoll:
            params["feed"] = "longpoll"
            params["timeout"] = str(timeout_ms)
            # Above the server's timeout, so a quiet feed ends with an empty page, not an error.
            request_timeout = timeout_ms / 1000 + 15
        body, size = await self.server.request_json_sized(
            "GET", f"{quote(self.name, safe='')}/_changes", params=params, timeout=request_timeout)
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise CouchUnavailable("unexpected _changes response")
        pending = body.get("pending")
        return ChangesPage(results=body["results"], last_seq=body.get("last_seq"),
                           pending=pending if isinstance(pending, int) else None, size=size)

    async def end_seq(self) -> Any:
        """The seq at the current end of the feed (where a first start begins)."""
        page = await self.changes("now", limit=1, include_docs=False)
        if page.last_seq is not None:
            return page.last_seq
        return (await self.info()).get("update_seq")

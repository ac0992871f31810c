"""The RapidPro API v2 client (API reference: https://app.rapidpro.io/api/v2/, and RapidPro's
source, https://github.com/nyaruka/rapidpro, `temba/api/v2/`).

One aiohttp session for the process; the base URL and the token are arguments of every call,
because both come from CHT (settings doc, vault) and can change while we run. Every call first
takes a token from the shared `RateBudget` (sends before status polling).

Outcomes are error types (worker/rapidpro/errors.py), so callers decide with `except`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from worker.backoff import parse_retry_after
from worker.logs import get_logger
from worker.rapidpro.answers import (
    Answer,
    Broadcast,
    MessagesPage,
    broadcast_from,
    describe,
    error_for,
    json_object,
    json_or_none,
    reason_of,
)
from worker.rapidpro.budget import Priority, RateBudget, ScopedBudget
from worker.rapidpro.errors import (
    NotActive,
    RapidProNoAnswer,
    RapidProUnreachable,
    RateLimited,
    SendInDoubt,
    WrongUrl,
)

log = get_logger(__name__)

BROADCASTS_PATH = "/api/v2/broadcasts.json"
MESSAGES_PATH = "/api/v2/messages.json"
WORKSPACE_PATH = "/api/v2/workspace.json"

# Default bound on how long one call may wait for the budget and for 429s before giving up with
# RateLimited. Keeps a send (wait + HTTP timeout) well inside the dispatcher's claim timeout.
DEFAULT_MAX_WAIT = 30.0


# ---------------------------------------------------------------------- the client


def user_agent(instance_id: str) -> str:
    """What every request to RapidPro says: RapidPro's logs (and tests) tell the workers apart."""
    try:
        version = metadata.version("cht-rapidpro-worker")
    except metadata.PackageNotFoundError:  # run from a checkout without installing
        version = "0+unknown"
    return f"cht-rapidpro-worker/{version} ({instance_id})"



class _CallState:
    """Per-request trace context: did we get a connection (so bytes may have left)?"""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


class RapidProClient:
    def __init__(
        self,
        budget: RateBudget | ScopedBudget,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_wait: float = DEFAULT_MAX_WAIT,
        keepalive_timeout: float = 4.0,
        user_agent: str = "cht-rapidpro-worker",
        may_call: Callable[[], bool] | None = None,
    ) -> None:
        """`timeout` bounds each HTTP request as a whole (connect + send + answer); `max_wait`
        bounds, per call, the wait for the budget and for 429s (a call can override it)."""
        if not 0 < timeout:
            raise ValueError("timeout must be > 0")
        self.budget = budget
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.max_wait = max_wait
        self.keepalive_timeout = keepalive_timeout
        self._headers = {"Accept": "application/json", "User-Agent": user_agent}
        # Consulted right before each request (after the budget wait, which can be long): with
        # several workers only the lease holder may talk to RapidPro.
        self.may_call = may_call
        self._session: aiohttp.ClientSession | None = None
        # Calls by (endpoint, HTTP status or "error"), for the metrics.
        self.requests: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------------ lifecycle

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(_mark_connected)
            trace.on_connection_reuseconn.append(_mark_connected)
            # A short keep-alive: reusing a connection the server is closing at that very moment
            # fails the request ambiguously (the POST would be in doubt). Closing idle
            # connections before usual server idle timeouts (nginx 75 s, ALB 60 s, Apache 5 s)
            # makes that race unlikely while bursts still reuse connections.
            connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=self.keepalive_timeout)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                trace_configs=[trace],
                timeout=self._client_timeout(),
            )
        return self._session

    def _client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.timeout,
            connect=self.connect_timeout,
            sock_connect=self.connect_timeout,
            sock_read=self.timeout,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RapidProClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ API calls

    async def send_broadcast(
        self,
        base_url: str,
        token: str,
        urn: str,
        text: str | Mapping[str, str],
        *,
        max_wait: float | None = None,
    ) -> Broadcast:
        """POST one broadcast to one URN. A 201 whose broadcast says `failed` is still returned."""
        body = json.dumps({"urns": [urn], "text": text if isinstance(text, str) else dict(text)})
        answer = await self._call(
            "POST", _api_url(base_url, BROADCASTS_PATH), token, Priority.SEND, max_wait, data=body
        )
        broadcast = broadcast_from(answer)
        self._observe_broadcasts([json_or_none(answer)])
        return broadcast

    async def list_messages(
        self,
        base_url: str,
        token: str,
        *,
        broadcast: int | None = None,
        uuid: str | None = None,
        folder: str | None = None,
        after: str | None = None,
        before: str | None = None,
        cursor_url: str | None = None,
        priority: Priority = Priority.STATUS,
        max_wait: float | None = None,
    ) -> MessagesPage:
        """One page of `messages.json`. With `cursor_url` (a previous page's `next`) the filters
        are ignored: the cursor URL carries them."""
        filters = {"broadcast": broadcast, "uuid": uuid, "folder": folder, "after": after, "before": before}
        return await self._list_page(base_url, MESSAGES_PATH, token, filters, cursor_url, priority,
                                     max_wait)

    async def list_broadcasts(
        self,
        base_url: str,
        token: str,
        *,
        after: str | None = None,
        before: str | None = None,
        uuid: str | None = None,
        broadcast_id: int | None = None,
        cursor_url: str | None = None,
        priority: Priority = Priority.STATUS,
        max_wait: float | None = None,
    ) -> MessagesPage:
        """One page of `broadcasts.json` (newest first; `after`/`before` inclusive on `created_on`;
        `uuid` since RapidPro v10.3.81, `id` until it drops it). RapidPro ignores a filter it
        does not read and lists everything: the caller checks the results are what it asked for.
        With `cursor_url` (a previous page's `next`) the filters are ignored."""
        filters = {"after": after, "before": before, "uuid": uuid, "id": broadcast_id}
        page = await self._list_page(base_url, BROADCASTS_PATH, token, filters, cursor_url, priority,
                                     max_wait)
        self._observe_broadcasts(page.results[:1])
        return page

    def _observe_broadcasts(self, broadcasts: Sequence[object]) -> None:
        """A broadcast's fields tell the server's version, hence its throttle scopes' rates."""
        if isinstance(self.budget, ScopedBudget):
            for broadcast in broadcasts:
                self.budget.observe_broadcast(broadcast)

    def _budget_for(self, url: URL) -> RateBudget:
        """The budget of the scope RapidPro counts a call to `url` in."""
        return self.budget.for_path(url.path) if isinstance(self.budget, ScopedBudget) else self.budget

    async def _list_page(self, base_url: str, path: str, token: str, filters: Mapping[str, object],
                         cursor_url: str | None, priority: Priority, max_wait: float | None
                         ) -> MessagesPage:
        """One cursor page of a listing endpoint; a cursor URL carries the filters itself."""
        if cursor_url is not None:
            url = _same_origin(base_url, cursor_url)
        else:
            params = {name: str(value) for name, value in filters.items() if value is not None}
            url = _api_url(base_url, path).update_query(params)
        page = json_object(await self._call("GET", url, token, priority, max_wait))
        results = page.get("results")
        next_url = page.get("next")
        if not isinstance(results, list):
            raise WrongUrl(f"{path.rsplit('/', 1)[-1]} answered without a results list", status=200)
        return MessagesPage(results=[r for r in results if isinstance(r, dict)],
                            next=next_url if isinstance(next_url, str) and next_url else None)

    async def get_workspace(self, base_url: str, token: str, *, priority: Priority = Priority.STATUS,
                            max_wait: float | None = None) -> dict[str, Any]:
        """`GET workspace.json`: the workspace the token belongs to (reads only; for `check`)."""
        return await self.get_object(base_url, token, WORKSPACE_PATH, priority=priority, max_wait=max_wait)

    async def get_object(self, base_url: str, token: str, path: str,
                         params: Sequence[tuple[str, str]] = (), *, priority: Priority = Priority.STATUS,
                         max_wait: float | None = None) -> dict[str, Any]:
        """`GET path?params` answered with a JSON object (a parameter may repeat)."""
        url = _api_url(base_url, path)
        if params:
            url = url.update_query(list(params))
        return json_object(await self._call("GET", url, token, priority, max_wait))

    async def list_page(self, base_url: str, token: str, path: str, filters: Mapping[str, object],
                        *, cursor_url: str | None = None, priority: Priority = Priority.STATUS,
                        max_wait: float | None = None) -> MessagesPage:
        """One cursor page of any listing endpoint (`next`: pass it back as `cursor_url`)."""
        return await self._list_page(base_url, path, token, filters, cursor_url, priority, max_wait)

    async def post_object(self, base_url: str, token: str, path: str, body: Mapping[str, Any],
                          params: Mapping[str, str] | None = None, *, priority: Priority = Priority.STATUS,
                          max_wait: float | None = None) -> dict[str, Any]:
        """`POST path?params` with a JSON body, answered with a JSON object. Not for broadcasts:
        a POST with no answer raises SendInDoubt, which callers of idempotent writes may retry."""
        url = _api_url(base_url, path)
        if params:
            url = url.update_query(dict(params))
        return json_object(await self._call("POST", url, token, priority, max_wait, data=json.dumps(body)))

    # ------------------------------------------------------------------ plumbing

    async def _call(
        self,
        method: str,
        url: URL,
        token: str,
        priority: Priority,
        max_wait: float | None,
        *,
        data: str | None = None,
    ) -> Answer:
        """Take a budget token, make the request, retry 429s until `max_wait` is used up.

        Returns the answer only for 2xx; every other outcome is raised as its error type.
        """
        limit = self.max_wait if max_wait is None else max_wait
        deadline = time.monotonic() + limit
        while True:
            budget = self._budget_for(url)  # read again: the scopes follow the server's version
            await self._acquire(budget, priority, deadline)
            if self.may_call is not None and not self.may_call():
                raise NotActive("not the active worker (the lease is not held)")
            answer = await self._request(method, url, token, data)
            if answer.status != 429:
                budget.record_success()
                if 200 <= answer.status < 300:
                    return answer
                raise error_for(method, answer)
            # 429: DRF throttles before the view runs, so a throttled POST created nothing and
            # can be repeated. Tell the scope's budget (it pauses that scope's callers only: the
            # other scopes are counted apart), then wait our turn.
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            pause = budget.throttled(retry_after)
            if time.monotonic() + pause > deadline:
                raise RateLimited(pause, reason_of(answer) or "429 Too Many Requests")

    async def _acquire(self, budget: RateBudget, priority: Priority, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await budget.acquire(priority)
        except TimeoutError:
            # Waiting for the budget sends nothing: the caller may retry later freely.
            wait = budget.next_token_in() or None
            raise RateLimited(wait, "waited too long for the RapidPro call budget") from None

    async def _request(self, method: str, url: URL, token: str, data: str | None) -> Answer:
        """One HTTP exchange. Network failures are classified here — this decides whether an
        SMS could be sent twice, so the rule is deliberately simple and conservative:

        - Until a connection is established (new, or reused from the pool), not one byte of the
          request can have been written: connection refused, DNS failure, TLS handshake failure,
          connect timeout (or waiting for a pool slot) all prove the request never left →
          `RapidProUnreachable`. We learn "connected" from aiohttp's trace hooks, which fire
          before the request is written.
        - From then on any failure (read timeout, total timeout, reset, `ServerDisconnectedError`,
          a body cut short) may come after RapidPro received and processed the request →
          `SendInDoubt` for the POST, `RapidProNoAnswer` for reads.
        - aiohttp never retries a POST by itself (only idempotent methods on a reused
          connection), so one call is at most one broadcast. Redirects are not followed:
          aiohttp would turn a redirected POST into a GET.
        """
        state = _CallState()
        headers = {"Authorization": f"Token {token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with self._get_session().request(
                method, url, data=data, headers=headers, allow_redirects=False, trace_request_ctx=state
            ) as response:
                status = response.status
                try:
                    body: bytes | None = await response.read()
                    body_error = None
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    body, body_error = None, describe(exc)
                return Answer(status, response.headers, body, body_error)
        except aiohttp.InvalidURL as exc:
            raise WrongUrl(f"invalid RapidPro URL: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = error = describe(exc)
            if not state.connected:
                raise RapidProUnreachable(f"request never sent: {reason}") from None
            if method == "POST":
                raise SendInDoubt(f"no answer after the request was sent: {reason}") from None
            raise RapidProNoAnswer(f"no answer: {reason}") from None
        finally:
            self.requests[(url.path.rsplit("/", 1)[-1].removesuffix(".json"), str(status or "error"))] += 1
            # Path only: the query may hold cursors, and the token lives in a header we never log.
            log.debug("rapidpro_call", method=method, host=url.host, path=url.path, status=status,
                      error=error, duration_ms=round((time.perf_counter() - started) * 1000, 1))


async def _mark_connected(_session: aiohttp.ClientSession, ctx: Any, _params: Any) -> None:
    state = getattr(ctx, "trace_request_ctx", None)
    if isinstance(state, _CallState):
        state.connected = True


# ---------------------------------------------------------------------- URLs


def _api_url(base_url: str, path: str) -> URL:
    """`{base_url}{path}`; a path prefix in base_url (RapidPro under /rapidpro) is kept."""
    try:
        base = URL(base_url.strip())
    except (ValueError, TypeError) as exc:
        raise WrongUrl(f"invalid RapidPro URL {base_url!r}: {exc}") from None
    if base.scheme not in ("http", "https") or not base.host:
        raise WrongUrl(f"invalid RapidPro URL {base_url!r}: expected http(s)://host")
    return base.with_query(None).with_fragment(None).with_path(base.path.rstrip("/") + path)


def _same_origin(base_url: str, cursor_url: str) -> URL:
    """A `next` link, re-rooted on base_url's scheme, host and port.

    The token goes wherever we follow the link, so a link to another host is refused. Behind a
    TLS-terminating proxy RapidPro often builds `http://` (or internal-port) links for an
    `https://` site: the path and query are taken from the link, the origin from base_url, so
    the token is never sent in clear over a downgraded scheme.
    """
    base = _api_url(base_url, "")
    link = urlsplit(cursor_url)
    if not link.hostname or link.hostname.lower() != (base.host or "").lower():
        raise WrongUrl(f"refusing to follow a next link to another host ({link.hostname!r})")
    return URL.build(scheme=base.scheme, host=base.raw_host or "", port=base.explicit_port,
                     path=link.path, query_string=link.query, encoded=True)



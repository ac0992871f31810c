"""The RapidPro API v2 client (API reference: https://app.rapidpro.io/api/v2/, and RapidPro's
source, https://github.com/nyaruka/rapidpro, `temba/api/v2/`).

One aiohttp session for the process; the base URL and the token are arguments of every call,
because both come from CHT (settings doc, vault) and can change while we run. Every call first
takes a token from the shared `RateBudget` (sends before status polling).

Outcomes are error types, so callers decide with `except`:

- `MessageRejected`: RapidPro judged *this message* (invalid URN, text too long) — final.
- `WorkspaceBlocked`, `RapidProUnauthorized`, `WrongUrl`: configuration or account problems;
  nothing was created, the message stays sendable.
- `RapidProServerError` (5xx with a body), `RapidProUnreachable` (the request never left),
  `RateLimited` (429 beyond the caller's wait limit): temporary; nothing was created.
- `SendInDoubt`: a broadcast POST may or may not have created a broadcast. Never resend it
  automatically (RapidPro has no idempotency key).
- `RapidProNoAnswer`: the same network condition for a *read* — harmless, just retry later.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from worker.couch.client import parse_retry_after
from worker.logs import get_logger
from worker.rapidpro.budget import Priority, RateBudget

log = get_logger(__name__)

BROADCASTS_PATH = "/api/v2/broadcasts.json"
MESSAGES_PATH = "/api/v2/messages.json"
WORKSPACE_PATH = "/api/v2/workspace.json"

# 400 keys that are parts of the message we send: an error on one of them judges the message.
# Anything else (`non_field_errors` — flagged/suspended workspace —, `detail`, unknown keys) does
# not, and must never mark a message failed.
MESSAGE_FIELDS = frozenset({"urns", "text", "attachments", "base_language", "quick_replies"})

# Default bound on how long one call may wait for the budget and for 429s before giving up with
# RateLimited. Keeps a send (wait + HTTP timeout) well inside the dispatcher's claim timeout.
DEFAULT_MAX_WAIT = 30.0


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class Broadcast:
    id: int  # the integer id CHT stores as gateway_ref (deprecated by RapidPro, still sent)
    uuid: str | None  # absent on older RapidPro
    status: str | None  # pending|queued|started|completed|failed|interrupted (legacy: queued|sent|failed)
    raw: dict[str, Any]


@dataclass(frozen=True)
class MessagesPage:
    results: list[dict[str, Any]]
    next: str | None  # absolute URL: pass it back as `cursor_url`


# ---------------------------------------------------------------------- errors


class RapidProError(Exception):
    """Base of every RapidPro outcome other than success.

    `transient`: the same call, unchanged, may succeed later without anyone fixing anything.
    `retry_after`: seconds RapidPro asked us to wait, when it said.
    """

    transient: bool = False

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class MessageRejected(RapidProError):
    """400 about the message itself (invalid URN, text too long): final, never retry it."""


class WorkspaceBlocked(RapidProError):
    """400 not about the message (workspace flagged or suspended, ...): nothing was created."""


class RapidProUnauthorized(RapidProError):
    """403 (401 from a proxy): the token is wrong or revoked."""


class WrongUrl(RapidProError):
    """404, a redirect, or HTML/non-JSON where JSON was expected: `sms.rapidpro.url` is wrong."""


class RapidProServerError(RapidProError):
    """5xx with a body: RapidPro answered, and an error answer means nothing was created."""

    transient = True

    def __init__(self, status: int, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason, status=status, retry_after=retry_after)


class RateLimited(RapidProError):
    """Still throttled (429 or an exhausted budget) when the call's wait limit ran out."""

    transient = True

    def __init__(self, retry_after: float | None, reason: str = "rate limited") -> None:
        super().__init__(reason, status=429, retry_after=retry_after)


class RapidProUnreachable(RapidProError):
    """The request provably never left: no connection was made (refused, DNS, connect timeout)."""

    transient = True


class SendInDoubt(RapidProError):
    """A broadcast POST may have created a broadcast, but we cannot know. Never resend it."""

    transient = False


class RapidProNoAnswer(RapidProError):
    """A read (GET) got no answer: timeout or dropped connection. Safe to retry."""

    transient = True


class NotActive(RapidProError):
    """Not sent: this worker is not (or no longer) the active one (see worker/lease/keeper.py). Nothing
    left this process, so a send's claim can be released."""

    transient = True


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


@dataclass
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes | None  # None: the status line arrived but the body could not be read
    body_error: str | None = None


class RapidProClient:
    def __init__(
        self,
        budget: RateBudget,
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
        return _broadcast_from(answer)

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
        cursor_url: str | None = None,
        priority: Priority = Priority.STATUS,
        max_wait: float | None = None,
    ) -> MessagesPage:
        """One page of `broadcasts.json` (newest first; `after`/`before` inclusive on `created_on`).
        With `cursor_url` (a previous page's `next`) the filters are ignored."""
        return await self._list_page(base_url, BROADCASTS_PATH, token, {"after": after, "before": before},
                                     cursor_url, priority, max_wait)

    async def _list_page(self, base_url: str, path: str, token: str, filters: Mapping[str, object],
                         cursor_url: str | None, priority: Priority, max_wait: float | None
                         ) -> MessagesPage:
        """One cursor page of a listing endpoint; a cursor URL carries the filters itself."""
        if cursor_url is not None:
            url = _same_origin(base_url, cursor_url)
        else:
            params = {name: str(value) for name, value in filters.items() if value is not None}
            url = _api_url(base_url, path).update_query(params)
        page = _json_object(await self._call("GET", url, token, priority, max_wait))
        results = page.get("results")
        next_url = page.get("next")
        if not isinstance(results, list):
            raise WrongUrl(f"{path.rsplit('/', 1)[-1]} answered without a results list", status=200)
        return MessagesPage(results=[r for r in results if isinstance(r, dict)],
                            next=next_url if isinstance(next_url, str) and next_url else None)

    async def get_broadcast(
        self,
        base_url: str,
        token: str,
        broadcast_id: int,
        *,
        priority: Priority = Priority.STATUS,
        max_wait: float | None = None,
    ) -> dict[str, Any] | None:
        """The broadcast as `broadcasts.json?id=` lists it, or None when RapidPro has no such one."""
        url = _api_url(base_url, BROADCASTS_PATH).update_query(id=str(int(broadcast_id)))
        page = _json_object(await self._call("GET", url, token, priority, max_wait))
        results = page.get("results")
        if not isinstance(results, list):
            raise WrongUrl("broadcasts.json answered without a results list", status=200)
        for item in results:
            if isinstance(item, dict):
                return item
        return None

    async def get_workspace(self, base_url: str, token: str, *,
                            max_wait: float | None = None) -> dict[str, Any]:
        """`GET workspace.json`: the workspace the token belongs to (reads only; for `check`)."""
        return _json_object(await self._call("GET", _api_url(base_url, WORKSPACE_PATH), token,
                                             Priority.STATUS, max_wait))

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
    ) -> _Answer:
        """Take a budget token, make the request, retry 429s until `max_wait` is used up.

        Returns the answer only for 2xx; every other outcome is raised as its error type.
        """
        limit = self.max_wait if max_wait is None else max_wait
        deadline = time.monotonic() + limit
        while True:
            await self._acquire(priority, deadline)
            if self.may_call is not None and not self.may_call():
                raise NotActive("not the active worker (the lease is not held)")
            answer = await self._request(method, url, token, data)
            if answer.status != 429:
                self.budget.record_success()
                if 200 <= answer.status < 300:
                    return answer
                raise _error_for(method, answer)
            # 429: DRF throttles before the view runs, so a throttled POST created nothing and
            # can be repeated. Tell the budget (it pauses every caller), then wait our turn.
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            pause = self.budget.throttled(retry_after)
            if time.monotonic() + pause > deadline:
                raise RateLimited(pause, _reason(answer) or "429 Too Many Requests")

    async def _acquire(self, priority: Priority, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await self.budget.acquire(priority)
        except TimeoutError:
            # Waiting for the budget sends nothing: the caller may retry later freely.
            wait = self.budget.next_token_in() or None
            raise RateLimited(wait, "waited too long for the RapidPro call budget") from None

    async def _request(self, method: str, url: URL, token: str, data: str | None) -> _Answer:
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
                    body, body_error = None, _describe(exc)
                return _Answer(status, response.headers, body, body_error)
        except aiohttp.InvalidURL as exc:
            raise WrongUrl(f"invalid RapidPro URL: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = error = _describe(exc)
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


# ---------------------------------------------------------------------- answers


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _looks_html(answer: _Answer) -> bool:
    content_type = answer.headers.get("Content-Type", "").lower()
    head = (answer.body or b"")[:100].lstrip().lower()
    return "html" in content_type or head.startswith((b"<!doctype", b"<html"))


def _parse_json(answer: _Answer) -> Any:
    """The JSON body, or raise ValueError (whatever the Content-Type says, like RapidPro's)."""
    if answer.body is None:
        raise ValueError(answer.body_error or "body unreadable")
    return json.loads(answer.body)


def _json_object(answer: _Answer) -> dict[str, Any]:
    """A 2xx answer to a read must be a JSON object; an HTML page means a wrong URL."""
    if answer.body is None:
        raise RapidProNoAnswer(f"{answer.status} with an unreadable body: {answer.body_error}",
                               status=answer.status)
    try:
        value = _parse_json(answer)
    except ValueError:
        kind = "an HTML page" if _looks_html(answer) else "a non-JSON answer"
        raise WrongUrl(f"{answer.status} with {kind} where JSON was expected: check sms.rapidpro.url",
                       status=answer.status) from None
    if not isinstance(value, dict):
        raise WrongUrl(f"{answer.status} with unexpected JSON: check sms.rapidpro.url", status=answer.status)
    return value


def _broadcast_from(answer: _Answer) -> Broadcast:
    """A 2xx to the broadcast POST. RapidPro processed it: unless it is plainly not RapidPro
    (an HTML page on a non-201), an answer we cannot read leaves the broadcast in doubt."""
    try:
        value = _parse_json(answer)
    except ValueError:
        if answer.status != 201 and answer.body is not None and _looks_html(answer):
            raise WrongUrl(f"{answer.status} with an HTML page where JSON was expected: "
                           "check sms.rapidpro.url", status=answer.status) from None
        raise SendInDoubt(f"{answer.status} with an unreadable body: "
                          f"{answer.body_error or 'not JSON'}", status=answer.status) from None
    broadcast_id = value.get("id") if isinstance(value, dict) else None
    if isinstance(broadcast_id, bool) or not isinstance(broadcast_id, int):
        raise SendInDoubt(f"{answer.status} without a broadcast id", status=answer.status)
    uuid = value.get("uuid")
    status = value.get("status")
    return Broadcast(
        id=broadcast_id,
        uuid=uuid if isinstance(uuid, str) else None,
        status=status if isinstance(status, str) else None,
        raw=value,
    )


def _error_for(method: str, answer: _Answer) -> RapidProError:
    """The error type for a non-2xx, non-429 answer."""
    status = answer.status
    retry_after = parse_retry_after(answer.headers.get("Retry-After"))
    reason = _reason(answer)
    if 300 <= status < 400:
        location = answer.headers.get("Location", "?")
        return WrongUrl(f"{status} redirect to {location}: set sms.rapidpro.url to the final URL",
                        status=status)
    if status in (401, 403):
        return RapidProUnauthorized(reason or f"{status} Forbidden", status=status)
    if status in (404, 405):
        return WrongUrl(f"{status}: {reason or 'not found'} (check sms.rapidpro.url)", status=status)
    if status >= 500:
        if method == "POST" and (answer.body is None or not answer.body.strip() or status in (502, 504)):
            # A bodyless 5xx may not come from RapidPro at all; 502/504 come from a proxy whose
            # upstream may have processed the POST before failing or timing out. Either way the
            # answer does not prove the broadcast was not created.
            return SendInDoubt(f"{status} from a gateway or without a body: {reason or 'no body'}",
                               status=status)
        return RapidProServerError(status, f"{status}: {reason or 'server error'}", retry_after=retry_after)
    if status == 400 and method == "POST":
        errors = _json_or_none(answer)
        if isinstance(errors, dict) and errors and set(errors) <= MESSAGE_FIELDS:
            return MessageRejected(_flatten(errors), status=status)
        return WorkspaceBlocked(f"400: {reason or 'bad request'}", status=status)
    # Other 4xx (a 400 on a read is our own bad request): RapidPro refused; nothing was created.
    return RapidProError(f"{status}: {reason or 'client error'}", status=status, retry_after=retry_after)


def _json_or_none(answer: _Answer) -> Any:
    try:
        return _parse_json(answer)
    except ValueError:
        return None


def _reason(answer: _Answer) -> str:
    """RapidPro's reason as readable text (`detail`, per-field errors); else the start of the body."""
    value = _json_or_none(answer)
    if isinstance(value, dict) and set(value) == {"detail"} and isinstance(value["detail"], str):
        return value["detail"]
    if isinstance(value, dict | list) and value:
        return _flatten(value)
    if answer.body is None:
        return f"(body unreadable: {answer.body_error})"
    if _looks_html(answer):
        return "(HTML page)"
    return answer.body[:200].decode(errors="replace").strip()


def _flatten(errors: Any, path: str = "") -> str:
    """`{"urns": {"0": ["Invalid URN…"]}}` → `urns[0]: Invalid URN…`; several joined with "; "."""
    parts: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                name = str(key)
                if name in ("non_field_errors", "detail"):
                    walk(inner, where)
                else:
                    walk(inner, f"{where}[{name}]" if where else name)
        elif isinstance(value, list):
            for inner in value:
                walk(inner, where)
        elif value is not None:
            parts.append(f"{where}: {value}" if where else str(value))

    walk(errors, path)
    return "; ".join(parts)

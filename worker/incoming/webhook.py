"""RapidPro's flow webhook for incoming SMS, answering exactly as CHT's endpoint does.

`POST /api/v2/sms/rapidpro/incoming-messages` and CHT's legacy (misspelt)
`POST /api/v1/sms/radpidpro/incoming-messages` take `{"id", "from", "content"}` and store a CHT
`data_record`. Differences from CHT, on purpose:
- a repeat of a stored id answers 200 `{"saved":0}` (CHT: 400, which sends the flow down its
  Failure branch although the message is stored);
- repeats cannot race: the doc `_id` derives from the RapidPro id and the write is create-only;
- 200 only once CouchDB confirmed the write; CouchDB away or failing -> 503 with a JSON body,
  within a deadline well under RapidPro's 15 s.

`IncomingStore` (the de-duplicating create) is shared with the reconciliation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from config.settings import Settings
from transitions.cht.phone import mask_phone
from transitions.cht.translations import EMPTY as NO_TRANSLATIONS
from transitions.cht.translations import Translations
from transitions.incoming.record import (
    V1_PATH,
    V2_PATH,
    IncomingMessage,
    Invalid,
    build_record,
    doc_id_for,
    parse_webhook_body,
)
from worker.couch.client import CouchError, CouchUnavailable, Database
from worker.logs import get_logger
from worker.rapidpro.credentials import Credential
from worker.stopping import STOPPING_KEY

log = get_logger(__name__)
T = TypeVar("T")

DEFAULT_MAX_BODY = 64 * 1024
# RapidPro gives up after 15 s and flags calls over 10 s: our CouchDB work must end well before.
DEFAULT_COUCH_TIMEOUT = 5.0

# CHT's regex (api/src/controllers/rapidpro.js): case-sensitive "Token", then the key.
_AUTHORIZATION = re.compile(r"^Token\s+(.*)$")
_VIEW_DDOC = "medic-sms"
_VIEW_NAME = "messages_by_gateway_ref"
_LOGGED_ID_MAX = 100
# The fewest waiting messages for which a second batch goes out beside one in flight.
PIPELINE_MIN_BATCH = 8


class Outcome(StrEnum):
    SAVED = "saved"
    REPEAT = "repeat"  # stored before by the worker (same derived _id)
    REPEAT_CHT = "repeat_cht"  # stored before under another _id, e.g. by CHT itself
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    MISSING_TOKEN = "missing_token"
    NO_KEY = "no_key"
    WRONG_TOKEN = "wrong_token"
    UNAVAILABLE = "unavailable"
    SHUTTING_DOWN = "shutting_down"  # cut off by the worker's shutdown: 503, not confirmed stored
    CLIENT_GONE = "client_gone"  # the client hung up before its request was complete
    ERROR = "error"


def _body(payload: dict[str, Any]) -> bytes:
    # Express's res.json: JSON.stringify without spaces, so bodies are byte-identical to CHT's.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _json(status: int, payload: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=_body(payload), content_type="application/json",
                        charset="utf-8")


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"code": status, "error": message})


@dataclass
class _Pending:
    message: IncomingMessage
    build: Callable[[], dict[str, Any]]
    future: asyncio.Future[Outcome]

    def resolve(self, outcome: Outcome) -> None:
        if not self.future.done():  # the caller may have given up (its deadline)
            self.future.set_result(outcome)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class IncomingStore:
    """Creates incoming records at most once per RapidPro id, whoever stored them before.

    A repeat is found two ways: CHT's `medic-sms/messages_by_gateway_ref` view (rows with a null
    value are incoming `sms_message.gateway_ref`s, whoever wrote them: that covers messages CHT
    stored before the webhook moved to the worker), then the create-only write of the derived
    `_id` (a conflict = the same id won a race a moment ago).

    Group commit: messages arriving while a batch is in flight wait for the next one, so many
    concurrent requests share one view query and one `_bulk_docs` (the view lookup dominates
    otherwise: CouchDB brings the index up to date on every query). An idle store sends a
    message at once; nothing waits for a batch to fill. A second batch may overlap the first
    once enough messages wait for it (`_start_batches`). Calls go through aiohttp so the
    deadline really cancels them (an SDK call in a thread cannot be).
    """

    def __init__(self, medic: Database, *, timeout: float = DEFAULT_COUCH_TIMEOUT, batch_max: int = 100,
                 max_in_flight: int = 2, view_refresh: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db = medic
        self.timeout = timeout
        self._view_refresh = view_refresh
        self._monotonic = monotonic
        self._view_fresh_at: float | None = None  # when a lookup last brought the index up to date
        self._db_path = quote(medic.name, safe="")
        self._batch_max = batch_max
        self._max_in_flight = max_in_flight
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0
        self._last_batch_size = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._view_path = f"{self._db_path}/_design/{_VIEW_DDOC}/_view/{_VIEW_NAME}"

    async def stored_ids(self, gateway_refs: Iterable[str]) -> dict[str, str]:
        """gateway_ref -> the `_id` of a doc already holding it as an incoming message."""
        keys = list(dict.fromkeys(gateway_refs))
        if not keys:
            return {}
        # The index matters only for docs stored under other ids (CHT's, before the switch): the
        # worker's own repeats meet their derived _id. So the first lookup brings the index up to
        # date (everything CHT stored until now), later ones read it as it stands (`stale=ok`:
        # bringing it up to date costs CouchDB ~1 ms per new doc, on every query), and every
        # `view_refresh` s a background query updates it without anyone waiting (CHT's own
        # queries of this view keep it current too while CHT still receives messages).
        first = self._view_fresh_at is None
        result = await self._db.server.request_json(
            "POST", self._view_path, body={"keys": keys}, params=None if first else {"stale": "ok"},
            timeout=self.timeout)
        now = self._monotonic()
        if first:
            self._view_fresh_at = now
        elif self._view_fresh_at is not None and now - self._view_fresh_at >= self._view_refresh:
            self._view_fresh_at = now
            self._spawn(self._refresh_view())
        found: dict[str, str] = {}
        for row in result.get("rows", []) if isinstance(result, dict) else []:
            # Outgoing tasks emit their message uuid as the value: a RapidPro broadcast id that
            # happens to equal an incoming id is another message, not a repeat (CHT conflates them).
            if isinstance(row, dict) and row.get("value") is None and isinstance(row.get("key"), str):
                found.setdefault(row["key"], str(row.get("id")))
        return found

    async def store(self, message: IncomingMessage, build: Callable[[], dict[str, Any]]) -> Outcome:
        """Store `build()` unless `message.id` is already stored.

        Raises CouchUnavailable (also when CouchDB has not confirmed within `timeout`) or another
        CouchError: then the message is not known to be stored (it may be, if the write lands
        after the deadline; a later repeat then finds it).
        """
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(message, build, future))
        self._start_batches()
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            # Its batch still ends it later, with an outcome or an error nobody waits for any
            # more: taken here, or asyncio logs "Future exception was never retrieved".
            future.add_done_callback(_retrieve)
            raise CouchUnavailable(f"CouchDB did not confirm within {self.timeout} s") from None

    def _start_batches(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            if self._in_flight and len(self._queue) < max(PIPELINE_MIN_BATCH, self._last_batch_size):
                # A batch is in flight: a second one starts only once as many messages wait as
                # the last batch sent carried. Started for the first arrival, it carried one
                # message at a request's full cost (CouchDB 3.4 spends ~5 ms of CPU on a
                # `_bulk_docs` however small, ~0.4 ms per doc): half the batches were of one.
                return
            batch = [self._queue.popleft() for _ in range(min(self._batch_max, len(self._queue)))]
            self._last_batch_size = len(batch)
            self._in_flight += 1
            self._spawn(self._run_batch(batch)).add_done_callback(self._batch_done)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # a reference, or the loop may drop a running task
        task.add_done_callback(self._tasks.discard)
        return task

    def _batch_done(self, _task: asyncio.Task[None]) -> None:
        self._in_flight -= 1
        self._start_batches()

    async def _refresh_view(self) -> None:
        try:
            await self._db.server.request_json("GET", self._view_path,
                                               params={"limit": "0", "stale": "update_after"},
                                               timeout=self.timeout)
        except CouchError as exc:
            log.warning("incoming_view_refresh_failed", error=str(exc))

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._store_batch(batch)
        except TimeoutError:
            error: BaseException = CouchUnavailable(f"CouchDB did not confirm within {self.timeout} s")
        except CouchError as exc:
            error = exc
        except Exception as exc:  # a bug: fail these requests, never leave them hanging
            log.error("incoming_batch_bug", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            error = exc
        else:
            return
        for pending in batch:
            pending.fail(error)

    async def _store_batch(self, batch: list[_Pending]) -> None:
        existing = await self.stored_ids(p.message.id for p in batch)
        # One doc per id even when the batch holds the same id twice (concurrent repeats).
        groups: dict[str, list[_Pending]] = {}
        for pending in batch:
            found = existing.get(pending.message.id)
            if found is not None:
                own = found == doc_id_for(pending.message.id)
                pending.resolve(Outcome.REPEAT if own else Outcome.REPEAT_CHT)
            else:
                groups.setdefault(pending.message.id, []).append(pending)
        docs: list[dict[str, Any]] = []
        for message_id, group in list(groups.items()):
            try:
                docs.append(group[0].build())
            except Exception as exc:  # a bug in building one record fails that message only
                log.error("incoming_record_bug", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                for pending in group:
                    pending.fail(exc)
                del groups[message_id]
        if not docs:
            return
        results = await self._db.bulk_docs(docs, timeout=self.timeout)
        for doc, result, group in zip(docs, results, groups.values(), strict=True):
            error = result.get("error") if isinstance(result, dict) else "invalid"
            if error is None:
                group[0].resolve(Outcome.SAVED)
                for pending in group[1:]:
                    pending.resolve(Outcome.REPEAT)
            elif error == "conflict":  # the _id exists: stored before, or by a concurrent batch
                for pending in group:
                    pending.resolve(Outcome.REPEAT)
            else:  # e.g. forbidden by a validate_doc_update function
                reason = f"{error}: {result.get('reason', '')}" if isinstance(result, dict) else str(result)
                for pending in group:
                    pending.fail(CouchError(f"{doc['_id']}: {reason}"))


class _ShuttingDown(Exception):
    """The server stops: the request is answered 503 now rather than completed."""


async def _unless_stopping(request: web.Request, awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result, unless the server starts cutting requests off first."""
    stopping = request.app.get(STOPPING_KEY)
    if stopping is None:
        return await awaitable
    if stopping.is_set():
        raise _ShuttingDown
    task = asyncio.ensure_future(awaitable)
    # Its outcome is read below, or deliberately dropped: never "exception was never retrieved".
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()  # the handler itself is cancelled: take its work down with it
        raise
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise _ShuttingDown
    return task.result()


class IncomingWebhook:
    """The aiohttp handlers; `register(app)` adds both paths, `counters` counts by outcome."""

    def __init__(
        self,
        medic: Database,
        key: Credential,
        settings: Callable[[], Settings | None],
        clock: Callable[[], float] = time.time,
        *,
        translations: Callable[[], Translations] = lambda: NO_TRANSLATIONS,
        max_body: int = DEFAULT_MAX_BODY,
        couch_timeout: float = DEFAULT_COUCH_TIMEOUT,
    ) -> None:
        self._key = key
        self._settings = settings
        self._translations = translations
        self._clock = clock
        self.max_body = max_body
        self.store = IncomingStore(medic, timeout=couch_timeout)
        self._counters: Counter[str] = Counter()

    def register(self, app: web.Application) -> None:
        app.router.add_post(V2_PATH, self.handle)
        app.router.add_post(V1_PATH, self.handle)

    @property
    def counters(self) -> dict[str, int]:
        """Requests by outcome since start (for /healthz)."""
        return {outcome.value: self._counters[outcome.value] for outcome in Outcome}

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        event: dict[str, Any] = {"path": "v1" if request.path == V1_PATH else "v2"}
        try:
            outcome, response = await self._handle(request, event)
        except _ShuttingDown:
            # Nothing confirmed stored: RapidPro's Failure branch, a retry or the reconciliation
            # brings the message back.
            outcome = Outcome.SHUTTING_DOWN
            response = _error(503, "Message was not saved: the worker is shutting down")
        except ConnectionError as exc:  # the client hung up mid-request: not a bug, nobody to answer
            event["error"] = f"{type(exc).__name__}: {exc}"
            outcome, response = Outcome.CLIENT_GONE, _error(400, "Message was not saved")
        except Exception as exc:  # a bug: answer JSON, keep the process, say so loudly
            log.error("incoming_sms_bug", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            outcome, response = Outcome.ERROR, _error(500, "Message was not saved")
        self._counters[outcome.value] += 1
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        level = {Outcome.SAVED: 20, Outcome.REPEAT: 20, Outcome.REPEAT_CHT: 20,
                 Outcome.UNAVAILABLE: 40, Outcome.ERROR: 40}.get(outcome, 30)
        log.log(level, "incoming_sms", outcome=outcome.value, status=response.status,
                duration_ms=duration_ms, **event)
        return response

    async def _handle(self, request: web.Request, event: dict[str, Any]) -> tuple[Outcome, web.Response]:
        # 1. Authentication, in CHT's order: the header, then the configured key, then the match.
        match = _AUTHORIZATION.match(request.headers.get("Authorization", ""))
        given = match.group(1) if match else ""
        if not given:
            return Outcome.MISSING_TOKEN, _error(403, "Missing authorization token")
        try:
            async with asyncio.timeout(self.store.timeout):
                expected = await _unless_stopping(request, self._key.get())
        except (CouchUnavailable, TimeoutError) as exc:
            event["error"] = str(exc) or "timeout reading the incoming key"
            return Outcome.UNAVAILABLE, _error(503, "Message was not saved: database unavailable")
        if not expected:
            return Outcome.NO_KEY, _error(403, "No incoming key configured")
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                   expected.encode("utf-8", "surrogatepass")):
            return Outcome.WRONG_TOKEN, _error(403, "Incorrect token")

        # 2. The body, bounded, as JSON whatever the Content-Type (RapidPro's editor sends none).
        body = await _unless_stopping(request, self._read_body(request))
        if body is None:
            event["content_length"] = request.content_length
            return Outcome.TOO_LARGE, _error(413, "Message was not saved: body too large")
        parsed = parse_webhook_body(body)
        if isinstance(parsed, Invalid):
            event["reason"] = parsed.reason
            return Outcome.INVALID, _error(400, "Message was not saved")
        event["id"] = parsed.id[:_LOGGED_ID_MAX]
        event["sender"] = mask_phone(parsed.sender)

        # 3. Store it once; 200 only when CouchDB confirmed.
        settings = self._settings() or Settings()
        translations = self._translations()
        now_ms = int(self._clock() * 1000)

        def parser_failed(exc: Exception) -> None:
            log.error("incoming_sms_parse_failed", id=event["id"], error=f"{type(exc).__name__}: {exc}")

        try:
            # Cut off by shutdown, the write may still land: a later repeat of the id finds it.
            outcome = await _unless_stopping(request, self.store.store(
                parsed, lambda: build_record(parsed, settings, now_ms, on_parser_error=parser_failed,
                                             translations=translations)))
        except CouchUnavailable as exc:
            event["error"] = str(exc)
            return Outcome.UNAVAILABLE, _error(503, "Message was not saved: database unavailable")
        except CouchError as exc:  # 401/403/400 from CouchDB: a setup problem, still not a 500
            event["error"] = str(exc)
            return Outcome.UNAVAILABLE, _error(503, "Message was not saved: database refused the write")
        return outcome, _json(200, {"saved": 1 if outcome is Outcome.SAVED else 0})

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None when it exceeds `max_body` (read no further than that)."""
        length = request.content_length
        if length is not None and length > self.max_body:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

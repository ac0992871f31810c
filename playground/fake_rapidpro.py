"""A fake RapidPro API v2 server for tests, written from RapidPro's API documentation
(https://app.rapidpro.io/api/v2/, and `temba/api/v2/` in https://github.com/nyaruka/rapidpro).

RapidPro is an outside service; the worker's tests talk to this real HTTP server (aiohttp on
127.0.0.1, port 0) instead, so the client's HTTP code, timeouts and retries are exercised for real.

Time: everything time-dependent (rate-limit window, message visibility, ``created_on``) reads one
injectable clock (``clock``: a callable returning seconds; ``time.monotonic`` by default), so tests
can use :class:`FakeClock` and jump hours ahead without sleeping. Wall timestamps are derived from
it: ``created_on`` = the wall time when the fake was built + clock seconds elapsed since then.
A test whose clock reads epoch seconds (a FakeClock standing for a moment in time) passes
``wall_start=clock()`` so the fake's dates are the clock's own, whatever the real date.

Versions: ``profile=`` ("2020", "2023", "current" — the default — or "future"; see
playground/rapidpro_profiles.py) makes it answer with that RapidPro version's fields, filters,
statuses and rate limit. Whatever the profile, the fake keeps an integer id and a uuid for every
broadcast and message, so a test can name a broadcast by either.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import math
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web

from playground.rapidpro_profiles import Profile
from playground.rapidpro_profiles import profile as resolve_profile
from transitions.outgoing.rapidpro_forms import (
    BLANK,
    INVALID_URN,
    NULL_CHARACTERS,
    rapidpro_text,
    rapidpro_urn,
)

Clock = Callable[[], float]
Json = dict[str, Any]
T = TypeVar("T")

DEFAULT_TOKEN = "fake-rapidpro-token"
DEFAULT_WORKSPACE = "default"

BROADCASTS_PATH = "/api/v2/broadcasts.json"
MESSAGES_PATH = "/api/v2/messages.json"
WORKSPACE_PATH = "/api/v2/workspace.json"

# Message folders as RapidPro's messages endpoint defines them (outgoing ones by status).
OUTBOX_STATUSES = frozenset({"queued", "errored", "initializing", "pending"})
SENT_STATUSES = frozenset({"wired", "sent", "delivered", "read", "resent"})
FAILED_STATUSES = frozenset({"failed"})
FOLDERS = frozenset({"outbox", "sent", "failed", "inbox", "flows"})
# Broadcast statuses that current RapidPro reports, and the pre-Sept-2024 mapping of them.
BROADCAST_STATUSES = frozenset({"pending", "queued", "started", "completed", "failed", "interrupted"})
_LEGACY_BROADCAST_STATUS = {
    "pending": "queued",
    "queued": "queued",
    "started": "queued",
    "completed": "sent",
    "failed": "failed",
    "interrupted": "failed",
}

_LANGUAGE = re.compile("[a-z]{3}")  # an ISO 639-3 code (RapidPro also checks the code exists)

WORKSPACE_ERRORS = {
    "flagged": "Sorry, your workspace is currently flagged. To re-enable sending messages, "
    "please contact support.",
    "suspended": "Sorry, your workspace is currently suspended. To re-enable sending messages, "
    "please contact support.",
}

_HTML_404 = (
    "<!DOCTYPE html><html><head><title>Page not found</title></head>"
    "<body><h1>Not Found</h1><p>The requested resource was not found on this server.</p>"
    "</body></html>"
)
_HTML_500 = (
    "<!DOCTYPE html><html><head><title>Server Error (500)</title></head>"
    "<body><h1>Server Error (500)</h1></body></html>"
)


class FakeClock:
    """A manual clock for ``FakeRapidPro(clock=...)``: time moves only when a test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def format_datetime(value: datetime) -> str:
    """RapidPro's format: UTC, always six fractional digits, ``Z`` suffix."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_datetime(value: str) -> datetime:
    """ISO 8601 as clients send it; a naive value is taken as UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    token: str | None  # the key from "Authorization: Token <key>", whether valid or not
    time: float  # fake.clock() when the request arrived
    body: bytes = b""
    status: int | None = None  # None while in flight, and for hung/dropped requests
    user_agent: str | None = None  # tells several workers apart


@dataclass
class FakeMessage:
    id: int
    uuid: str
    broadcast: int | None
    contact_uuid: str
    urn: str
    direction: str  # "out" | "in"
    status: str | None
    text: str
    created_on: datetime
    modified_on: datetime
    visible_at: float  # clock time from which GET messages.json lists it
    sent_on: datetime | None = None
    folder: str | None = None  # only for incoming: "inbox" | "flows"
    script: deque[str | None] = field(default_factory=deque)
    channel: tuple[str, str] | None = None  # (uuid, name); None: the fake's default channel

    def to_json(self, profile: Profile | None = None) -> Json:
        channel_uuid, channel_name = self.channel or (FakeRapidPro.CHANNEL_UUID, "Fake Channel")
        status = self.status
        if profile is not None and isinstance(status, str):
            status = profile.statuses.get(status, status)
        outgoing_type = profile.message_type if profile is not None else "text"
        result = {
            "uuid": self.uuid,
            "id": self.id,
            "broadcast": self.broadcast,
            "contact": {"uuid": self.contact_uuid, "name": None},
            "urn": self.urn,
            "channel": {"uuid": channel_uuid, "name": channel_name},
            "direction": self.direction,
            "type": outgoing_type,
            "status": status,
            "archived": False,
            "visibility": "visible",
            "text": self.text,
            "attachments": [],
            "quick_replies": [],
            "labels": [],
            "flow": None,
            "created_on": format_datetime(self.created_on),
            "sent_on": format_datetime(self.sent_on) if self.sent_on else None,
            "modified_on": format_datetime(self.modified_on),
            "media": None,
        }
        if profile is None:
            return result
        return {name: result[name] for name in profile.message_fields if name in result}

    def in_folder(self, folder: str) -> bool:
        if self.direction == "in":
            return self.folder == folder
        if folder == "outbox":
            return self.status in OUTBOX_STATUSES
        if folder == "sent":
            return self.status in SENT_STATUSES
        if folder == "failed":
            return self.status in FAILED_STATUSES
        return False


@dataclass
class RecordedBroadcast:
    id: int
    uuid: str
    urns: list[str]
    text: dict[str, str]  # by language, as RapidPro echoes it
    raw_text: str | dict[str, str]  # exactly what the client sent
    base_language: str
    token: str
    workspace: str
    time: float  # fake.clock() when accepted
    created_on: datetime
    messages: list[FakeMessage] = field(default_factory=list)
    status_override: str | None = None  # set by set_broadcast_status / fail_broadcast

    @property
    def message_ids(self) -> list[int]:
        return [m.id for m in self.messages]


@dataclass
class Fault:
    """One injected fault, consumed by the next ``remaining`` matching requests."""

    kind: str  # "error" | "hang" | "drop" | "throttle" | "lose"
    remaining: int
    path: str | None = None
    method: str | None = None
    retry_after: int | None = None  # for "throttle"
    lose_how: str = "hang"  # for "lose": "hang" | "drop"

    def matches(self, method: str, path: str) -> bool:
        return (self.path is None or self.path == path) and (
            self.method is None or self.method.upper() == method
        )


class _ApiError(Exception):
    def __init__(self, status: int, body: Json, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, body)
        self.response = web.json_response(body, status=status, headers=headers)


class FakeRapidPro:
    """An in-process RapidPro. Mutate the public attributes freely between (or during) requests."""

    CHANNEL_UUID = "5f1a0c2e-7e2c-4d8a-9d0b-5d4c7f1b3a90"

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        clock: Clock = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
        wall_start: float | None = None,
        profile: str | Profile = "current",
    ) -> None:
        self.host = host
        self.port = port
        self._clock: Clock = clock
        self._base_clock = clock()
        self._base_wall = datetime.now(UTC) if wall_start is None else datetime.fromtimestamp(wall_start, UTC)

        # --- Knobs -------------------------------------------------------------------------
        # The RapidPro version answering (playground/rapidpro_profiles.py).
        self.profile: Profile = resolve_profile(profile)
        self.valid_tokens: set[str] = set(tokens)
        # Tokens not listed here belong to DEFAULT_WORKSPACE; the rate limit is per workspace.
        self.token_workspaces: dict[str, str] = {}
        # Calls an hour per RapidPro throttle scope ("v2", "v2.messages", "v2.broadcasts"), as
        # this version sets them; `rate_limit = n` sets every scope at once.
        self.rate_limits: dict[str, int] = self.profile.rates()
        self.rate_window = 3600.0
        # The workspace's country (workspace.json `country`): local numbers are read in it, as
        # RapidPro's URN.normalize does. "" for a workspace without one.
        self.country = "KE"
        self.retry_after_header = True
        self.retry_after_zero = False  # 429s say `Retry-After: 0` (seen from proxies and older servers)
        self.page_size = 250
        self.max_text_length = 4096
        self.max_urns = 100
        # None: RapidPro's own rules (transitions/outgoing/rapidpro_forms.py), the URN stored normalised;
        # a test may set a predicate instead (the URN then stored as sent).
        self.urn_validator: Callable[[str], bool] | None = None
        self.workspace_state: str | None = None  # None | "flagged" | "suspended"
        self.legacy_broadcasts = False  # 201 with "queued", statuses queued|sent|failed
        # An anonymous workspace: RapidPro's BroadcastReadSerializer answers `"urns": null`.
        self.anonymous = False
        self.message_delay = 0.0  # seconds (on self.clock) before a broadcast's messages appear
        # The channel (uuid, name) a new outgoing message to this URN goes through; None: the
        # fake's one default channel.
        self.channel_for: Callable[[str], tuple[str, str] | None] = lambda urn: None
        self.initial_message_status: str | None = "queued"
        self.default_status_script: list[str | None] = []  # copied onto every new message
        self.advance_scripts_on_poll = True  # GET messages.json advances matched scripts
        # An outage for as long as it is set, on every request (faults by count come first):
        # "error" (500), "hang" or "throttle" (429, Retry-After `outage_retry_after`).
        self.outage: str | None = None
        self.outage_retry_after = 1
        # While an unset Event, requests wait for it once recorded (several held in flight at once).
        self.hold: asyncio.Event | None = None

        # --- Recorded state ----------------------------------------------------------------
        self.broadcasts: list[RecordedBroadcast] = []
        self.messages: list[FakeMessage] = []
        self.requests: list[RecordedRequest] = []
        self.calls: Counter[tuple[str, str]] = Counter()
        self.faults: list[Fault] = []
        self._fail_next_broadcasts: deque[str] = deque()
        self._rate_history: dict[tuple[str, str], deque[float]] = {}
        self._contacts: dict[str, str] = {}
        self._next_broadcast_id = 123456
        self._next_message_id = 4105426

        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        # Set (and replaced) on every change; waiters re-check their predicate each time.
        self._changed = asyncio.Event()
        self._timers: list[asyncio.TimerHandle] = []

        # More endpoints, {path: {method: handler}}, answered like the built-in ones (token,
        # rate limit, faults, recording): GET handlers take the request, POST handlers the
        # request, its body and the workspace. playground/fake_workspace.py registers its own.
        self.extra_routes: dict[str, dict[str, Callable[..., Awaitable[web.StreamResponse]]]] = {}

        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    @property
    def rate_limit(self) -> int:
        """The `v2` scope's calls an hour."""
        return self.rate_limits["v2"]

    @rate_limit.setter
    def rate_limit(self, value: int) -> None:
        self.rate_limits = dict.fromkeys(self.rate_limits, value)

    def fill_window(self, scope: str, times: Iterable[float], workspace: str = DEFAULT_WORKSPACE) -> None:
        """Calls the scope's sliding hour already counts (times on this fake's clock), e.g. an hour
        of steady sending before the moment a test or bench starts from."""
        self._rate_history[(workspace, scope)] = deque(sorted(times))

    def scope_of(self, path: str) -> str:
        """The throttle scope RapidPro counts a call to `path` in (`throttle_scope` of its view)."""
        if path == MESSAGES_PATH:
            return "v2.messages"
        if path == BROADCASTS_PATH:
            return self.profile.broadcasts_scope
        return "v2"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeRapidPro:
        self._stopping.clear()
        # A short shutdown timeout: hung handlers are released by _stopping anyway.
        self._runner = web.AppRunner(self.app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeRapidPro:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ time

    @property
    def clock(self) -> Clock:
        return self._clock

    @clock.setter
    def clock(self, new_clock: Clock) -> None:
        """Swap clocks mid-test: stored clock times are shifted so nothing jumps."""
        delta = new_clock() - self._clock()
        self._base_clock += delta
        for history in self._rate_history.values():
            for i in range(len(history)):
                history[i] += delta
        for message in self.messages:
            message.visible_at += delta
        for broadcast in self.broadcasts:
            broadcast.time += delta
        for request in self.requests:
            request.time += delta
        self._clock = new_clock

    def now(self) -> datetime:
        """The fake's wall time, which follows the injected clock."""
        return self._base_wall + timedelta(seconds=self._clock() - self._base_clock)

    # ------------------------------------------------------------------ waiting

    def notify(self) -> None:
        """Wake wait_for(); call it after changing a FakeClock if a waiter depends on time."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self,
        predicate: Callable[[], Any] | Callable[[FakeRapidPro], Any],
        timeout: float = 5.0,
    ) -> Any:
        """Wait until predicate() (or predicate(fake)) is truthy; re-checked on every request
        and state change, never by polling. Returns its value; TimeoutError after ``timeout``."""
        takes_fake = _takes_argument(predicate)

        def check() -> Any:
            return predicate(self) if takes_fake else predicate()  # type: ignore[call-arg]

        async with asyncio.timeout(timeout):
            while not (value := check()):
                await self._changed.wait()
            return value

    # ------------------------------------------------------------------ scripting

    def broadcast(self, broadcast_id: int | str) -> RecordedBroadcast:
        """A broadcast by integer id or uuid (whatever the profile shows of it)."""
        for b in self.broadcasts:
            if b.id == broadcast_id or b.uuid == broadcast_id:
                return b
        raise KeyError(f"no broadcast {broadcast_id}")

    def ref(self, broadcast: RecordedBroadcast) -> int | str:
        """What a client of this version knows the broadcast by: its id, or its uuid (future)."""
        return broadcast.id if "id" in self.profile.broadcast_fields else broadcast.uuid

    def message(self, key: int | str) -> FakeMessage:
        """A message by integer id or uuid."""
        for m in self.messages:
            if m.id == key or m.uuid == key:
                return m
        raise KeyError(f"no message {key!r}")

    def messages_of(self, broadcast_id: int | str) -> list[FakeMessage]:
        if isinstance(broadcast_id, str):
            broadcast_id = self.broadcast(broadcast_id).id
        return [m for m in self.messages if m.broadcast == broadcast_id]

    def set_status(self, broadcast_id: int | str, status: str | None) -> None:
        """Set the status of every message of a broadcast (any string, or None like old
        RapidPro; unknown values are allowed on purpose, to test how the client copes)."""
        for m in self.messages_of(broadcast_id):
            self._apply_status(m, status)
        self.notify()

    def add_outgoing(self, urn: str, text: str = "other traffic",
                     channel: tuple[str, str] | None = None) -> RecordedBroadcast:
        """A broadcast another client of the workspace made (a flow, another app), without a
        request: benchmarks add tens of thousands of these as the workspace's other traffic.
        `channel`: (uuid, name) of the channel its message goes through (default: `channel_for`)."""
        language = self.profile.default_language
        return self._create_broadcast([urn], text, {language: text}, language, "another-client",
                                      DEFAULT_WORKSPACE, channel=channel)

    def set_statuses_of(self, broadcast: RecordedBroadcast, status: str | None) -> None:
        """`set_status` for a broadcast already in hand (no search: for benchmarks)."""
        for m in broadcast.messages:
            self._apply_status(m, status)

    def set_message_status(self, key: int | str, status: str | None) -> None:
        self._apply_status(self.message(key), status)
        self.notify()

    def script_statuses(self, broadcast_id: int | str | None, statuses: Iterable[str | None]) -> None:
        """Statuses a broadcast's messages step through: one step per GET messages.json that
        lists them (first page only) or per tick(). ``None`` for broadcast_id scripts all
        messages sent from now on (same as setting default_status_script)."""
        steps = list(statuses)
        if broadcast_id is None:
            self.default_status_script = steps
            return
        for m in self.messages_of(broadcast_id):
            m.script = deque(steps)

    def tick(self, broadcast_id: int | str | None = None) -> None:
        """Advance every scripted message (of one broadcast, or all) by one step."""
        if isinstance(broadcast_id, str):
            broadcast_id = self.broadcast(broadcast_id).id
        for m in self.messages:
            if broadcast_id is None or m.broadcast == broadcast_id:
                self._advance(m)
        self.notify()

    def release(self, broadcast_id: int | str | None = None) -> None:
        """Make delayed messages (of one broadcast, or all) visible now."""
        now = self._clock()
        if isinstance(broadcast_id, str):
            broadcast_id = self.broadcast(broadcast_id).id
        for m in self.messages:
            if (broadcast_id is None or m.broadcast == broadcast_id) and m.visible_at > now:
                m.visible_at = now
        self.notify()

    def set_broadcast_status(self, broadcast_id: int | str, status: str | None) -> None:
        """Pin what GET broadcasts.json reports (None: back to automatic)."""
        self.broadcast(broadcast_id).status_override = status
        self.notify()

    def fail_broadcast(self, broadcast_id: int | str, status: str = "failed") -> None:
        """End a broadcast as failed/interrupted without any message, as RapidPro can."""
        b = self.broadcast(broadcast_id)
        b.status_override = status
        dropped = {id(m) for m in b.messages}
        self.messages = [m for m in self.messages if id(m) not in dropped]
        b.messages = []
        self.notify()

    def fail_next_broadcasts(self, count: int = 1, status: str = "failed") -> None:
        """The next ``count`` accepted broadcasts still answer 201, then end ``status`` with
        no messages (for when a test cannot know the id in advance)."""
        self._fail_next_broadcasts.extend([status] * count)

    def add_incoming(
        self,
        text: str,
        urn: str,
        folder: str = "inbox",
        *,
        created_on: datetime | None = None,
        delay: float = 0.0,
        handled: bool = True,
    ) -> FakeMessage:
        """An incoming message (direction "in", status "handled") in inbox or flows; one mailroom
        has not handled yet (`handled=False`, status "pending") is in no folder."""
        if folder not in ("inbox", "flows"):
            raise ValueError("incoming messages live in 'inbox' or 'flows'")
        when = created_on or self.now()
        message = FakeMessage(
            id=self._take_message_id(),
            uuid=str(uuid.uuid4()),
            broadcast=None,
            contact_uuid=self._contact_for(urn),
            urn=urn,
            direction="in",
            status="handled" if handled else "pending",
            text=text,
            created_on=when,
            modified_on=when,
            visible_at=self._clock() + delay,
            folder=folder if handled else None,
        )
        self.messages.append(message)
        self._notify_when_visible(delay)
        self.notify()
        return message

    # ------------------------------------------------------------------ fault injection

    def inject_fault(
        self,
        kind: str,
        count: int = 1,
        *,
        path: str | None = None,
        method: str | None = None,
        retry_after: int | None = None,
        lose_how: str = "hang",
    ) -> Fault:
        if kind not in ("error", "hang", "drop", "throttle", "lose"):
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind, count, path, method, retry_after, lose_how)
        self.faults.append(fault)
        return fault

    def fail_next(self, count: int = 1, *, path: str | None = None) -> Fault:
        """500 with an HTML body, without touching any state."""
        return self.inject_fault("error", count, path=path)

    def hang_next(self, count: int = 1, *, path: str | None = None) -> Fault:
        """No answer at all until stop(): the client must time out. Nothing is processed."""
        return self.inject_fault("hang", count, path=path)

    def drop_next(self, count: int = 1, *, path: str | None = None) -> Fault:
        """Close the connection at once, without processing the request."""
        return self.inject_fault("drop", count, path=path)

    def lose_next_response(
        self, count: int = 1, *, path: str | None = BROADCASTS_PATH, how: str = "hang"
    ) -> Fault:
        """Process the request for real (a POST creates and records the broadcast), then
        hang until stop() (``how="hang"``) or drop the connection (``how="drop"``)."""
        return self.inject_fault("lose", count, path=path, lose_how=how)

    def throttle_next(self, count: int = 1, *, retry_after: int = 60, path: str | None = None) -> Fault:
        """429 regardless of the rate window (honours retry_after_header)."""
        return self.inject_fault("throttle", count, path=path, retry_after=retry_after)

    # ------------------------------------------------------------------ assertions

    def call_count(self, method: str, path: str) -> int:
        return self.calls[(method.upper(), path)]

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method.upper())]

    # ------------------------------------------------------------------ HTTP

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read() if request.can_read_body else b""
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query={k: request.query.getall(k) for k in request.query},
            token=_token_of(request.headers.get("Authorization")),
            time=self._clock(),
            body=body,
            user_agent=request.headers.get("User-Agent"),
        )
        self.requests.append(record)
        self.calls[(request.method, request.path)] += 1
        self.notify()  # lets tests wait for "the request arrived" (e.g. a hang)
        if self.hold is not None:
            await self.hold.wait()

        fault = self._take_fault(request.method, request.path)
        try:
            if fault is not None and fault.kind == "hang":
                return await self._hang(request)
            if fault is not None and fault.kind == "drop":
                return self._drop(request)
            if fault is not None and fault.kind == "error":
                response: web.StreamResponse = web.Response(
                    status=500, text=_HTML_500, content_type="text/html"
                )
            elif fault is not None and fault.kind == "throttle":
                response = self._throttled(fault.retry_after or 1)
            else:
                response = await self._handle(request, body)
            record.status = response.status
        finally:
            self.notify()

        if fault is not None and fault.kind == "lose":
            record.status = None
            if fault.lose_how == "drop":
                return self._drop(request)
            return await self._hang(request)
        return response

    async def _handle(self, request: web.Request, body: bytes) -> web.StreamResponse:
        routes: dict[str, dict[str, Callable[..., Awaitable[web.StreamResponse]]]] = {
            BROADCASTS_PATH: {"GET": self._get_broadcasts, "POST": self._post_broadcast},
            MESSAGES_PATH: {"GET": self._get_messages},
            WORKSPACE_PATH: {"GET": self._get_workspace},
            **self.extra_routes,
        }
        methods = routes.get(request.path)
        if methods is None:
            # Unknown paths and paths without .json: Django's HTML page, not JSON.
            return web.Response(status=404, text=_HTML_404, content_type="text/html")
        try:
            workspace = self._authenticate(request)
            handler = methods.get(request.method)
            if handler is None:
                raise _ApiError(405, {"detail": f'Method "{request.method}" not allowed.'})
            self._check_rate(workspace, self.scope_of(request.path))
            if request.method == "POST":
                return await handler(request, body, workspace)
            return await handler(request)
        except _ApiError as error:
            return error.response

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining > 0 and fault.matches(method, path):
                fault.remaining -= 1
                return fault
        if self.outage is not None:
            return Fault(self.outage, 1, retry_after=self.outage_retry_after)
        return None

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        await self._stopping.wait()
        return self._drop(request)

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        # aiohttp quietly fails to write this to the aborted transport.
        return web.Response(status=499)

    def _authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        parts = header.split()
        if not parts or parts[0].lower() != "token":
            # DRF: another scheme (or none) means "no credentials", not "bad credentials".
            raise _ApiError(403, {"detail": "Authentication credentials were not provided."})
        if len(parts) == 1:
            raise _ApiError(403, {"detail": "Invalid token header. No credentials provided."})
        if len(parts) > 2:
            raise _ApiError(403, {"detail": "Invalid token header. Token string should not contain spaces."})
        if parts[1] not in self.valid_tokens:
            raise _ApiError(403, {"detail": "Invalid token"})
        return self.token_workspaces.get(parts[1], DEFAULT_WORKSPACE)

    def _check_rate(self, workspace: str, scope: str = "v2") -> None:
        """DRF's SimpleRateThrottle (rest_framework/throttling.py) per workspace and scope: the
        calls of the last `rate_window` counted; a throttled call is not. Its `wait()` is the
        oldest call's remaining time divided by the calls still available plus one, and None
        when the window holds more calls than the rate (the rate was lowered, or concurrent
        server workers both let a call in): a 429 without Retry-After then."""
        now = self._clock()
        limit = self.rate_limits.get(scope, self.rate_limit)
        history = self._rate_history.setdefault((workspace, scope), deque())
        while history and history[0] <= now - self.rate_window:
            history.popleft()
        if len(history) >= limit:
            remaining = self.rate_window - (now - history[0]) if history else self.rate_window
            available = limit - len(history) + 1
            wait = None if available <= 0 else math.ceil(remaining / available)
            raise _ApiError(*self._throttle_parts(wait))
        history.append(now)

    def _throttle_parts(self, wait: int | None) -> tuple[int, Json, dict[str, str]]:
        """DRF's Throttled: the wait rounded up in the detail, Retry-After only when it is not
        0 (rest_framework/views.py `if getattr(exc, 'wait', None)`)."""
        if wait is None or not self.retry_after_header:
            return 429, {"detail": "Request was throttled."}, {}
        if self.retry_after_zero:
            detail = "Request was throttled. Expected available in 0 seconds."
            return 429, {"detail": detail}, {"Retry-After": "0"}
        unit = "second" if wait == 1 else "seconds"
        headers = {"Retry-After": str(wait)} if wait else {}
        return 429, {"detail": f"Request was throttled. Expected available in {wait} {unit}."}, headers

    def _throttled(self, wait: int) -> web.Response:
        status, body, headers = self._throttle_parts(wait)
        return web.json_response(body, status=status, headers=headers)

    # --- POST broadcasts.json

    async def _post_broadcast(self, request: web.Request, body: bytes, workspace: str) -> web.StreamResponse:
        try:
            data = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _ApiError(400, {"detail": f"JSON parse error - {exc}"}) from exc
        if not isinstance(data, dict):
            # temba/api/v2/serializers.py WriteSerializer.run_validation
            raise _ApiError(400, {"non_field_errors": ["Request body should be a single JSON object"]})
        urns, text, base_language = self._validate_broadcast(data)
        if self.workspace_state in WORKSPACE_ERRORS:
            raise _ApiError(400, {"non_field_errors": [WORKSPACE_ERRORS[self.workspace_state]]})

        token = _token_of(request.headers.get("Authorization")) or ""
        broadcast = self._create_broadcast(urns, data["text"], text, base_language, token, workspace)
        return web.json_response(self._broadcast_json(broadcast, fresh=True), status=201)

    def _validate_broadcast(self, data: Json) -> tuple[list[str], dict[str, str], str]:
        errors: Json = {}
        urns = data.get("urns")
        if urns is None or urns == []:
            if not data.get("contacts") and not data.get("groups"):
                errors["non_field_errors"] = ["Must provide either urns, contacts or groups."]
            urns = []
        elif not isinstance(urns, list) or not all(isinstance(u, str) for u in urns):
            errors["urns"] = ["Expected a list of items."]
        elif len(urns) > self.max_urns:
            errors["urns"] = [f"Ensure this field has no more than {self.max_urns} elements."]
        else:
            stored, bad = [], {}
            for i, u in enumerate(urns):
                normalised = self._normalise_urn(u)
                if normalised is None:
                    bad[str(i)] = [INVALID_URN.format(u)]
                else:
                    stored.append(normalised)
            if bad:
                errors["urns"] = bad
            urns = stored

        raw = data.get("text")
        base_language = data.get("base_language") or self.profile.default_language
        texts: dict[str, str] = {}
        if raw is None or raw == {}:
            # BroadcastWriteSerializer.validate: neither text nor attachments.
            errors.setdefault("non_field_errors", []).insert(0, "Must provide either text or attachments.")
        elif isinstance(raw, str):
            texts = {base_language: raw}
        elif isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
            texts = dict(raw)
            if base_language not in texts:
                base_language = next(iter(texts))
        else:
            errors["text"] = ["Not a valid string."]
        # Each translation is a DRF CharField: trimmed, then blank / NUL / length refused.
        text_errors: Json = {}
        for lang, value in texts.items():
            trimmed = rapidpro_text(value)
            if isinstance(raw, dict) and not _LANGUAGE.fullmatch(lang):
                text_errors[lang] = ["Not an allowed ISO 639-3 language code."]
            elif trimmed == "":
                text_errors[lang] = [BLANK]
            elif len(trimmed) > self.max_text_length:
                text_errors[lang] = [f"Ensure this field has no more than {self.max_text_length} characters."]
            elif "\x00" in trimmed:
                text_errors[lang] = [NULL_CHARACTERS]
            texts[lang] = trimmed
        if text_errors:
            errors["text"] = text_errors
        if errors:
            raise _ApiError(400, errors)
        return urns, texts, base_language

    def _normalise_urn(self, urn: str) -> str | None:
        """The URN RapidPro stores (`validate_urn` in the workspace's country), None if refused."""
        if self.urn_validator is not None:
            return urn if self.urn_validator(urn) else None
        return rapidpro_urn(urn, self.country or None)

    def _create_broadcast(
        self,
        urns: list[str],
        raw_text: str | dict[str, str],
        text: dict[str, str],
        base_language: str,
        token: str,
        workspace: str,
        channel: tuple[str, str] | None = None,
    ) -> RecordedBroadcast:
        now, created = self._clock(), self.now()
        broadcast = RecordedBroadcast(
            id=self._next_broadcast_id,
            uuid=str(uuid.uuid4()),
            urns=list(urns),
            text=text,
            raw_text=raw_text,
            base_language=base_language,
            token=token,
            workspace=workspace,
            time=now,
            created_on=created,
        )
        self._next_broadcast_id += 1
        self.broadcasts.append(broadcast)
        if self._fail_next_broadcasts:
            broadcast.status_override = self._fail_next_broadcasts.popleft()
            return broadcast
        # Messages are "created" when they appear, like mailroom creating them a bit later.
        appears = created + timedelta(seconds=self.message_delay)
        for urn in urns:
            message = FakeMessage(
                id=self._take_message_id(),
                uuid=str(uuid.uuid4()),
                broadcast=broadcast.id,
                contact_uuid=self._contact_for(urn),
                urn=urn,
                direction="out",
                status=None,
                text=text[base_language],
                created_on=appears,
                modified_on=appears,
                visible_at=now + self.message_delay,
                script=deque(self.default_status_script),
                channel=channel or self.channel_for(urn),
            )
            self._apply_status(message, self.initial_message_status, when=appears)
            broadcast.messages.append(message)
            self.messages.append(message)
        self._notify_when_visible(self.message_delay)
        return broadcast

    def _broadcast_status(self, broadcast: RecordedBroadcast, *, fresh: bool = False) -> str:
        if broadcast.status_override is not None and not fresh:
            status = broadcast.status_override
        elif fresh:
            status = "pending"
        elif broadcast.messages and all(m.visible_at <= self._clock() for m in broadcast.messages):
            status = "completed"
        else:
            status = "pending"
        if self.legacy_broadcasts or self.profile.legacy_broadcast_statuses:
            return _LEGACY_BROADCAST_STATUS.get(status, status)
        return status

    def _progress(self, broadcast: RecordedBroadcast, *, fresh: bool) -> Json:
        if fresh:
            return {"total": -1, "started": 0}
        started = sum(1 for m in broadcast.messages if m.visible_at <= self._clock())
        return {"total": len(broadcast.urns), "started": started}

    def _broadcast_json(self, broadcast: RecordedBroadcast, *, fresh: bool = False) -> Json:
        result: Json = {
            "uuid": broadcast.uuid,
            "id": broadcast.id,
            "status": self._broadcast_status(broadcast, fresh=fresh),
            "progress": self._progress(broadcast, fresh=fresh),
            "urns": None if self.anonymous else broadcast.urns,
            "contacts": [],  # only contacts given by uuid in the request; we take urns only
            "groups": [],
            "text": broadcast.text,
            "attachments": {language: [] for language in broadcast.text},
            "quick_replies": {language: [] for language in broadcast.text},
            "base_language": broadcast.base_language,
            "created_on": format_datetime(broadcast.created_on),
        }
        result = {name: result[name] for name in self.profile.broadcast_fields if name in result}
        if self.legacy_broadcasts:
            # Older RapidPro: no uuid and no progress; status from queued|sent|failed.
            result.pop("uuid", None)
            result.pop("progress", None)
        return result

    # --- GET broadcasts.json / messages.json

    async def _get_broadcasts(self, request: web.Request) -> web.StreamResponse:
        q = self._honoured(request, self.profile.broadcast_filters)
        items = list(self.broadcasts)
        items = _filter_equal(items, q, "id", _int_param, lambda b: b.id)
        items = _filter_equal(items, q, "uuid", _uuid_param, lambda b: b.uuid)
        items = _filter_dates(items, q, lambda b: b.created_on)
        items.sort(key=lambda b: (b.created_on, b.id), reverse=True)
        return self._page(request, items, lambda b: (b.created_on, b.id), self._broadcast_json)

    async def _get_workspace(self, request: web.Request) -> web.StreamResponse:
        workspace = self._authenticate(request)
        return web.json_response({
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-rapidpro:{workspace}")),
            "name": f"Fake workspace {workspace}", "country": self.country, "languages": ["eng"],
            "timezone": "Africa/Nairobi", "date_style": "day_first", "anon": self.anonymous,
            # Deprecated, still answered (WorkspaceReadSerializer).
            "credits": {"used": -1, "remaining": -1}, "primary_language": "eng",
        })

    async def _get_messages(self, request: web.Request) -> web.StreamResponse:
        q = self._honoured(request, self.profile.message_filters)
        exclusive = self.profile.exclusive
        given = [name for name in exclusive if name in q]
        if len(given) > 1:
            raise _ApiError(
                400, {"detail": f"You may only specify one of the {', '.join(exclusive)} parameters"},
            )
        now = self._clock()
        items = [m for m in self.messages if m.visible_at <= now]
        items = _filter_equal(items, q, "broadcast", _int_param, lambda m: m.broadcast)
        if "contact" in q:
            items = [m for m in items if m.contact_uuid == q["contact"]]
        if "label" in q:
            items = []  # the fake has no labels
        if "folder" in q:
            folder = q["folder"].lower()
            items = [m for m in items if folder in FOLDERS and m.in_folder(folder)]
        items = _filter_equal(items, q, "uuid", _uuid_param, lambda m: m.uuid)
        items = _filter_equal(items, q, "id", _int_param, lambda m: m.id)
        items = _filter_dates(items, q, lambda m: m.created_on)
        if self.advance_scripts_on_poll and "cursor" not in request.query:
            for m in items:
                self._advance(m)

        def key(m: FakeMessage) -> tuple[datetime, int]:
            return (m.created_on, m.id)

        if self.profile.sent_by_sent_on and q.get("folder", "").lower() == "sent":
            def key(m: FakeMessage) -> tuple[datetime, int]:  # RapidPro's SentOnCursorPagination
                return (m.sent_on or m.created_on, m.id)

        items.sort(key=key, reverse=True)
        return self._page(request, items, key, lambda m: m.to_json(self.profile))

    @staticmethod
    def _honoured(request: web.Request, names: frozenset[str]) -> dict[str, str]:
        """The query parameters this version reads; RapidPro ignores any other (no error)."""
        return {name: value for name, value in request.query.items() if name in names}

    def _page(
        self,
        request: web.Request,
        items: list[T],
        key: Callable[[T], tuple[datetime, int]],
        render: Callable[[T], Json],
    ) -> web.StreamResponse:
        """DRF-style cursor pagination over ``items`` (already newest first). The cursor holds
        the position of the edge item, so rows added meanwhile don't shift the pages."""
        cursor = request.query.get("cursor")
        reverse = False
        if cursor:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(cursor.encode()))
                position = (parse_datetime(decoded["p"]), int(decoded["id"]))
                reverse = bool(decoded["r"])
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise _ApiError(404, {"detail": "Invalid cursor"}) from exc
            if reverse:
                before = [i for i in items if key(i) > position]
                page = before[-self.page_size :]
                has_next, has_previous = True, len(before) > len(page)
            else:
                after = [i for i in items if key(i) < position]
                page = after[: self.page_size]
                has_next, has_previous = len(after) > len(page), True
        else:
            page = items[: self.page_size]
            has_next, has_previous = len(items) > len(page), False

        def link(item: T, rev: bool) -> str:
            when, ident = key(item)
            token = base64.urlsafe_b64encode(
                json.dumps({"p": format_datetime(when), "id": ident, "r": rev}).encode()
            ).decode()
            return str(request.url.update_query(cursor=token))

        return web.json_response(
            {
                "next": link(page[-1], False) if has_next and page else None,
                "previous": link(page[0], True) if has_previous and page else None,
                "results": [render(i) for i in page],
            }
        )

    # ------------------------------------------------------------------ helpers

    def _apply_status(
        self, message: FakeMessage, status: str | None, *, when: datetime | None = None
    ) -> None:
        now = when or self.now()
        if message.status != status:
            message.status = status
            message.modified_on = now
        if status in SENT_STATUSES and message.sent_on is None:
            message.sent_on = now

    def _advance(self, message: FakeMessage) -> None:
        if message.script:
            self._apply_status(message, message.script.popleft())

    def _take_message_id(self) -> int:
        self._next_message_id += 1
        return self._next_message_id - 1

    def _contact_for(self, urn: str) -> str:
        return self._contacts.setdefault(urn, str(uuid.uuid4()))

    def _notify_when_visible(self, delay: float) -> None:
        # With the real clock, wake waiters when delayed messages appear; a FakeClock user
        # calls notify() after advancing it.
        if delay > 0 and self._runner is not None and self._clock is time.monotonic:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(delay, self.notify))


def _token_of(header: str | None) -> str | None:
    if not header:
        return None
    parts = header.split()
    if len(parts) == 2 and parts[0].lower() == "token":
        return parts[1]
    return None


def _int_param(query: Mapping[str, str], name: str) -> int:
    try:
        return int(query[name])
    except ValueError as exc:
        raise _ApiError(400, {"detail": f"Value for {name} must be an integer"}) from exc


def _uuid_param(query: Mapping[str, str], name: str) -> str:
    """As RapidPro's `get_uuid_param` (current): a malformed value is a 400."""
    try:
        return str(uuid.UUID(query[name]))
    except ValueError as exc:
        raise _ApiError(400, {"detail": f"Param '{name}': {query[name]} is not a valid UUID."}) from exc


def _filter_equal(items: list[T], query: Mapping[str, str], name: str,
                  parse: Callable[[Mapping[str, str], str], Any], field: Callable[[T], Any]) -> list[T]:
    """The items whose `field` equals the `name` parameter, read by `parse` (its 400 on a bad value)."""
    if name not in query:
        return items
    wanted = parse(query, name)
    return [i for i in items if field(i) == wanted]


def _filter_dates(items: list[T], query: Mapping[str, str], created: Callable[[T], datetime]) -> list[T]:
    """``before``/``after`` are inclusive on created_on."""
    for name in ("before", "after"):
        if name not in query:
            continue
        if not query[name]:
            continue  # `if before:` — an empty value is no filter
        try:
            bound = parse_datetime(query[name])
        except ValueError:
            # temba/api/views.py filter_before_after: an unparseable date matches nothing.
            return []
        if name == "before":
            items = [i for i in items if created(i) <= bound]
        else:
            items = [i for i in items if created(i) >= bound]
    return items


def _takes_argument(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)

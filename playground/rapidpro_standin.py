"""A local RapidPro stand-in for the playground (`./scripts/run` without COUCH_URL) and for
trying the worker by hand: the tests' FakeRapidPro plus what a real workspace does on its own.

- **A timeline**: every message of a broadcast moves queued → wired → sent → delivered over a
  few seconds of real time (`timeline`), as a channel reporting delivery would. The fake's
  poll-driven status scripts are off, so what the worker sees depends on when it asks, not on
  how often.
- **Incoming SMS and a flow**: `receive()` stores an incoming message (folder `flows`, so the
  worker's reconciliation would list it too) and then calls the worker's webhook the way a
  RapidPro flow's *Call Webhook* action does, a 15-second timeout, no retry (RapidPro has not
  retried failed webhooks since July 2025). The flow is the workspace's own once one is
  imported (`cht-rapidpro-worker rapidpro setup`, then `POST /orgimport/create/`): the flow a
  catch-all trigger starts, its webhook's method, URL, headers and body evaluated with the
  workspace's globals and the message (transitions/rapidpro/excellent.py). Until then a built-in one:
  `POST <webhook_url>`, `Authorization: Token <key>`, body `{"id": <message uuid>, "from":
  <number>, "content": <text>}`.
- **A channel receive URL** for curl, shaped like RapidPro's External API channel
  (`POST /c/ex/<channel uuid>/receive` with `from` and `text`, as form fields or query
  parameters): an SMS "arrives" and the flow runs.

A development tool: it is not part of the installed package (pyproject ships worker*,
transitions*, config* only). Run alone with
`python -m playground.rapidpro_standin --port 15985 --webhook-url URL --webhook-key KEY`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from playground.fake_rapidpro import BROADCASTS_PATH, FakeMessage, FakeRapidPro
from playground.fake_workspace import workspace_of
from transitions.cht.phone import mask_phone
from transitions.rapidpro.excellent import evaluate_template
from worker.logs import configure_logging, get_logger

log = get_logger(__name__)

# Seconds after the broadcast POST at which its messages reach each status.
DEFAULT_TIMELINE: tuple[tuple[float, str], ...] = ((1.5, "wired"), (3.0, "sent"), (5.0, "delivered"))
WEBHOOK_TIMEOUT = 15.0  # RapidPro's limit for a whole webhook call
USER_AGENT = "Mailroom/playground"  # mailroom announces itself so; the worker does not care
KEEP_REQUESTS = 1000  # the fake records every request; a long-running stand-in keeps the last ones


WebhookCall = tuple[str, str, dict[str, str], str]  # method, URL, headers, body


@dataclass(frozen=True)
class WebhookResult:
    message: FakeMessage
    status: int | None  # None: the worker did not answer (down, timeout)
    body: str
    error: str | None = None


class RapidProStandIn:
    """A FakeRapidPro that behaves like a live workspace. Use as an async context manager, or
    `await start()` / `await stop()`."""

    def __init__(
        self,
        *,
        token: str,
        webhook_url: str | None = None,
        webhook_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timeline: Sequence[tuple[float, str]] = DEFAULT_TIMELINE,
        message_delay: float = 0.5,
    ) -> None:
        self.fake = FakeRapidPro(tokens=(token,), host=host, port=port)
        self.workspace = workspace_of(self.fake)  # globals, flows, channels, the import page
        self.fake.advance_scripts_on_poll = False  # statuses follow the timeline, not the polls
        self.fake.message_delay = message_delay  # messages appear a moment after the POST
        # Ids from the clock: a broadcast id of an earlier run (left on a CHT task) never names
        # one of this run. The fake has no option for it; its counter is set once, here.
        self.fake._next_broadcast_id = int(time.time())
        self.webhook_url = webhook_url
        self.webhook_key = webhook_key
        self.timeline = tuple(sorted(timeline))
        self.fake.app.middlewares.append(self._middleware)
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> RapidProStandIn:
        await self.fake.start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT))
        log.info("rapidpro_standin_listening", url=self.url, webhook_url=self.webhook_url)
        return self

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.fake.stop()

    async def __aenter__(self) -> RapidProStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return self.fake.url

    @property
    def receive_path(self) -> str:
        return f"/c/ex/{FakeRapidPro.CHANNEL_UUID}/receive"

    @property
    def receive_url(self) -> str:
        return self.url + self.receive_path

    # ------------------------------------------------------------------ outgoing: the timeline

    def _schedule_timeline(self, broadcast_id: int) -> None:
        loop = asyncio.get_running_loop()
        messages = self.fake.messages_of(broadcast_id)
        for message in messages:
            log.info("rapidpro_standin_message", broadcast_id=broadcast_id, message_id=message.id,
                     to=mask_phone(message.urn.removeprefix("tel:")), status=message.status)
        for delay, status in self.timeline:
            timer = loop.call_later(delay, self._step, broadcast_id, status)
            self._timers.add(timer)

    def _step(self, broadcast_id: int, status: str) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > time.monotonic()}
        for message in self.fake.messages_of(broadcast_id):
            if message.status == status:
                continue
            # Through the fake's own setter, so modified_on / sent_on move as RapidPro's do.
            self.fake.set_message_status(message.id, status)
            log.info("rapidpro_standin_message", broadcast_id=broadcast_id, message_id=message.id,
                     to=mask_phone(message.urn.removeprefix("tel:")), status=status)
        del self.fake.requests[:-KEEP_REQUESTS]

    # ------------------------------------------------------------------ incoming: the flow

    async def receive(self, text: str, sender: str) -> WebhookResult:
        """An SMS arrives from `sender` (a number such as +254712345678): store it, then run the
        flow's webhook call to the worker. Returns what the worker answered."""
        number = sender.removeprefix("tel:")
        message = self.fake.add_incoming(text, f"tel:{number}", folder="flows")
        call = self._imported_call(message) or self._built_in_call(message, number)
        if call is None:
            log.warning("rapidpro_standin_no_webhook", message_id=message.id)
            return WebhookResult(message, None, "", "no webhook configured")
        assert self._session is not None, "start() first"
        method, url, headers, data = call
        headers = {**headers, "User-Agent": USER_AGENT}
        started = time.perf_counter()
        try:
            async with self._session.request(method, url, data=data.encode(), headers=headers) as r:
                answer = (await r.text())[:500]
                result = WebhookResult(message, r.status, answer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            result = WebhookResult(message, None, "", f"{type(exc).__name__}: {exc}")
        # As RapidPro: 2xx takes the flow's Success branch, anything else Failure (never retried).
        branch = "success" if result.status is not None and 200 <= result.status < 300 else "failure"
        log.log(20 if branch == "success" else 30, "rapidpro_standin_webhook_called",
                message_uuid=message.uuid, sender=mask_phone(number), status=result.status,
                answer=result.body, error=result.error, branch=branch,
                duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return result

    def _built_in_call(self, message: FakeMessage, number: str) -> WebhookCall | None:
        if self.webhook_url is None or self.webhook_key is None:
            return None
        body = {"id": message.uuid, "from": number, "content": message.text}
        return ("POST", self.webhook_url, {"Authorization": f"Token {self.webhook_key}",
                                           "Content-Type": "application/json"}, json.dumps(body))

    def _imported_call(self, message: FakeMessage) -> WebhookCall | None:
        """The Call Webhook action of the flow a catch-all trigger starts, evaluated for `message`."""
        workspace = self.workspace
        started = {t.flow_uuid for t in workspace.triggers if t.trigger_type == "C" and not t.archived}
        flow = next((f for f in workspace.flows if f.uuid in started and not f.archived), None)
        nodes = flow.definition.get("nodes") or [] if flow is not None else []
        action = next((a for node in nodes for a in node.get("actions") or []
                       if a.get("type") == "call_webhook"), None)
        if action is None:
            return None
        context = {"globals": {key: g.value for key, g in workspace.globals.items()},
                   "input": {"uuid": message.uuid, "text": message.text},
                   "urns": {"tel": message.urn}, "run": {"uuid": str(uuid.uuid4())}}

        def value(template: Any) -> str:
            return evaluate_template(str(template or ""), context)

        headers = {name: value(template) for name, template in (action.get("headers") or {}).items()}
        method = str(action.get("method") or "GET")
        return method, value(action.get("url")), headers, value(action.get("body"))

    async def _receive_endpoint(self, request: web.Request) -> web.Response:
        fields: dict[str, str] = dict(request.query)
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                fields.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        sender, text = fields.get("from", "").strip(), fields.get("text", "")
        if not sender or not text.strip():
            return web.json_response({"message": "Error", "data": [
                {"type": "error", "error": "missing required field 'from' or 'text'"}]}, status=400)
        result = await self.receive(text, sender)
        return web.json_response({"message": "Message Accepted", "data": [{
            "type": "msg", "channel_uuid": FakeRapidPro.CHANNEL_UUID, "msg_uuid": result.message.uuid,
            "text": text, "urn": result.message.urn,
            # Not in RapidPro's answer: what the flow's webhook call to the worker got, to see it at once.
            "webhook": {"status": result.status, "answer": result.body, "error": result.error}}]})

    # ------------------------------------------------------------------ HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == self.receive_path and request.method == "POST":
            return await self._receive_endpoint(request)
        response = await handler(request)
        if request.method == "POST" and request.path == BROADCASTS_PATH and response.status == 201:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                self._schedule_timeline(int(json.loads(response.body)["id"]))
        return response


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with RapidProStandIn(token=args.token, webhook_url=args.webhook_url, webhook_key=args.webhook_key,
                               host=args.host, port=args.port):
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="A local RapidPro stand-in (development only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=15985)
    parser.add_argument("--token", default="playground-api-token", help="the API token it accepts")
    parser.add_argument("--webhook-url", help="the worker's incoming webhook, called for each SMS received")
    parser.add_argument("--webhook-key", help="the key the webhook call presents")
    args = parser.parse_args()
    configure_logging("info", "console")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()

"""Opt-in incoming reconciliation: store the incoming SMS the webhook never delivered.

Since July 2025 RapidPro never retries a failed webhook, so an SMS that arrived while the worker
or CouchDB was down reaches the flow's Failure branch and never CHT. Every `interval` this lists
RapidPro's incoming messages (`messages.json?folder=inbox`, then `folder=flows`) created since
the last reconciled time, following cursors, with the lowest priority of the shared rate budget,
and stores those not stored yet: same record builder, same de-duplication (`IncomingStore`).

The two paths recognise each other only through the id: a record's `_id` derives from the
RapidPro id it was stored under. The reconciliation stores under the message **uuid**, so the
flow's webhook body must send that uuid as `id` (`"id": "@input.uuid"`); a flow that sends
something else (CHT's docs use the run uuid) makes every reconciled message a second copy.
RapidPro's API lists message uuids only since v10.3.79 (Oct 2025): an older server's listing
has nothing the webhook's ids can be matched with, so the round stores nothing and says why
(`skipped_reason`) rather than store every message a second time.

The watermark (`after=`) is a doc in the worker's own database, moved only when a whole round
succeeded; each round re-reads `overlap` seconds before it (clock skew, messages that became
visible late) — repeats are free — and leaves the last `min_age` seconds to the webhook.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from transitions.cht.timestamps import parse_time, rapidpro_time
from transitions.cht.translations import EMPTY as NO_TRANSLATIONS
from transitions.cht.translations import Translations
from transitions.incoming.record import IncomingMessage, build_record
from worker.couch.client import Conflict, CouchError, Database
from worker.incoming.webhook import IncomingStore, Outcome
from worker.logs import get_logger
from worker.rapidpro.budget import Priority
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.credentials import Credential
from worker.rapidpro.errors import RapidProError

log = get_logger(__name__)

WATERMARK_DOC_ID = "incoming-reconcile"
FOLDERS = ("inbox", "flows")
# Stored a chunk at a time: each store has its own deadline from the moment it is queued.
_CHUNK = 100


@dataclass
class RoundResult:
    listed: int = 0
    saved: int = 0
    repeats: int = 0
    skipped: int = 0  # not storable: no uuid, no text (attachments only), not incoming
    after: str | None = None
    before: str | None = None
    skipped_reason: str | None = None  # the whole round did not run (no URL, no token)


def message_from_api(item: dict[str, Any]) -> IncomingMessage | None:
    """A `messages.json` result as a webhook message (id = the message uuid), or None."""
    if item.get("direction", "in") != "in":
        return None
    uuid, text, urn = item.get("uuid"), item.get("text"), item.get("urn")
    # As the webhook: only an empty text or sender is refused; a blank one is stored (sys.empty).
    if not isinstance(uuid, str) or not uuid or not isinstance(text, str) or not text:
        return None
    sender = ""
    if isinstance(urn, str):
        # "tel:+254712345678" -> "+254712345678"; other schemes keep their path as the sender.
        sender = urn.split(":", 1)[1] if ":" in urn else urn
        sender = sender.split("?", 1)[0]
    if not sender:
        return None
    return IncomingMessage(id=uuid, sender=sender, content=text)


class IncomingReconciler:
    def __init__(
        self,
        *,
        client: RapidProClient,
        token: Credential,
        settings: Callable[[], Settings | None],
        store: IncomingStore,
        translations: Callable[[], Translations] = lambda: NO_TRANSLATIONS,
        own_db: Database,
        clock: Callable[[], float] = time.time,
        lookback: float = 3600.0,
        overlap: float = 600.0,
        min_age: float = 60.0,
    ) -> None:
        """`lookback`: how far back the first round (no watermark yet) looks."""
        self._client = client
        self._token = token
        self._settings = settings
        self._translations = translations
        self._store = store
        self._own_db = own_db
        self._clock = clock
        self._lookback = lookback
        self._overlap = overlap
        self._min_age = min_age
        self.last_round: RoundResult | None = None
        self.reconciled_total = 0  # messages stored since start (the webhook had missed them)
        self.last_error: str | None = None

    async def _watermark(self) -> tuple[float | None, dict[str, Any] | None]:
        doc = await self._own_db.get_or_none(WATERMARK_DOC_ID)
        return (parse_time(doc.get("after")) if doc else None), doc

    async def _save_watermark(self, upto: float, doc: dict[str, Any] | None) -> None:
        new = {"_id": WATERMARK_DOC_ID, "type": "incoming_reconcile_watermark", "after": rapidpro_time(upto),
               "updated_at": rapidpro_time(self._clock())}
        for _ in range(3):
            if doc is not None and "_rev" in doc:
                new["_rev"] = doc["_rev"]
            try:
                await self._own_db.put(new)
                return
            except Conflict:  # another worker instance moved it: keep the later one
                doc = await self._own_db.get_or_none(WATERMARK_DOC_ID)
                current = parse_time(doc.get("after")) if doc else None
                if current is not None and current >= upto:
                    return

    async def run_round(self) -> RoundResult:
        """One pass over both folders. Raises RapidProError / CouchError when the round could not
        complete; the watermark then stays, and the next round covers the same time again."""
        result = RoundResult()
        settings = self._settings()
        base_url = settings.rapidpro_url if settings else None
        if not base_url:
            result.skipped_reason = "no sms.rapidpro.url in CHT's settings"
            return self._done(result)
        token = await self._token.get()
        if not token:
            result.skipped_reason = "no RapidPro API token"
            return self._done(result)
        watermark, doc = await self._watermark()
        upto = self._clock() - self._min_age
        since = (watermark - self._overlap) if watermark is not None else upto - self._lookback
        result.after, result.before = rapidpro_time(since), rapidpro_time(upto)

        messages: dict[str, tuple[IncomingMessage, int]] = {}
        without_uuid = 0
        for folder in FOLDERS:
            cursor: str | None = None
            while True:
                page = await self._client.list_messages(
                    base_url, token, folder=folder, after=result.after, before=result.before,
                    cursor_url=cursor, priority=Priority.INCOMING)
                for item in page.results:
                    result.listed += 1
                    without_uuid += "uuid" not in item
                    message = message_from_api(item)
                    if message is None:
                        result.skipped += 1
                        continue
                    created = parse_time(item.get("created_on"))
                    reported_ms = int((created if created is not None else self._clock()) * 1000)
                    messages.setdefault(message.id, (message, reported_ms))
                if page.next is None:
                    break
                cursor = page.next

        if without_uuid:
            # Nothing to tell which of them the webhook stored: storing would duplicate them.
            result.skipped = result.listed
            result.skipped_reason = ("this RapidPro lists no message uuid (it is older than v10.3.79, "
                                     "Oct 2025): the webhook's ids cannot be matched, nothing is stored")
            return self._done(result)
        current = self._settings() or Settings()
        translations = self._translations()
        items = list(messages.values())
        for start in range(0, len(items), _CHUNK):
            chunk = items[start:start + _CHUNK]
            outcomes = await asyncio.gather(*(
                self._store.store(message, self._builder(message, current, reported_ms, translations))
                for message, reported_ms in chunk))
            for (message, _), outcome in zip(chunk, outcomes, strict=True):
                if outcome is Outcome.SAVED:
                    result.saved += 1
                    self.reconciled_total += 1
                    # The webhook missed this one (or the flow does not send @input.uuid).
                    log.info("incoming_reconciled", id=message.id)
                else:
                    result.repeats += 1
        await self._save_watermark(upto, doc)
        return self._done(result)

    @staticmethod
    def _builder(message: IncomingMessage, settings: Settings, reported_ms: int,
                 translations: Translations) -> Callable[[], dict[str, Any]]:
        return lambda: build_record(message, settings, reported_ms, translations=translations)

    def _done(self, result: RoundResult) -> RoundResult:
        self.last_round = result
        self.last_error = None
        if result.skipped_reason:
            log.warning("incoming_reconcile_skipped", reason=result.skipped_reason)
        else:
            log.info("incoming_reconcile_round", listed=result.listed, saved=result.saved,
                     repeats=result.repeats, skipped=result.skipped, after=result.after,
                     before=result.before)
        return result

    async def run(self, interval: float) -> None:
        """Rounds every `interval` seconds until cancelled; a failed round is logged and retried."""
        while True:
            try:
                await self.run_round()
            except (RapidProError, CouchError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("incoming_reconcile_failed", error=self.last_error)
            except Exception as exc:  # a bug or a message we did not foresee: log it, keep going
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("incoming_reconcile_crashed", error=self.last_error, exc_info=True)
            await asyncio.sleep(interval)

"""Status tracking: every message sent through RapidPro followed to a final state, cheaply.

The decisions are in transitions/status/rules.py; this package runs them: the schedule and what CHT
lists as tracked (book.py), a round's steps against RapidPro (runner.py), writing what was learnt
(recorder.py), and here the rounds themselves: when they run, what they start from, what they
report.

- **Which messages**: CHT's view `medic-sms/gateway_messages_by_state` (keys received-by-gateway,
  forwarded-by-gateway, sent) lists every message with a gateway_ref, whoever sent it. It is read
  whole only at start and on a rescan, page by page (loader.py), the rounds starting on the first
  pages while the rest loads. From then on the `medic` `_changes` feed says which messages became
  tracked, changed state or left (`note_change`, called by the feed for every change, the
  worker's own writes included; or, for a tracker run on its own, its own reads of `_changes`
  at each round). No round reads the view. The schedule itself lives in memory (book.py).
- **A round** runs on the STATUS_POLL_INTERVAL grid. It plans windows of due messages (per-broadcast
  queries or a bulk folder sync each, the cheaper one; the freshest window first), then runs them
  step by step. A step is popped only once its answer is processed, so after a 429, any RapidPro
  error, or a budget too short to ask now (sends keep a reserve of it), the next round continues
  with the same step — the same cursor page — instead of starting again.
- **Recording**: the round's updates are written in bulk: first onto the worker's own ledger
  entries (when the message is the worker's own, so a re-projection never moves the task back),
  then onto the CHT docs with `_bulk_docs`, each conflict re-read and re-applied. Updates not yet
  written survive a failed write and are retried before the next round asks RapidPro anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from config.settings import Settings
from transitions.cht.states import GATEWAY_TRACKED_STATES
from transitions.cht.timestamps import cht_time, parse_time
from transitions.outgoing.broadcasts import as_uuid, ledger_ref, log_fields
from transitions.outgoing.dispatch import SENT as LEDGER_SENT
from transitions.outgoing.dispatch import TaskUpdate, not_sending_reason
from transitions.outgoing.sendable import recipient_urn
from transitions.status.api import ServerApi
from transitions.status.delivery_reports import DeliveryReports, should_park, should_unpark
from transitions.status.feed import doc_messages
from transitions.status.plan import FolderStats, plan_round
from transitions.status.rules import (
    Applied,
    Candidate,
    Ending,
    Observation,
    Policy,
    Tracked,
    expired,
    is_forward,
    schedule,
    start_tracking,
)
from worker.couch.client import CouchError, Database
from worker.logs import get_logger
from worker.outgoing.ledger import Ledger
from worker.progress import Progress
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.errors import RapidProError, RateLimited
from worker.status.book import Book
from worker.status.loader import PAGE_SIZE, ViewLoader, load_pages
from worker.status.recorder import StatusRecorder
from worker.status.round import BudgetShort, Round, RoundResult, StatusStats
from worker.status.runner import RoundRunner

log = get_logger(__name__)

_FLUSH_AT = 200  # write as soon as this many updates wait
STALL_ROUNDS = 3  # intervals without a completed round that make a stall
LOAD_WAIT = 3.0  # seconds the first round waits for the load before planning what is in


CENSUS_EVERY = 5.0  # seconds /healthz may show the same count of the schedule
# A schedule this big is planned off the event loop and counted between rounds, not per
# /healthz request; passes over it free the loop every SLICE messages.
SMALL_BOOK = 20_000
SLICE = 5_000


@dataclass(frozen=True)
class Census:
    at: float
    rounds: int
    tiers: dict[str, dict[str, Any]]
    due: int
    parked_by_channel: dict[str, int]


class TokenSource(Protocol):
    async def get(self) -> str | None: ...


class StatusTracker:
    def __init__(
        self,
        *,
        medic: Database,
        own_db: Database | None,
        client: RapidProClient,
        token: TokenSource,
        settings: Callable[[], Settings | None],
        service_name: str = "rapidpro",
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
        max_wait: float | None = None,
        view_page_size: int = PAGE_SIZE,
        changes_from_feed: bool = False,
        cht_sender: Callable[[], str | None] = lambda: None,
    ) -> None:
        """`clock`: epoch seconds (the schedule compares it with CHT's and RapidPro's dates).
        `max_wait`: how long one status call may wait for the shared budget (sends go first).
        `changes_from_feed`: the worker's feed calls `note_change` with every change; otherwise
        the tracker reads `_changes` itself at the start of each round.
        `cht_sender`: why CHT's own sender may run (it then polls the statuses itself)."""
        self._medic = medic
        self._client = client
        self._token = token
        self._settings = settings
        self._service_name = service_name
        self._cht_sender = cht_sender
        self.policy = policy or Policy()
        self._clock = clock
        self._view_page_size = view_page_size
        self._book = Book()
        self._ledger = Ledger(own_db) if own_db is not None else None
        self._recorder = StatusRecorder(medic, self._ledger, clock)
        self._changes_from_feed = changes_from_feed
        self._since: Any = None  # where its own `_changes` reads go on from (not from the feed)
        self._loader: ViewLoader | None = None  # the view being read (start, rescan)
        self._loading: asyncio.Task[None] | None = None
        self._first_page = asyncio.Event()
        # What the feed said since the last round: messages to start following (their doc's
        # word), deleted docs; and, while a page is read, every message it spoke of (`_watch`).
        self._arrivals: dict[str, Candidate] = {}
        self._deleted_docs: set[str] = set()
        self._watching: list[set[str]] = []
        self._census_cache: Census | None = None
        self._unwritten: dict[str, tuple[str, TaskUpdate]] = {}  # uuid → (doc_id, update)
        self._folder_stats = FolderStats()
        self._api = ServerApi()  # what this RapidPro reads, learnt from its answers
        self._reports = DeliveryReports()  # its channels that never report delivery
        self._round: Round | None = None
        self._loaded = False
        self._rescan = False
        self._url: str | None = None
        self._wake = asyncio.Event()
        self._short_since: float | None = None  # the budget has been short since
        self.stats = StatusStats()
        # A few intervals without a completed round is a stall (/healthz, metrics, `check`).
        self.progress = Progress(stall_after=STALL_ROUNDS * self.policy.interval)
        # Called with how long after RapidPro's change a new state was learned (metrics).
        self.on_state_learned: Callable[[float], None] | None = None
        self._runner = RoundRunner(book=self._book, client=client, policy=self.policy, stats=self.stats,
                                   folder_stats=self._folder_stats, apply=self._apply,
                                   after_step=self._flush_if_due, max_wait=max_wait, api=self._api,
                                   reports=self._reports, clock=clock)

    # ------------------------------------------------------------------ public

    def trigger_rescan(self) -> None:
        """Ask about every non-final message at once (service switched to the worker, or
        `sms.rapidpro.url` changed), as CHT does."""
        self._rescan = True
        self._wake.set()

    def health(self) -> dict[str, Any]:
        census = self._census()
        return {**asdict(self.stats), "loading": self._loading is not None, "due": census.due,
                "unwritten": len(self._unwritten),
                "remembered": {"past_horizon": len(self._book.expired),
                               "unknown_to_rapidpro": len(self._book.missing)},
                "freshness": self.freshness(), "progress": self.progress.health(self._clock()),
                "channels_without_delivery_reports": self._reports.health(census.parked_by_channel),
                "rapidpro_api": self._api.health()}

    def _census(self) -> Census:
        """The schedule counted (tiers, due, parked): a pass over every followed message, so
        done at most every CENSUS_EVERY seconds or once per round, not per /healthz request."""
        now = self._clock()
        cached = self._census_cache
        stale = cached is None or cached.rounds != self.stats.rounds \
            or not 0 <= now - cached.at < CENSUS_EVERY
        if cached is None or (stale and len(self._book) <= SMALL_BOOK):
            cached = Census(now, self.stats.rounds, self._book.tiers(now, self.policy),
                            self._book.due_count(now), self._book.parked_by_channel())
            self._census_cache = cached
        return cached

    async def _count(self) -> None:
        """The census of a big schedule, between rounds, with the loop free between slices."""
        if len(self._book) <= SMALL_BOOK:
            return
        now = self._clock()
        tiers: dict[str, dict[str, Any]] | None = None
        due, parked = 0, {}
        async for some in self._each():
            part = Book()
            for item in some:
                part.items[item.uuid] = item
            counted = part.tiers(now, self.policy)
            if tiers is None:
                tiers = counted
            else:
                for name, entry in counted.items():
                    total = tiers[name]
                    total["tracked"] += entry["tracked"]
                    total["late"] += entry["late"]
                    total["max_late_s"] = max(total["max_late_s"], entry["max_late_s"])
            due += part.due_count(now)
            for channel, count in part.parked_by_channel().items():
                parked[channel] = parked.get(channel, 0) + count
        if tiers is not None:
            self._census_cache = Census(now, self.stats.rounds, tiers, due, parked)

    def freshness(self) -> dict[str, Any]:
        """Per tier: messages followed, and those whose check is late by more than the tier's
        period (the budget could not pay for it). `degraded` says freshness is not kept."""
        tiers = self._census().tiers
        reason = None
        if self._short_since is not None:
            reason = "rapidpro_budget_short"
        elif any(entry["late"] for entry in tiers.values()):
            reason = "checks_late"
        return {"degraded": reason is not None, "reason": reason,
                "budget_short_since": cht_time(self._short_since) if self._short_since else None,
                "tiers": tiers}

    @property
    def loaded(self) -> bool:
        """The view has been read whole (start, rescan); the feed keeps the schedule current."""
        return self._loaded

    def due_count(self) -> int:
        return self._census().due

    def tracked(self) -> dict[str, Tracked]:
        """The schedule (read-only use: tests, benchmarks)."""
        return self._book.items

    async def run(self, interval: float) -> None:
        """A round on every point of the `interval` grid (sooner after a 429 pause ends, at once on
        a rescan), so checks scheduled a whole number of intervals ahead fall due in a round."""
        self.progress.started(self._clock())
        try:
            await self._run_rounds(interval)
        finally:
            self.progress.stopped()
            await self._stop_loading()

    async def _run_rounds(self, interval: float) -> None:
        while True:
            wait: float | None = None
            try:
                result = await self.run_round()
                if result.finished:  # a round with nothing to do, or not in charge, counts too
                    self.progress.completed(self._clock())
                if result.retry_in is not None:
                    wait = min(interval, max(result.retry_in, 0.1))
            except (CouchError, RapidProError) as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("status_round_failed", error=self.stats.last_error)
            except Exception as exc:  # a bug or a doc we did not foresee: log it, keep the daemon up
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("status_round_crashed", error=self.stats.last_error, exc_info=True)
            await self._count()
            if wait is None:
                wait = interval - (self._clock() % interval)
                if wait < 0.1 * interval:
                    wait += interval  # just missed a grid point: the next one
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()

    async def run_round(self) -> RoundResult:
        """One round. RapidPro errors (429 included) and a short budget end it early with
        `finished=False`; the next round continues from the step that failed. CouchDB errors
        are raised."""
        result = RoundResult()
        settings = self._settings()
        try:
            token = await self._token.get()
        except CouchError:
            token = None
        reason = not_sending_reason(settings, self._service_name, bool(token), self._cht_sender())
        if reason is not None:
            result.skipped_reason = reason
            return result
        assert settings is not None and settings.rapidpro_url is not None and token is not None
        base_url = settings.rapidpro_url
        if self._url is not None and self._url != base_url:
            log.info("status_rapidpro_host_changed", old=self._url, new=base_url)
            self._rescan = True  # the rebuild below forgets what was learnt of the old server
        self._url = base_url

        self.stats.rounds += 1
        self.stats.last_round_at = cht_time(self._clock())
        await self._flush()  # leftovers of a failed write first
        if self._rescan or (not self._loaded and self._loading is None):
            # Taken before anything is awaited: a rescan asked for meanwhile is not lost.
            rescan, self._rescan = self._rescan, False
            try:
                await self._start_load(rescan=rescan)
            except BaseException:
                self._rescan = self._rescan or rescan
                raise
        await self._load_status()
        await self._absorb()
        await self._flush()  # the ledger may know more than a task (its write failed)
        now = self._clock()
        await self._expire(now)
        await self._park(now)
        self._folder_stats.prune(now - self.policy.horizon - 86400)

        if self._round is None:
            items = list(self._book.items.values())
            if len(items) > SMALL_BOOK:  # a pass over them all: off the loop, /healthz answers meanwhile
                plan = await asyncio.to_thread(plan_round, items, now, self.policy, self._folder_stats,
                                               self._api)
            else:
                plan = plan_round(items, now, self.policy, self._folder_stats, self._api)
            result.plan = plan.kind
            if plan.kind == "idle":
                self._short_since = None
                self.stats.tracked = len(self._book)
                return result
            self._round = self._runner.build(plan, now)
        elif not self._book:
            self._round = None  # nothing left to learn from the rest of it
            self.stats.tracked = 0
            return result
        else:
            result.plan = "resumed"
            self._round.now = now
        calls_before = self.stats.calls
        written_before = self.stats.updates_written
        try:
            await self._runner.execute(self._round, base_url, token)
            self._round = None
            self._short_since = None
        except BudgetShort as exc:
            self.stats.budget_short += 1
            result.finished = False
            result.retry_in = exc.wait
            if self._short_since is None:
                self._short_since = now
                log.warning("status_budget_short", wait_s=round(exc.wait, 1),
                            steps_left=len(self._round.steps),
                            hint="status checks wait for the RapidPro budget (sends go first); "
                                 "freshness degrades until it recovers")
        except RateLimited as exc:
            self.stats.throttled += 1
            result.finished = False
            result.retry_in = exc.retry_after if exc.retry_after is not None else \
                self._client.budget.paused_for() or self.policy.interval
            log.warning("status_round_throttled", retry_in_s=round(result.retry_in, 1),
                        steps_left=len(self._round.steps))
        except RapidProError as exc:
            result.finished = False
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("status_round_interrupted", error=self.stats.last_error,
                        steps_left=len(self._round.steps))
        finally:
            await self._park(self._clock())  # what this round learnt of the channels, at once
            await self._flush()
            result.calls = self.stats.calls - calls_before
            result.updates = self.stats.updates_written - written_before
            self.stats.tracked = len(self._book)
        if result.finished:
            self.stats.last_error = None
        return result

    # ------------------------------------------------------------------ the schedule

    async def _each(self) -> AsyncIterator[list[Tracked]]:
        """Every followed message, in slices with the loop free between them (10⁵ and more)."""
        items = list(self._book.items.values())
        for start in range(0, len(items), SLICE):
            if start:
                await asyncio.sleep(0)
            yield items[start:start + SLICE]

    async def _expire(self, now: float) -> None:
        gone: list[Tracked] = []
        async for some in self._each():
            gone.extend(item for item in some if expired(item, now, self.policy))
        for item in gone:
            if self._book.items.get(item.uuid) is not item:
                continue
            self._book.drop(item.uuid)
            self._book.remember(self._book.expired, item.uuid)
            self.stats.expired += 1
            log.info("status_tracking_horizon", message_uuid=item.uuid, **log_fields(item.broadcast),
                     state=item.state, details=item.details, sent_at=cht_time(item.sent_at))

    async def _park(self, now: float) -> None:
        """Past the up-to-an-hour tier a message `sent` on a channel that never reports delivery
        is parked: only the hourly sync of the failed folder looks for it. Parked ones whose
        channel reports again go back to the hourly tier."""
        async for some in self._each():
            for item in some:
                if should_park(item, now, self.policy, self._reports):
                    item.parked = True
                    self.stats.parked += 1
                elif should_unpark(item, self._reports):
                    item.parked = False
                    schedule(item, now, self.policy)

    # ------------------------------------------------------------------ what is tracked

    async def _start_load(self, *, rescan: bool) -> None:
        """Read the view afresh (start, rescan): every message due at once. The load runs beside
        the rounds; this returns once its first page is in (or it ended)."""
        await self._stop_loading()
        if rescan:
            self.stats.rescans += 1
            self._book.missing.clear()
            self._folder_stats.forget()  # another host has other traffic
            self._api.forget()  # maybe another version
            self._reports.forget()  # and other channels
            self._round = None
        self._book.clear()
        self._book.expired.clear()  # judged again from what the view lists
        self._loaded = False
        if not self._changes_from_feed:
            # Changes from here on are read after the load: none is missed between the two.
            self._since = await self._medic.end_seq()
        self._loader = ViewLoader(self._medic, self._ledger, self._view_page_size, self.stats)
        self._first_page.clear()
        self._loading = asyncio.create_task(self._load(self._loader, rescan), name="status-load")
        await self._load_status(wait=True)

    async def _load(self, loader: ViewLoader, rescan: bool) -> None:
        started = self._clock()
        await load_pages(loader, self._take_page, self._watch, self._unwatch)
        self._loaded = True
        self._first_page.set()
        self.stats.tracked = len(self._book)
        log.info("status_tracking_loaded", tracked=len(self._book), rescan=rescan, view_rows=loader.rows,
                 view_pages=loader.pages, seconds=round(self._clock() - started, 2))
        self._wake.set()  # a round for what the first ones did not plan

    async def _take_page(self, found: list[Candidate], facts: dict[str, dict[str, Any]],
                         touched: set[str]) -> None:
        for start in range(0, len(found), 1000):
            if start:
                await asyncio.sleep(0)  # /healthz and the feed between slices
            fresh = {c.uuid: c for c in found[start:start + 1000]
                     if c.uuid not in touched and c.doc_id not in touched and c.uuid not in self._book.items}
            self._start_tracking(fresh, facts, at_start=True)
            self.stats.tracked = len(self._book)
            self._first_page.set()

    async def _load_status(self, *, wait: bool = False) -> None:
        """`wait`: until the load ends, or for LOAD_WAIT and at least its first page (the first
        round starts then; the rest is planned once loaded). A load that failed is logged and
        resumed from where it stopped."""
        task = self._loading
        if task is None:
            return
        if wait:
            await asyncio.wait({task}, timeout=LOAD_WAIT)
            waiter = asyncio.ensure_future(self._first_page.wait())
            try:
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        if not task.done():
            return
        self._loading = None
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._loader = None
            return
        self.stats.last_error = f"{type(error).__name__}: {error}"
        log.warning("status_load_failed", error=self.stats.last_error,
                    rows_read=self._loader.rows if self._loader else None)
        if self._loader is not None:  # resumed next round, from the page that failed
            self._loading = asyncio.create_task(self._load_later(self._loader), name="status-load")

    async def _load_later(self, loader: ViewLoader) -> None:
        await asyncio.sleep(min(self.policy.interval, 30.0))
        await self._load(loader, False)

    async def _stop_loading(self) -> None:
        task, self._loading = self._loading, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def _watch(self) -> set[str]:
        touched: set[str] = set()
        self._watching.append(touched)
        return touched

    def _unwatch(self, touched: set[str]) -> None:
        with contextlib.suppress(ValueError):
            self._watching.remove(touched)

    def note_change(self, doc_id: str, doc: dict[str, Any] | None, deleted: bool) -> None:
        """A change of the `medic` feed (any doc, the worker's own writes included): which of its
        messages became tracked, changed state or left. Cheap and synchronous; what needs the
        ledger waits for the next round (`_absorb`)."""
        if deleted or doc is None:
            if deleted:
                self._deleted_docs.add(doc_id)
                for touched in self._watching:
                    touched.add(doc_id)
            return
        try:
            uuids, found = doc_messages(doc)
        except Exception as exc:  # a doc shaped like nothing foreseen: never the feed's problem
            log.warning("status_change_unreadable", doc_id=doc_id, error=f"{type(exc).__name__}: {exc}")
            return
        if not uuids:
            return
        for touched in self._watching:
            touched.update(uuids)
        trackable = {candidate.uuid: candidate for candidate in found}
        for uuid in uuids:
            candidate = trackable.get(uuid)
            item = self._book.items.get(uuid)
            if candidate is None:  # left (final, pending again, cleared…) or never tracked
                if item is not None:
                    self._book.drop(uuid)
                self._arrivals.pop(uuid, None)
                self._book.forget(uuid)
                continue
            if item is not None:
                if item.state == candidate.state and item.broadcast == candidate.broadcast:
                    self._arrivals.pop(uuid, None)
                    continue
                self._book.drop(uuid)  # moved by another writer (or by us, being written): re-read
            self._arrivals[uuid] = candidate

    async def _read_changes(self) -> None:
        """A tracker on its own (no feed calls `note_change`): the changes since the last round."""
        if self._changes_from_feed or self._since is None:
            return
        while True:
            page = await self._medic.changes(self._since, limit=500, include_docs=True)
            for row in page.results:
                if isinstance(row, dict) and isinstance(row.get("id"), str):
                    doc = row.get("doc")
                    self.note_change(row["id"], doc if isinstance(doc, dict) else None,
                                     bool(row.get("deleted")))
            if page.last_seq is not None:
                self._since = page.last_seq
            if len(page.results) < 500:
                return

    async def _absorb(self) -> None:
        """What the feed said since the last round: new messages followed, deleted docs' dropped."""
        await self._read_changes()
        if self._deleted_docs:
            deleted, self._deleted_docs = self._deleted_docs, set()
            self._book.drop_docs(deleted)
            for uuid in [u for u, c in self._arrivals.items() if c.doc_id in deleted]:
                del self._arrivals[uuid]
        if not self._arrivals:
            return
        arrivals, self._arrivals = self._arrivals, {}
        new = {uuid: candidate for uuid, candidate in arrivals.items()
               if uuid not in self._book.items and uuid not in self._book.expired
               and uuid not in self._book.missing and uuid not in self._unwritten}
        if not new:
            return
        touched = self._watch()
        try:
            entries = await self._recorder.ledger_entries(list(new))
        except BaseException:
            self._arrivals = {**new, **self._arrivals}  # again next round
            raise
        finally:
            self._unwatch(touched)
        # What the feed said meanwhile is newer: it waits in `_arrivals` for the next round.
        self._start_tracking({u: c for u, c in new.items() if u not in touched and c.doc_id not in touched},
                             entries, at_start=False)
        self.stats.tracked = len(self._book)

    def _start_tracking(self, found: dict[str, Candidate], ledger: dict[str, dict[str, Any]], *,
                        at_start: bool) -> None:
        now = self._clock()
        settings = self._settings()
        for uuid, candidate in found.items():
            entry = ledger.get(uuid)
            own = entry is not None and entry.get("state") == LEDGER_SENT \
                and ledger_ref(entry) == candidate.broadcast
            if own and candidate.sent_at is None:
                assert entry is not None
                sent = parse_time(entry.get("outcome_at")) or parse_time(entry.get("claimed_at"))
                candidate = Candidate(**{**asdict(candidate), "sent_at": sent})
            if now - (candidate.sent_at if candidate.sent_at is not None else now) > self.policy.horizon:
                self._book.remember(self._book.expired, uuid)
                self.stats.expired += 1
                log.info("status_tracking_horizon", message_uuid=uuid, **log_fields(candidate.broadcast),
                         state=candidate.state, at="load")
                continue
            item = start_tracking(candidate, now, self.policy, at_start=at_start, own=own)
            if own and entry is not None:
                item.broadcast_uuid = as_uuid(entry.get("broadcast_uuid")) or item.broadcast_uuid
            # The recipient only recognises a message by its text (a server without ids).
            if item.text is not None:
                if own and entry is not None:
                    item.urn = entry.get("urn") if isinstance(entry.get("urn"), str) else None
                elif candidate.to and settings is not None:
                    item.urn = recipient_urn(candidate.to, settings.default_country_code,
                                             settings.phone_validation)
            if own and entry is not None:
                # The ledger can be ahead of the task (its write failed after the ledger's).
                state, details = entry.get("task_state"), entry.get("task_state_details")
                if isinstance(state, str) and is_forward(item.state, item.details, state, details):
                    self._unwritten[uuid] = (item.doc_id, TaskUpdate(uuid, state, details, item.broadcast))
                    if state not in GATEWAY_TRACKED_STATES:
                        continue
                    item.state, item.details = state, details
            self._book.add(item)

    def _apply(self, item: Tracked, observation: Observation) -> None:
        if observation.update is not None:
            self._unwritten[item.uuid] = (item.doc_id, observation.update)
            if self.on_state_learned is not None:
                self.on_state_learned(self._clock() - item.state_since)
        if observation.ended is Ending.FINAL:
            self._book.drop(item.uuid)
            self.stats.final += 1
        elif observation.ended is Ending.MISSING:
            self._book.drop(item.uuid)
            self._book.remember(self._book.missing, item.uuid)
            self.stats.missing_gave_up += 1
            log.warning("status_message_not_found", message_uuid=item.uuid, **log_fields(item.broadcast),
                        host=self._url, answers=item.missing,
                        hint="RapidPro does not know this broadcast (sent from another host?); "
                             "no longer asked about until the next rescan")

    # ------------------------------------------------------------------ recording

    async def _flush_if_due(self) -> None:
        if len(self._unwritten) >= _FLUSH_AT:
            await self._flush()

    async def _flush(self) -> None:
        """Write waiting updates: ledger first (the record re-projection trusts), then tasks."""
        if not self._unwritten:
            return
        pending = dict(self._unwritten)
        outcomes = await self._recorder.write(pending)
        for uuid, outcome in outcomes.items():
            if self._unwritten.get(uuid) == pending.get(uuid):
                del self._unwritten[uuid]
            if outcome is Applied.APPLIED:
                self.stats.updates_written += 1
            elif outcome in (Applied.NOT_TRACKED, Applied.STALE):
                # Someone else moved the task: forget our view of it; the feed says what it is now.
                self._book.drop(uuid)

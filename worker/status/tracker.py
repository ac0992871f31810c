"""Status tracking: every message sent through RapidPro followed to a final state, cheaply.

The decisions are in transitions/status.py; this runs them:

- **Which messages**: CHT's view `medic-sms/gateway_messages_by_state` (keys received-by-gateway,
  forwarded-by-gateway, sent) lists every message with a gateway_ref, whoever sent it. It is read
  at start and on a rescan (docs and ledger entries too), and its rows once per round to pick up
  new messages and drop those another writer moved on. The schedule itself lives in memory.
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
import copy
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from config.settings import Settings
from transitions.dispatch import SENT as LEDGER_SENT
from transitions.dispatch import TaskUpdate, not_sending_reason
from transitions.states import GATEWAY_TRACKED_STATES, RECEIVED_BY_GATEWAY
from transitions.status import (
    FAILED_FOLDER,
    OUTBOX,
    SENT_FOLDER,
    Applied,
    Candidate,
    Ending,
    FolderStats,
    Observation,
    Plan,
    Policy,
    Tier,
    Tracked,
    Window,
    apply_status_updates,
    broadcast_id,
    expired,
    is_forward,
    observe,
    observe_broadcast,
    observe_unchanged,
    period,
    plan_round,
    start_tracking,
    trackable_messages,
    visible_yet,
)
from transitions.timestamps import cht_time, parse_time, rapidpro_time
from worker.couch.client import CouchError, Database
from worker.logs import get_logger
from worker.outgoing.ledger import Ledger
from worker.progress import Progress
from worker.rapidpro.budget import Priority
from worker.rapidpro.client import RapidProClient, RapidProError, RateLimited

log = get_logger(__name__)

VIEW_DDOC, VIEW_NAME = "medic-sms", "gateway_messages_by_state"
MAX_CONFLICT_RETRIES = 5
_DOC_BATCH = 200  # docs per all_docs / _bulk_docs request
_FLUSH_AT = 200  # write as soon as this many updates wait
STALL_ROUNDS = 3  # intervals without a completed round that make a stall
# Messages remembered as past the horizon or unknown to RapidPro (so the view's rows for them are
# not re-read every round). Pruned to what the view still lists; this caps it beyond that.
_MAX_REMEMBERED = 100_000


class _BudgetShort(Exception):
    """The shared budget has nothing for status tracking now (sends keep a reserve): stop the
    round without waiting; the next one resumes it."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate budget short for {wait:.1f} s")
        self.wait = wait


class TokenSource(Protocol):
    async def get(self) -> str | None: ...


@dataclass
class StatusStats:
    """Counters for /healthz."""

    tracked: int = 0
    rounds: int = 0
    calls: int = 0  # RapidPro calls made by status tracking (429s included)
    syncs: int = 0
    sync_pages: int = 0
    broadcast_queries: int = 0
    broadcast_lookups: int = 0
    updates_written: int = 0
    final: int = 0  # messages followed to a final state
    expired: int = 0  # past the tracking horizon, left as they were
    missing_gave_up: int = 0  # RapidPro kept answering "no such message" (host changed?)
    unknown_statuses: int = 0
    throttled: int = 0
    budget_short: int = 0  # rounds cut short because the shared budget had nothing to spare
    rescans: int = 0
    last_round_at: str | None = None
    last_error: str | None = None


@dataclass
class RoundResult:
    plan: str = "idle"  # idle | sync | broadcasts | mixed | resumed
    calls: int = 0
    updates: int = 0
    finished: bool = True  # False: stopped early (429, error); the next round resumes it
    retry_in: float | None = None  # after a 429: when RapidPro takes calls again
    skipped_reason: str | None = None


@dataclass
class _Part:
    """One window of the plan, as a sync: what it has read and matched so far."""

    window: Window
    due: set[str]
    read: set[str] = field(default_factory=set)  # folders read completely


@dataclass
class _Step:
    kind: str  # "folder" | "decide" | "broadcast" | "lookup"
    part: int = -1
    folder: str | None = None
    cursor: str | None = None
    created: list[float] = field(default_factory=list)  # created_on of the rows read (to learn)
    broadcast: int | None = None


@dataclass
class _Round:
    plan: Plan
    steps: deque[_Step]
    parts: list[_Part]
    now: float  # when this (part of the) round started: checks are scheduled from it
    matched: set[str] = field(default_factory=set)
    asked: set[int] = field(default_factory=set)  # broadcasts queried one by one
    looked_up: set[int] = field(default_factory=set)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


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
        view_page_size: int = 5000,
    ) -> None:
        """`clock`: epoch seconds (the schedule compares it with CHT's and RapidPro's dates).
        `max_wait`: how long one status call may wait for the shared budget (sends go first)."""
        self._medic = medic
        self._ledger = Ledger(own_db) if own_db is not None else None
        self._client = client
        self._token = token
        self._settings = settings
        self._service_name = service_name
        self.policy = policy or Policy()
        self._clock = clock
        self._max_wait = max_wait
        self._view_page_size = view_page_size
        self._book: dict[str, Tracked] = {}
        self._by_broadcast: dict[int, set[str]] = {}
        self._expired: dict[str, None] = {}  # past the horizon: never asked again
        self._missing: dict[str, None] = {}  # gave up on this host; asked again after a rescan
        self._unwritten: dict[str, tuple[str, TaskUpdate]] = {}  # uuid → (doc_id, update)
        self._folder_stats = FolderStats()
        self._round: _Round | None = None
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

    # ------------------------------------------------------------------ public

    def trigger_rescan(self) -> None:
        """Ask about every non-final message at once (service switched to the worker, or
        `sms.rapidpro.url` changed), as CHT does."""
        self._rescan = True
        self._wake.set()

    def health(self) -> dict[str, Any]:
        return {**asdict(self.stats), "due": self.due_count(), "unwritten": len(self._unwritten),
                "remembered": {"past_horizon": len(self._expired), "unknown_to_rapidpro": len(self._missing)},
                "freshness": self.freshness(), "progress": self.progress.health(self._clock())}

    def freshness(self) -> dict[str, Any]:
        """Per tier: messages followed, and those whose check is late by more than the tier's
        period (the budget could not pay for it). `degraded` says freshness is not kept."""
        now = self._clock()
        tiers: dict[str, dict[str, Any]] = {t.value: {"tracked": 0, "late": 0, "max_late_s": 0.0}
                                            for t in Tier}
        for item in self._book.values():
            tier = item.tier(now, self.policy)
            entry = tiers[tier.value]
            entry["tracked"] += 1
            late = now - item.next_check
            if late > period(tier, self.policy) + self.policy.due_tolerance:
                entry["late"] += 1
                entry["max_late_s"] = max(entry["max_late_s"], round(late, 1))
        reason = None
        if self._short_since is not None:
            reason = "rapidpro_budget_short"
        elif any(entry["late"] for entry in tiers.values()):
            reason = "checks_late"
        return {"degraded": reason is not None, "reason": reason,
                "budget_short_since": cht_time(self._short_since) if self._short_since else None,
                "tiers": tiers}

    def due_count(self) -> int:
        now = self._clock()
        return sum(1 for item in self._book.values() if item.next_check <= now)

    def tracked(self) -> dict[str, Tracked]:
        """The schedule (read-only use: tests, benchmarks)."""
        return self._book

    async def run(self, interval: float) -> None:
        """A round on every point of the `interval` grid (sooner after a 429 pause ends, at once on
        a rescan), so checks scheduled a whole number of intervals ahead fall due in a round."""
        self.progress.started(self._clock())
        try:
            await self._run_rounds(interval)
        finally:
            self.progress.stopped()

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
        reason = not_sending_reason(settings, self._service_name, bool(token))
        if reason is not None:
            result.skipped_reason = reason
            return result
        assert settings is not None and settings.rapidpro_url is not None and token is not None
        base_url = settings.rapidpro_url
        if self._url is not None and self._url != base_url:
            log.info("status_rapidpro_host_changed", old=self._url, new=base_url)
            self._rescan = True
        self._url = base_url

        self.stats.rounds += 1
        self.stats.last_round_at = cht_time(self._clock())
        await self._flush()  # leftovers of a failed write first
        if self._rescan or not self._loaded:
            # Taken before the rebuild awaits anything: a rescan asked for meanwhile is not lost.
            rescan, self._rescan = self._rescan, False
            try:
                await self._rebuild(rescan=rescan)
            except BaseException:
                self._rescan = self._rescan or rescan
                raise
        else:
            await self._refresh()
        await self._flush()  # the ledger may know more than a task (its write failed)
        now = self._clock()
        self._expire(now)
        self._folder_stats.prune(now - self.policy.horizon - 86400)

        if self._round is None:
            plan = plan_round(self._book.values(), now, self.policy, self._folder_stats)
            result.plan = plan.kind
            if plan.kind == "idle":
                self._short_since = None
                self.stats.tracked = len(self._book)
                return result
            self._round = self._build_round(plan, now)
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
            await self._execute(self._round, base_url, token)
            self._round = None
            self._short_since = None
        except _BudgetShort as exc:
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
            await self._flush()
            result.calls = self.stats.calls - calls_before
            result.updates = self.stats.updates_written - written_before
            self.stats.tracked = len(self._book)
        if result.finished:
            self.stats.last_error = None
        return result

    # ------------------------------------------------------------------ the schedule

    def _add(self, item: Tracked) -> None:
        self._book[item.uuid] = item
        self._by_broadcast.setdefault(item.broadcast, set()).add(item.uuid)

    def _drop(self, uuid: str) -> Tracked | None:
        item = self._book.pop(uuid, None)
        if item is not None:
            uuids = self._by_broadcast.get(item.broadcast)
            if uuids is not None:
                uuids.discard(uuid)
                if not uuids:
                    del self._by_broadcast[item.broadcast]
        return item

    @staticmethod
    def _remember(memory: dict[str, None], uuid: str) -> None:
        memory[uuid] = None
        while len(memory) > _MAX_REMEMBERED:
            del memory[next(iter(memory))]  # the oldest; re-read (and re-judged) if the view has it

    def _expire(self, now: float) -> None:
        for item in [i for i in self._book.values() if expired(i, now, self.policy)]:
            self._drop(item.uuid)
            self._remember(self._expired, item.uuid)
            self.stats.expired += 1
            log.info("status_tracking_horizon", message_uuid=item.uuid, broadcast_id=item.broadcast,
                     state=item.state, details=item.details, sent_at=cht_time(item.sent_at))

    async def _tracked_rows(self) -> dict[str, tuple[str, str, Any]]:
        """uuid → (doc_id, state, gateway_ref) for every message the view shows as tracked."""
        rows: dict[str, tuple[str, str, Any]] = {}
        for state in sorted(GATEWAY_TRACKED_STATES):
            skip = 0
            while True:
                page = await self._medic.view(VIEW_DDOC, VIEW_NAME, key=state, limit=self._view_page_size,
                                              skip=skip)
                found = page.get("rows", [])
                for row in found:
                    value = row.get("value") or {}
                    uuid = value.get("id") if isinstance(value, dict) else None
                    if isinstance(uuid, str):
                        rows.setdefault(uuid, (row["id"], state, value.get("gateway_ref")))
                if len(found) < self._view_page_size:
                    break
                skip += len(found)
        # What the view no longer lists (moved on, cleared, deleted) need not be remembered.
        for memory in (self._expired, self._missing):
            for uuid in [u for u in memory if u not in rows]:
                del memory[uuid]
        return rows

    async def _rebuild(self, *, rescan: bool) -> None:
        """Read every tracked message afresh (start, rescan): each is due at once."""
        rows = await self._tracked_rows()
        if rescan:
            self.stats.rescans += 1
            self._missing.clear()
            self._folder_stats.forget()  # another host has other traffic
            self._round = None
        self._book.clear()
        self._by_broadcast.clear()
        wanted = {uuid: row for uuid, row in rows.items() if uuid not in self._expired}
        await self._start_tracking(wanted, at_start=True)
        self._loaded = True
        self.stats.tracked = len(self._book)
        log.info("status_tracking_loaded", tracked=len(self._book), rescan=rescan)

    async def _refresh(self) -> None:
        """Follow the view cheaply: add new messages, drop or re-read those someone moved."""
        rows = await self._tracked_rows()
        for uuid in list(self._book):
            row = rows.get(uuid)
            item = self._book[uuid]
            if row is None or row[1] != item.state or broadcast_id(row[2]) != item.broadcast:
                self._drop(uuid)  # moved by another writer (or by us, already written): re-read
        new = {uuid: row for uuid, row in rows.items()
               if uuid not in self._book and uuid not in self._expired and uuid not in self._missing
               and uuid not in self._unwritten}
        if new:
            await self._start_tracking(new, at_start=False)

    async def _start_tracking(self, rows: dict[str, tuple[str, str, Any]], *, at_start: bool) -> None:
        now = self._clock()
        doc_ids = sorted({row[0] for row in rows.values()})
        candidates: dict[str, Candidate] = {}
        for batch in _chunks(doc_ids, _DOC_BATCH):
            result = await self._medic.all_docs(keys=batch, include_docs=True)
            for row in result.get("rows", []):
                doc = row.get("doc")
                if isinstance(doc, dict):
                    for candidate in trackable_messages(doc):
                        if candidate.uuid in rows:
                            candidates[candidate.uuid] = candidate
        ledger = await self._ledger_entries(list(candidates))
        for uuid, candidate in candidates.items():
            entry = ledger.get(uuid)
            own = entry is not None and entry.get("state") == LEDGER_SENT \
                and broadcast_id(entry.get("broadcast_id")) == candidate.broadcast
            if own and candidate.sent_at is None:
                assert entry is not None
                sent = parse_time(entry.get("outcome_at")) or parse_time(entry.get("claimed_at"))
                candidate = Candidate(**{**asdict(candidate), "sent_at": sent})
            if now - (candidate.sent_at if candidate.sent_at is not None else now) > self.policy.horizon:
                self._remember(self._expired, uuid)
                self.stats.expired += 1
                log.info("status_tracking_horizon", message_uuid=uuid, broadcast_id=candidate.broadcast,
                         state=candidate.state, at="load")
                continue
            item = start_tracking(candidate, now, self.policy, at_start=at_start)
            if own and entry is not None:
                # The ledger can be ahead of the task (its write failed after the ledger's).
                state, details = entry.get("task_state"), entry.get("task_state_details")
                if isinstance(state, str) and is_forward(item.state, item.details, state, details):
                    self._unwritten[uuid] = (item.doc_id, TaskUpdate(uuid, state, details, item.broadcast))
                    if state not in GATEWAY_TRACKED_STATES:
                        continue
                    item.state, item.details = state, details
            self._add(item)

    # ------------------------------------------------------------------ a round

    def _build_round(self, plan: Plan, now: float) -> _Round:
        steps: deque[_Step] = deque()
        parts: list[_Part] = []
        for index, window in enumerate(plan.windows):
            parts.append(_Part(window, set(window.due)))
            if window.sync:
                # `sent` first (most messages are there); `outbox` and `failed` only if needed.
                steps.append(_Step("folder", part=index, folder=SENT_FOLDER))
                steps.append(_Step("decide", part=index))
                self.stats.syncs += 1
            else:
                steps.extend(_Step("broadcast", part=index, broadcast=b) for b in window.broadcasts)
        log.info("status_round", plan=plan.kind, due=len(plan.due), tracked=len(self._book),
                 windows=[{"tier": w.tier.value, "due": len(w.due), "sync": w.sync,
                           "expected_calls": w.expected_pages if w.sync else len(w.broadcasts)}
                          for w in plan.windows])
        return _Round(plan, steps, parts, now)

    def _check_budget(self) -> None:
        wait = self._client.budget.next_token_in(Priority.STATUS)
        if wait > 0 and (self._max_wait is None or wait > self._max_wait):
            raise _BudgetShort(wait)

    async def _execute(self, work: _Round, base_url: str, token: str) -> None:
        while work.steps:
            step = work.steps[0]
            if step.kind in ("folder", "broadcast", "lookup"):
                self._check_budget()
            if step.kind == "folder":
                assert step.folder is not None
                window = work.parts[step.part].window
                page = await self._call(self._client.list_messages(
                    base_url, token, folder=step.folder, after=rapidpro_time(window.after),
                    before=rapidpro_time(window.before) if window.before is not None else None,
                    cursor_url=step.cursor, priority=Priority.STATUS, max_wait=self._max_wait))
                self.stats.sync_pages += 1
                self._match(page.results, work)
                step.created.extend(when for result in page.results
                                    if (when := parse_time(result.get("created_on"))) is not None)
                if page.next is not None:
                    step.cursor = page.next
                    continue
                self._folder_stats.learn(step.folder, step.created, window.after,
                                         window.before if window.before is not None else self._clock())
                work.parts[step.part].read.add(step.folder)
            elif step.kind == "decide":
                self._decide(work, step.part)
            elif step.kind == "broadcast":
                assert step.broadcast is not None
                page = await self._call(self._client.list_messages(
                    base_url, token, broadcast=step.broadcast, priority=Priority.STATUS,
                    max_wait=self._max_wait))
                self.stats.broadcast_queries += 1
                if page.results:
                    self._match(page.results, work)
                else:
                    self._no_messages(step.broadcast, work)
            elif step.kind == "lookup":
                assert step.broadcast is not None
                broadcast = await self._call(self._client.get_broadcast(
                    base_url, token, step.broadcast, priority=Priority.STATUS, max_wait=self._max_wait))
                self.stats.broadcast_lookups += 1
                for uuid in list(self._by_broadcast.get(step.broadcast, ())):
                    self._apply(self._book[uuid], observe_broadcast(self._book[uuid], broadcast, work.now,
                                                                    self.policy))
            work.steps.popleft()
            if len(self._unwritten) >= _FLUSH_AT:
                await self._flush()

    async def _call(self, call: Awaitable[Any]) -> Any:
        self.stats.calls += 1
        return await call

    def _match(self, results: list[dict[str, Any]], work: _Round) -> None:
        """Results to tracked messages, by broadcast (the newest result of a broadcast wins).
        A sync refreshes every tracked message it lists, due or not."""
        seen: set[int] = set()
        for result in results:
            if result.get("direction", "out") != "out":
                continue
            broadcast = broadcast_id(result.get("broadcast"))
            if broadcast is None or broadcast in seen:
                continue
            seen.add(broadcast)
            for uuid in list(self._by_broadcast.get(broadcast, ())):
                item = self._book[uuid]
                work.matched.add(uuid)
                observation = observe(item, result, work.now, self.policy)
                if observation.unknown_status:
                    self.stats.unknown_statuses += 1
                    log.warning("status_unknown", message_uuid=uuid, broadcast_id=broadcast,
                                status=result.get("status"))
                self._apply(item, observation)

    def _decide(self, work: _Round, index: int) -> None:
        """After a folder of a window: read another one, or ask about the window's due messages
        not listed yet — not visible yet, gone back to the outbox unseen, failed, a broadcast that
        produced no message, or a message this host does not have. Another folder is read only
        for two or more of them; one is asked about on its own (as cheap, and exact)."""
        part = work.parts[index]
        now = work.now
        unmatched = [item for uuid in sorted(part.due - work.matched) if (item := self._book.get(uuid))]
        visible = [item for item in unmatched if visible_yet(item, now, self.policy)]
        queued = {item.broadcast for item in unmatched if item.state == RECEIVED_BY_GATEWAY}
        folder: str | None = None
        if OUTBOX not in part.read and len(queued) >= 2:
            folder = OUTBOX
        elif FAILED_FOLDER not in part.read and len({item.broadcast for item in visible}) >= 2:
            folder = FAILED_FOLDER  # one page for them all rather than one call each
        if folder is not None:
            work.steps.insert(1, _Step("decide", part=index))
            work.steps.insert(1, _Step("folder", part=index, folder=folder))
            return
        for item in unmatched:
            if item not in visible and (OUTBOX in part.read or item.state != RECEIVED_BY_GATEWAY):
                observe_unchanged(item, now, self.policy)  # not created yet: asked next interval
            elif item.broadcast not in work.asked:
                # Its own query tells (and gives its created_on, should RapidPro's clock differ
                # from ours); an empty answer leads to the broadcast itself.
                work.asked.add(item.broadcast)
                work.steps.insert(1, _Step("broadcast", part=index, broadcast=item.broadcast))

    def _no_messages(self, broadcast: int, work: _Round) -> None:
        now = work.now
        for uuid in list(self._by_broadcast.get(broadcast, ())):
            item = self._book[uuid]
            if not visible_yet(item, now, self.policy):
                observe_unchanged(item, now, self.policy)  # normal right after sending
            elif broadcast not in work.looked_up:
                work.looked_up.add(broadcast)
                work.steps.insert(1, _Step("lookup", broadcast=broadcast))

    def _apply(self, item: Tracked, observation: Observation) -> None:
        if observation.update is not None:
            self._unwritten[item.uuid] = (item.doc_id, observation.update)
            if self.on_state_learned is not None:
                self.on_state_learned(self._clock() - item.state_since)
        if observation.ended is Ending.FINAL:
            self._drop(item.uuid)
            self.stats.final += 1
        elif observation.ended is Ending.MISSING:
            self._drop(item.uuid)
            self._remember(self._missing, item.uuid)
            self.stats.missing_gave_up += 1
            log.warning("status_message_not_found", message_uuid=item.uuid, broadcast_id=item.broadcast,
                        host=self._url, answers=item.missing,
                        hint="RapidPro does not know this broadcast (sent from another host?); "
                             "no longer asked about until the next rescan")

    # ------------------------------------------------------------------ recording

    async def _flush(self) -> None:
        """Write waiting updates: ledger first (the record re-projection trusts), then tasks."""
        if not self._unwritten:
            return
        pending = dict(self._unwritten)
        await self._record_in_ledger(pending)
        outcomes = await self._write_tasks(pending)
        for uuid, outcome in outcomes.items():
            if self._unwritten.get(uuid) == pending.get(uuid):
                del self._unwritten[uuid]
            if outcome is Applied.APPLIED:
                self.stats.updates_written += 1
            elif outcome in (Applied.NOT_TRACKED, Applied.STALE):
                # Someone else moved the task: forget our view of it; the view says what it is now.
                self._drop(uuid)

    async def _ledger_entries(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        if self._ledger is None or not uuids:
            return {}
        return await self._ledger.get_many(uuids, _DOC_BATCH)

    async def _record_in_ledger(self, pending: dict[str, tuple[str, TaskUpdate]]) -> None:
        """Status tracking's latest state on the worker's own entries, so a re-projection by the
        dispatcher never moves a task backwards; in bulk."""
        todo = list(pending)
        for _ in range(MAX_CONFLICT_RETRIES):
            entries = await self._ledger_entries(todo)
            changed: list[dict[str, Any]] = []
            for uuid, entry in entries.items():
                update = pending[uuid][1]
                if entry.get("state") != LEDGER_SENT or \
                        broadcast_id(entry.get("broadcast_id")) != broadcast_id(update.gateway_ref):
                    continue
                current = entry.get("task_state")
                current_details = entry.get("task_state_details")
                if isinstance(current, str):
                    if not is_forward(current, current_details, update.state, update.details):
                        continue
                changed.append({**entry, "task_state": update.state, "task_state_details": update.details,
                                "task_state_at": cht_time(self._clock())})
            if not changed:
                return
            assert self._ledger is not None
            todo = await self._ledger.put_many(changed)
            if not todo:
                return
        log.warning("status_ledger_conflicts", uuids=todo)

    async def _write_tasks(self, pending: dict[str, tuple[str, TaskUpdate]]) -> dict[str, Applied]:
        by_doc: dict[str, list[TaskUpdate]] = {}
        for doc_id, update in pending.values():
            by_doc.setdefault(doc_id, []).append(update)
        outcomes: dict[str, Applied] = {}
        for batch in _chunks(sorted(by_doc), _DOC_BATCH):
            todo = batch
            for _ in range(MAX_CONFLICT_RETRIES):
                todo = await self._write_docs(todo, by_doc, outcomes)
                if not todo:
                    break
            else:
                log.warning("status_task_conflicts", doc_ids=todo)  # retried next round
        return outcomes

    async def _write_docs(self, doc_ids: list[str], by_doc: dict[str, list[TaskUpdate]],
                          outcomes: dict[str, Applied]) -> list[str]:
        """One read + one `_bulk_docs`; returns the doc ids that conflicted (to re-read)."""
        result = await self._medic.all_docs(keys=doc_ids, include_docs=True)
        now = datetime.fromtimestamp(self._clock(), UTC)
        changed: list[dict[str, Any]] = []
        planned: dict[str, dict[str, Applied]] = {}
        for row in result.get("rows", []):
            doc = row.get("doc")
            doc_id = row.get("key")
            if not isinstance(doc, dict):  # deleted or gone: nothing to record on
                for update in by_doc.get(doc_id, []):
                    outcomes[update.uuid] = Applied.NOT_TRACKED
                continue
            working = copy.deepcopy(doc)
            applied = apply_status_updates(working, by_doc[doc_id], now)
            if any(outcome is Applied.APPLIED for outcome in applied.values()):
                changed.append(working)
                planned[doc_id] = applied
            else:
                outcomes.update(applied)
        if not changed:
            return []
        conflicts: list[str] = []
        for item in await self._medic.bulk(changed):
            doc_id = item.get("id")
            if item.get("error") == "conflict":
                conflicts.append(doc_id)
            elif "error" in item:
                log.warning("status_task_write_failed", doc_id=doc_id, error=item.get("error"),
                            reason=item.get("reason"))
            else:
                outcomes.update(planned.get(doc_id, {}))
        return conflicts

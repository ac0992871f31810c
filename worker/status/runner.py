"""Running a planned status round against RapidPro, step by step.

A step (a folder page, a per-broadcast query, a broadcast lookup, or a decision after a folder)
is popped only once its answer is processed, so after a 429, any RapidPro error, or a budget too
short to ask now (sends keep a reserve of it), the next round continues with the same step — the
same cursor page — instead of starting again. What each answer says about a tracked message is
decided in transitions/status.py and handed to `apply`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from transitions.states import RECEIVED_BY_GATEWAY
from transitions.status import (
    FAILED_FOLDER,
    OUTBOX,
    SENT_FOLDER,
    Observation,
    Policy,
    Tracked,
    broadcast_id,
    observe,
    observe_broadcast,
    observe_unchanged,
    visible_yet,
)
from transitions.status_plan import FolderStats, Plan
from transitions.timestamps import parse_time, rapidpro_time
from worker.logs import get_logger
from worker.rapidpro.budget import Priority
from worker.rapidpro.client import RapidProClient
from worker.status.book import Book
from worker.status.round import BudgetShort, Part, Round, StatusStats, Step

log = get_logger(__name__)


class RoundRunner:
    def __init__(self, *, book: Book, client: RapidProClient, policy: Policy, stats: StatusStats,
                 folder_stats: FolderStats, apply: Callable[[Tracked, Observation], None],
                 after_step: Callable[[], Awaitable[None]], max_wait: float | None,
                 clock: Callable[[], float] = time.time) -> None:
        """`apply`: what an observation does to the schedule; `after_step`: runs after every step
        (the tracker writes what it learnt once enough is waiting)."""
        self._book = book
        self._client = client
        self.policy = policy
        self.stats = stats
        self._folder_stats = folder_stats
        self._apply = apply
        self._after_step = after_step
        self._max_wait = max_wait
        self._clock = clock

    def build(self, plan: Plan, now: float) -> Round:
        steps: deque[Step] = deque()
        parts: list[Part] = []
        for index, window in enumerate(plan.windows):
            parts.append(Part(window, set(window.due)))
            if window.sync:
                # `sent` first (most messages are there); `outbox` and `failed` only if needed.
                steps.append(Step("folder", part=index, folder=SENT_FOLDER))
                steps.append(Step("decide", part=index))
                self.stats.syncs += 1
            else:
                steps.extend(Step("broadcast", part=index, broadcast=b) for b in window.broadcasts)
        log.info("status_round", plan=plan.kind, due=len(plan.due), tracked=len(self._book),
                 windows=[{"tier": w.tier.value, "due": len(w.due), "sync": w.sync,
                           "expected_calls": w.expected_pages if w.sync else len(w.broadcasts)}
                          for w in plan.windows])
        return Round(plan, steps, parts, now)

    def _check_budget(self) -> None:
        wait = self._client.budget.next_token_in(Priority.STATUS)
        if wait > 0 and (self._max_wait is None or wait > self._max_wait):
            raise BudgetShort(wait)

    async def execute(self, work: Round, base_url: str, token: str) -> None:
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
                for uuid in list(self._book.by_broadcast.get(step.broadcast, ())):
                    item = self._book.items[uuid]
                    self._apply(item, observe_broadcast(item, broadcast, work.now, self.policy))
            work.steps.popleft()
            await self._after_step()

    async def _call(self, call: Awaitable[Any]) -> Any:
        self.stats.calls += 1
        return await call

    def _match(self, results: list[dict[str, Any]], work: Round) -> None:
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
            for uuid in list(self._book.by_broadcast.get(broadcast, ())):
                item = self._book.items[uuid]
                work.matched.add(uuid)
                observation = observe(item, result, work.now, self.policy)
                if observation.unknown_status:
                    self.stats.unknown_statuses += 1
                    log.warning("status_unknown", message_uuid=uuid, broadcast_id=broadcast,
                                status=result.get("status"))
                self._apply(item, observation)

    def _decide(self, work: Round, index: int) -> None:
        """After a folder of a window: read another one, or ask about the window's due messages
        not listed yet — not visible yet, gone back to the outbox unseen, failed, a broadcast that
        produced no message, or a message this host does not have. Another folder is read only
        for two or more of them; one is asked about on its own (as cheap, and exact)."""
        part = work.parts[index]
        now = work.now
        unmatched = [item for uuid in sorted(part.due - work.matched) if (item := self._book.items.get(uuid))]
        visible = [item for item in unmatched if visible_yet(item, now, self.policy)]
        queued = {item.broadcast for item in unmatched if item.state == RECEIVED_BY_GATEWAY}
        folder: str | None = None
        if OUTBOX not in part.read and len(queued) >= 2:
            folder = OUTBOX
        elif FAILED_FOLDER not in part.read and len({item.broadcast for item in visible}) >= 2:
            folder = FAILED_FOLDER  # one page for them all rather than one call each
        if folder is not None:
            work.steps.insert(1, Step("decide", part=index))
            work.steps.insert(1, Step("folder", part=index, folder=folder))
            return
        for item in unmatched:
            if item not in visible and (OUTBOX in part.read or item.state != RECEIVED_BY_GATEWAY):
                observe_unchanged(item, now, self.policy)  # not created yet: asked next interval
            elif item.broadcast not in work.asked:
                # Its own query tells (and gives its created_on, should RapidPro's clock differ
                # from ours); an empty answer leads to the broadcast itself.
                work.asked.add(item.broadcast)
                work.steps.insert(1, Step("broadcast", part=index, broadcast=item.broadcast))

    def _no_messages(self, broadcast: int, work: Round) -> None:
        now = work.now
        for uuid in list(self._book.by_broadcast.get(broadcast, ())):
            item = self._book.items[uuid]
            if not visible_yet(item, now, self.policy):
                observe_unchanged(item, now, self.policy)  # normal right after sending
            elif broadcast not in work.looked_up:
                work.looked_up.add(broadcast)
                work.steps.insert(1, Step("lookup", broadcast=broadcast))

"""Running a planned status round against RapidPro, step by step.

A step (a folder page, a per-broadcast query, a broadcast lookup, or a decision after a folder)
is popped only once its answer is processed, so after a 429, any RapidPro error, or a budget too
short to ask now (sends keep a reserve of it), the next round continues with the same step — the
same cursor page — instead of starting again. What each answer says about a tracked message is
decided in transitions/status/rules.py and handed to `apply`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from transitions.cht.states import RECEIVED_BY_GATEWAY
from transitions.cht.timestamps import parse_time, rapidpro_time
from transitions.outgoing.broadcasts import log_fields
from transitions.status.api import ServerApi, broadcast_ask, filter_honoured, message_ask
from transitions.status.delivery_reports import DeliveryReports
from transitions.status.plan import FolderStats, Plan
from transitions.status.rules import (
    FAILED_FOLDER,
    OUTBOX,
    SENT_FOLDER,
    Observation,
    Policy,
    Tracked,
    observe,
    observe_broadcast,
    observe_unchanged,
    visible_yet,
)
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
                 api: ServerApi, reports: DeliveryReports, clock: Callable[[], float] = time.time) -> None:
        """`apply`: what an observation does to the schedule; `after_step`: runs after every step
        (the tracker writes what it learnt once enough is waiting). `api` and `reports` are what
        the answers teach about the server and its channels."""
        self._book = book
        self._client = client
        self.policy = policy
        self.stats = stats
        self._folder_stats = folder_stats
        self._apply = apply
        self._after_step = after_step
        self._max_wait = max_wait
        self._api = api
        self._reports = reports
        self._clock = clock

    def build(self, plan: Plan, now: float) -> Round:
        steps: deque[Step] = deque()
        parts: list[Part] = []
        for index, window in enumerate(plan.windows):
            parts.append(Part(window, set(window.due)))
            if window.parked:
                # Only a failure can still come for these: the failed folder alone.
                steps.append(Step("folder", part=index, folder=FAILED_FOLDER))
                steps.append(Step("settle", part=index))
                self.stats.syncs += 1
            elif window.sync:
                # `sent` first (most messages are there); `outbox` and `failed` only if needed.
                steps.append(Step("folder", part=index, folder=SENT_FOLDER))
                steps.append(Step("decide", part=index))
                self.stats.syncs += 1
            else:
                steps.extend(Step("ask", part=index, ask=ask) for ask in window.asks)
        log.info("status_round", plan=plan.kind, due=len(plan.due), tracked=len(self._book),
                 windows=[{"tier": w.tier.value, "due": len(w.due), "sync": w.sync,
                           "expected_calls": w.expected_calls, **({"parked": True} if w.parked else {})}
                          for w in plan.windows])
        return Round(plan, steps, parts, now)

    def _check_budget(self) -> None:
        wait = self._client.budget.next_token_in(Priority.STATUS)
        if wait > 0 and (self._max_wait is None or wait > self._max_wait):
            raise BudgetShort(wait)

    async def execute(self, work: Round, base_url: str, token: str) -> None:
        while work.steps:
            step = work.steps[0]
            if step.kind in ("folder", "ask", "around", "lookup"):
                self._check_budget()
            if step.kind == "folder":
                if not await self._folder_page(work, step, base_url, token):
                    continue  # the next page of the same folder
            elif step.kind == "around":
                if not await self._around_page(work, step, base_url, token):
                    continue
            elif step.kind == "decide":
                self._decide(work, step.part)
            elif step.kind == "settle":
                for item in self._unmatched(work, step.part):
                    observe_unchanged(item, work.now, self.policy)  # no failure: asked again in an hour
            elif step.kind == "ask":
                await self._ask(work, step, base_url, token)
            elif step.kind == "lookup":
                await self._lookup(work, step, base_url, token)
            work.steps.popleft()
            await self._after_step()

    async def _call(self, call: Awaitable[Any]) -> Any:
        self.stats.calls += 1
        return await call

    async def _folder_page(self, work: Round, step: Step, base_url: str, token: str) -> bool:
        """One page of a folder sync; True once the folder is read to its end."""
        assert step.folder is not None
        window = work.parts[step.part].window
        page = await self._call(self._client.list_messages(
            base_url, token, folder=step.folder, after=rapidpro_time(window.after),
            before=rapidpro_time(window.before) if window.before is not None else None,
            cursor_url=step.cursor, priority=Priority.STATUS, max_wait=self._max_wait))
        self.stats.sync_pages += 1
        self._saw(page.results, work)
        step.created.extend(when for result in page.results
                            if (when := parse_time(result.get("created_on"))) is not None)
        if page.next is not None:
            step.cursor = page.next
            return False
        self._folder_stats.learn(step.folder, step.created, window.after,
                                 window.before if window.before is not None else self._clock())
        work.parts[step.part].read.add(step.folder)
        return True

    async def _around_page(self, work: Round, step: Step, base_url: str, token: str) -> bool:
        """One page of `messages.json` without a folder around one message's created_on: on a
        server whose rows name no broadcast, what finds a message in no folder read (a status
        this worker does not know); True once read to its end."""
        assert step.after is not None and step.before is not None
        page = await self._call(self._client.list_messages(
            base_url, token, after=rapidpro_time(step.after), before=rapidpro_time(step.before),
            cursor_url=step.cursor, priority=Priority.STATUS, max_wait=self._max_wait))
        self.stats.sync_pages += 1
        self._saw(page.results, work)
        if page.next is not None:
            step.cursor = page.next
            return False
        self._no_messages([item for item in self._about(step) if item.uuid not in work.matched], work)
        return True

    async def _ask(self, work: Round, step: Step, base_url: str, token: str) -> None:
        """`messages.json?uuid=` or `?broadcast=`: the rows of one message. An answer that is not
        about what was asked shows the server does not read that filter."""
        ask = step.ask
        assert ask is not None
        page = await self._call(self._client.list_messages(
            base_url, token, priority=Priority.STATUS, max_wait=self._max_wait, **{ask.param: ask.value}))
        self.stats.broadcast_queries += 1
        honoured = filter_honoured(ask.param, ask.value, page.results)
        self._learn(ask.lookup, honoured)
        self._saw(page.results, work)
        items = [item for item in self._about(step) if item.uuid not in work.matched]
        if honoured is False:
            for item in items:  # another way to ask, or a sync in a later round
                other = message_ask(item, self._api)
                if other is not None and other not in work.asked:
                    work.asked.add(other)
                    work.steps.insert(1, Step("ask", part=step.part, ask=other, uuids=(item.uuid,)))
                else:
                    observe_unchanged(item, work.now, self.policy)
        elif not page.results:
            self._no_messages(items, work)

    async def _lookup(self, work: Round, step: Step, base_url: str, token: str) -> None:
        """`broadcasts.json?uuid=` or `?id=` for messages RapidPro does not list: a failed or
        interrupted broadcast produced none; no such broadcast (another host?) counts towards
        giving up."""
        ask = step.ask
        assert ask is not None
        page = await self._call(self._client.list_broadcasts(
            base_url, token, priority=Priority.STATUS, max_wait=self._max_wait,
            **({"uuid": ask.value} if ask.param == "uuid" else {"broadcast_id": ask.value})))
        self.stats.broadcast_lookups += 1
        honoured = filter_honoured(ask.param, ask.value, page.results)
        self._learn(ask.broadcast_lookup, honoured)
        for item in self._about(step):
            if honoured is False:
                other = broadcast_ask(item, self._api)
                if other is not None and other not in work.looked_up:
                    work.looked_up.add(other)
                    work.steps.insert(1, Step("lookup", ask=other, uuids=(item.uuid,)))
                else:
                    observe_unchanged(item, work.now, self.policy)  # this server cannot tell
                continue
            found = page.results[0] if honoured else None
            self._apply(item, observe_broadcast(item, found, work.now, self.policy))

    def _about(self, step: Step) -> list[Tracked]:
        """The tracked messages an ask or a lookup is about."""
        if step.uuids:
            uuids: Iterable[str] = step.uuids
        elif step.ask is not None and step.ask.param == "uuid":
            uuids = [u] if (u := self._book.by_message.get(str(step.ask.value))) else []
        elif step.ask is not None:
            uuids = list(self._book.of_broadcast(step.ask.value))
        else:
            uuids = []
        return [item for uuid in uuids if (item := self._book.items.get(uuid)) is not None]

    def _learn(self, lookup: str, honoured: bool | None) -> None:
        if self._api.learn(lookup, honoured):
            log.info("rapidpro_lookup_learnt", lookup=lookup, supported=honoured,
                     hint=None if honoured else "this RapidPro does not read the filter (an older or "
                                                "newer version): other lookups are used")

    def _saw(self, results: list[dict[str, Any]], work: Round) -> None:
        """Rows to tracked messages (transitions/status/api.py); a sync refreshes every tracked
        message it lists, due or not. Every row also tells about its channel's delivery reports."""
        self._api.saw_messages(results)
        for channel in self._reports.observe(results, self._clock()):
            known = self._reports.channels.get(channel)
            reporting = not self._reports.without_reports(channel)
            log.info("status_channel_delivery_reports", channel_uuid=channel,
                     channel_name=known.name if known else None, reports_delivery=reporting)
        for item, result in self._book.match(results, self.policy):
            work.matched.add(item.uuid)
            message_uuid = item.message_uuid
            observation = observe(item, result, work.now, self.policy)
            self._book.seen(item, message_uuid)
            if observation.unknown_status:
                self.stats.unknown_statuses += 1
                log.warning("status_unknown", message_uuid=item.uuid, **log_fields(item.broadcast),
                            status=result.get("status"))
            self._apply(item, observation)

    def _unmatched(self, work: Round, index: int) -> list[Tracked]:
        part = work.parts[index]
        return [item for uuid in sorted(part.due - work.matched) if (item := self._book.items.get(uuid))]

    def _decide(self, work: Round, index: int) -> None:
        """After a folder of a window: read another one, or ask about the window's due messages
        not listed yet — not visible yet, gone back to the outbox unseen, failed, a broadcast that
        produced no message, or a message this host does not have. Another folder is read for
        two or more of them, or for one that nothing but a sync can find (a server without
        ids, before its message was first seen); one is asked about on its own (as cheap, and
        exact)."""
        part = work.parts[index]
        now = work.now
        unmatched = self._unmatched(work, index)
        visible = [item for item in unmatched if visible_yet(item, now, self.policy)]
        asks = {item.uuid: message_ask(item, self._api) for item in unmatched}
        queued = [item for item in unmatched if item.state == RECEIVED_BY_GATEWAY]

        def worth_a_folder(items: list[Tracked]) -> bool:
            # Two calls or more asked one by one, or one message only a sync can find.
            return (len({asks[i.uuid] or i.uuid for i in items}) >= 2
                    or any(asks[i.uuid] is None for i in items))

        folder: str | None = None
        if OUTBOX not in part.read and worth_a_folder(queued):
            folder = OUTBOX
        elif FAILED_FOLDER not in part.read and worth_a_folder(visible):
            folder = FAILED_FOLDER  # one page for them all rather than one call each
        if folder is not None:
            work.steps.insert(1, Step("decide", part=index))
            work.steps.insert(1, Step("folder", part=index, folder=folder))
            return
        for item in unmatched:
            ask = asks[item.uuid]
            if item not in visible and (OUTBOX in part.read or item.state != RECEIVED_BY_GATEWAY):
                observe_unchanged(item, now, self.policy)  # not created yet: asked next interval
            elif ask is None:
                # In none of the folders: every status, close to where it should be.
                work.steps.insert(1, Step("around", part=index, uuids=(item.uuid,),
                                          after=item.created_estimate(self.policy),
                                          before=item.created_upper(self.policy)))
            elif ask not in work.asked:
                # Its own query tells (and gives its created_on, should RapidPro's clock differ
                # from ours); an empty answer leads to the broadcast itself.
                work.asked.add(ask)
                work.steps.insert(1, Step("ask", part=index, ask=ask, uuids=(item.uuid,)))

    def _no_messages(self, items: list[Tracked], work: Round) -> None:
        now = work.now
        for item in items:
            ask = broadcast_ask(item, self._api)
            if not visible_yet(item, now, self.policy) or ask is None:
                observe_unchanged(item, now, self.policy)  # normal right after sending
            elif ask not in work.looked_up:
                work.looked_up.add(ask)
                work.steps.insert(1, Step("lookup", ask=ask, uuids=(item.uuid,)))

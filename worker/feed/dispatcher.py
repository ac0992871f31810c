"""Runs changes through the transitions: several docs at once, one change at a time per doc.

- Backpressure: at most `max_pending` changes are between the feed and the checkpoint (in flight,
  waiting for their doc, retrying, or done but held behind an earlier one); `submit` waits for room,
  so memory stays flat however long the backlog is.
- Per doc: changes of a doc that is being processed wait; when it is free, only the newest waiting
  revision is processed (it contains the older ones) and all of them complete together.
- Failures: retried with backoff. A transient failure (CouchDB unreachable) is retried for as long
  as it takes; any other failure counts, and after `max_attempts` the change is parked in the
  worker's db with its error, so the checkpoint may pass it — never silently skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from worker.backoff import Backoff
from worker.couch.client import TransientError
from worker.feed.changes import Change, skip_reason
from worker.feed.checkpoint import Watermark
from worker.logs import get_logger

log = get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)  # the level our structlog events are filtered by

Process = Callable[[Change], Awaitable[None]]
Park = Callable[[Change, BaseException, int], Awaitable[None]]


@dataclass
class DispatchStats:
    processed: int = 0
    skipped: int = 0
    failures: int = 0
    parked: int = 0
    last_progress: float | None = None  # time.time() of the last completed change


class Dispatcher:
    def __init__(
        self,
        process: Process,
        park: Park,
        watermark: Watermark,
        *,
        concurrency: int = 8,
        max_pending: int = 2000,
        max_attempts: int = 5,
        retry_base: float = 0.5,
        retry_cap: float = 60.0,
        own_writes: Any = (),
        on_progress: Callable[[int], None] | None = None,
        wanted: Callable[[Change], bool] | None = None,
    ) -> None:
        self._process = process
        self._park = park
        self.watermark = watermark
        self._slots = asyncio.Semaphore(concurrency)
        self._room = asyncio.Semaphore(max_pending)
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._own_writes = own_writes
        self._on_progress = on_progress
        self._wanted = wanted
        self._waiting: dict[str, deque[tuple[int, Change]]] = {}  # doc_id → changes; key = doc busy
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = DispatchStats()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def submit(self, change: Change) -> None:
        """Hand over a change in feed order; waits while `max_pending` are outstanding."""
        await self._room.acquire()
        token = self.watermark.add(change.seq)
        reason = skip_reason(change, self._own_writes)
        if reason is not None:
            log.debug("change_skipped", doc_id=change.doc_id, seq=change.seq, reason=reason)
            self.stats.skipped += 1
            self._complete(token)
            return
        if self._wanted is not None and change.seq is not None and change.doc_id not in self._waiting \
                and not self._wanted(change):
            # Most of a CHT feed (contacts, most reports) interests no transition: it is done once
            # that is known, here, in feed order, without a task or a slot. (A busy doc's change
            # queues as ever: it supersedes the older revision waiting there.)
            if _stdlib_log.isEnabledFor(logging.DEBUG):  # the call alone costs more than this whole path
                log.debug("change_processed", doc_id=change.doc_id, seq=change.seq, transitions=0)
            self.stats.processed += 1
            self.stats.last_progress = time.time()
            self._complete(token)
            return
        queue = self._waiting.get(change.doc_id)
        if queue is not None:  # the doc is busy: its runner will pick this up
            queue.append((token, change))
            return
        self._waiting[change.doc_id] = deque([(token, change)])
        task = asyncio.create_task(self._run_doc(change.doc_id), name=f"doc:{change.doc_id}")
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)

    async def mark(self, seq: Any) -> None:
        """A seq with nothing to process (a page's `last_seq`), so the checkpoint can reach it."""
        await self._room.acquire()
        self._complete(self.watermark.add(seq))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("doc_runner_crashed", error=repr(task.exception()))

    def _complete(self, token: int) -> None:
        passed = self.watermark.complete(token)
        for _ in range(passed):
            self._room.release()
        if passed and self._on_progress is not None:
            self._on_progress(passed)

    async def _run_doc(self, doc_id: str) -> None:
        queue = self._waiting[doc_id]
        try:
            while queue:
                batch = list(queue)
                queue.clear()
                change = batch[-1][1]  # the newest revision supersedes the older ones
                with structlog.contextvars.bound_contextvars(doc_id=doc_id, seq=change.seq):
                    await self._process_until_done(change)
                for token, _ in batch:
                    self._complete(token)
                self.stats.processed += 1
                self.stats.last_progress = time.time()
        finally:
            # Cancelled (shutdown): the tokens stay incomplete, so the checkpoint stays before
            # them and the change is processed again after a restart.
            del self._waiting[doc_id]

    async def _process_until_done(self, change: Change) -> None:
        backoff = Backoff(base=self._retry_base, cap=self._retry_cap)
        attempts = 0
        while True:
            started = time.perf_counter()
            try:
                async with self._slots:
                    await self._process(change)
                log.debug("change_processed", duration_ms=round((time.perf_counter() - started) * 1000, 1))
                return
            except asyncio.CancelledError:
                raise
            except TransientError as exc:
                if exc.resume is not None:
                    # Everyone waiting on the same cause goes again as soon as it clears; an own
                    # backoff, grown through a long outage, would hold this doc back long after.
                    log.debug("change_waiting", error=str(exc))
                    await exc.resume()
                    continue
                delay = backoff.next_delay(exc.retry_after)
                log.warning("change_retry", error=str(exc), transient=True, retry_in_s=round(delay, 2))
            except Exception as exc:
                attempts += 1
                self.stats.failures += 1
                if attempts >= self._max_attempts:
                    await self._park_until_done(change, exc, attempts)
                    return
                delay = backoff.next_delay()
                log.warning("change_retry", error=f"{type(exc).__name__}: {exc}", attempt=attempts,
                            retry_in_s=round(delay, 2), exc_info=attempts == 1)
            await asyncio.sleep(delay)

    async def _park_until_done(self, change: Change, exc: BaseException, attempts: int) -> None:
        backoff = Backoff(base=self._retry_base, cap=self._retry_cap)
        while True:
            try:
                await self._park(change, exc, attempts)
                self.stats.parked += 1
                log.error("change_parked", error=f"{type(exc).__name__}: {exc}", attempts=attempts)
                return
            except asyncio.CancelledError:
                raise
            except Exception as park_exc:
                log.warning("change_park_failed", error=str(park_exc))
                await asyncio.sleep(backoff.next_delay())

    async def drain(self, timeout: float) -> bool:
        """Wait for the work in flight; True when it all finished within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def abandon(self) -> int:
        """Cancel what is still running; it will be processed again after a restart."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

"""The lease holder's work, one session per lease generation: the feed and its checkpoint, the
dispatcher handing changes to the transitions (sending among them), the pending sweep, status
tracking, in-doubt resolution, incoming reconciliation and the channel watcher, in one TaskGroup.

A session ends in one of two ways: shutdown (`stop` is set: in-flight work gets
SHUTDOWN_TIMEOUT, then the checkpoint is written) or the lease lost (the task is cancelled: it
stops at once, and the next holder resumes from the last checkpoint). `SessionSupervisor`
starts a session when the lease is won and ends it when it is lost or at shutdown; the Worker
(worker/app.py) only wires it to the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from config.env import Config
from transitions.base import Transition
from worker.cht.settings import SettingsStore
from worker.cht.translations import TranslationsStore
from worker.couch.client import CouchError, Database
from worker.feed.changes import Change
from worker.feed.checkpoint import CheckpointFenced, CheckpointStore, Watermark
from worker.feed.dispatcher import Dispatcher
from worker.feed.follower import ChangesFollower
from worker.feed.own_writes import OwnWrites
from worker.feed.parking import ParkedChanges, ParkedRetries
from worker.incoming.reconcile import IncomingReconciler
from worker.lease.keeper import LeaseKeeper
from worker.logs import get_logger
from worker.outgoing.in_doubt import InDoubtResolver
from worker.outgoing.ledger import Ledger
from worker.outgoing.sender import OutgoingSender
from worker.outgoing.sweep import PendingSweep
from worker.outgoing.task_writer import TaskWriter
from worker.rapidpro.channels import ChannelWatcher
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.credentials import Credential
from worker.status.tracker import StatusTracker

log = get_logger(__name__)
T = TypeVar("T")

# The final checkpoint write gets at least this long after the in-flight work is done.
FINAL_CHECKPOINT_MIN_S = 1.0


@dataclass
class SessionParts:
    """What every session uses, built once by the Worker."""

    config: Config
    medic: Database
    settings: SettingsStore
    translations: TranslationsStore
    checkpoints: CheckpointStore
    parked: ParkedChanges
    parked_retries: ParkedRetries
    own_writes: OwnWrites
    lease: LeaseKeeper
    sender: OutgoingSender
    ledger: Ledger
    rapidpro: RapidProClient
    outgoing_token: Credential
    status: StatusTracker
    incoming_reconciler: IncomingReconciler | None
    channels: ChannelWatcher
    transitions: Sequence[Transition]
    retry_transient: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
    ready: asyncio.Event  # set once the feed runs (tests wait on it)
    started_at: float


class ActiveSession:
    def __init__(self, parts: SessionParts, generation: int, number: int) -> None:
        """`number`: how many sessions this process has run, this one included."""
        self._parts = parts
        self.generation = generation
        self.number = number
        self.dispatcher: Dispatcher | None = None
        self.follower: ChangesFollower | None = None
        self.sweep: PendingSweep | None = None
        self.in_doubt: InDoubtResolver | None = None
        self.abandoned = 0
        self._checkpoint_due = asyncio.Event()
        self._since_checkpoint = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set (shutdown) or the task is cancelled (the lease is lost)."""
        parts, config = self._parts, self._parts.config
        retry = parts.retry_transient
        parts.checkpoints.generation = self.generation
        if self.number > 1 or time.time() - parts.started_at > config.lease_ttl:
            # A standby does not follow the feed: what changed in the settings and translations
            # while it stood by is read now (the feed resumes after those changes).
            await retry("settings", lambda: parts.settings.load(parts.medic))
            await retry("translations", lambda: parts.translations.load(parts.medic))
        try:
            since = await retry("checkpoint", parts.checkpoints.load)
            if since is None:
                # First start: a big CHT holds millions of old changes; begin at the end of the feed.
                since = await retry("end_seq", parts.medic.end_seq)
                await retry("checkpoint", lambda: parts.checkpoints.save(since))
                log.info("checkpoint_initialised", seq=since, reason="first start: following from now")
            else:
                # Written again under this generation: from now on a deposed holder's late
                # checkpoint write conflicts and is refused (worker/feed/checkpoint.py).
                await retry("checkpoint", lambda: parts.checkpoints.save(since))
                log.info("checkpoint_loaded", seq=since, generation=self.generation)
        except CheckpointFenced as exc:
            log.warning("checkpoint_fenced", error=str(exc), generation=self.generation)
            return
        dispatcher = Dispatcher(
            parts.parked_retries.wrap(self._process), parts.parked.park, Watermark(since),
            concurrency=config.concurrency, max_pending=config.max_pending_changes,
            max_attempts=config.change_max_attempts, own_writes=parts.own_writes,
            on_progress=self._progress, wanted=self._wanted,
        )
        self.dispatcher = dispatcher
        self.follower = ChangesFollower(
            parts.medic, dispatcher, batch_size=config.changes_batch_size,
            catchup_batch_size=config.changes_catchup_batch_size,
            observe=lambda change: parts.status.note_change(change.doc_id, change.doc, change.deleted))
        self.sweep = PendingSweep(parts.medic, dispatcher.submit, parts.sender.refresh_gate)
        self.in_doubt = InDoubtResolver(
            ledger=parts.ledger, medic=parts.medic, client=parts.rapidpro, token=parts.outgoing_token,
            settings=lambda: parts.settings.current, writer=TaskWriter(parts.medic),
            submit=dispatcher.submit, in_charge=parts.sender.refresh_gate,
            rapidpro_timeout=config.rapidpro_timeout, check_after=config.in_doubt_check_after,
            margin=config.in_doubt_clock_margin, claim_timeout=config.claim_timeout)
        if self.number > 1:
            # Another worker tracked statuses meanwhile: what this one knew may be out of date.
            parts.status.trigger_rescan()
        deadline = 0.0
        try:
            async with asyncio.TaskGroup() as group:
                feed = group.create_task(self.follower.run(dispatcher.watermark.seq), name="feed")
                checkpointer = group.create_task(self._checkpoint_loop(), name="checkpointer")
                sweeper = group.create_task(self.sweep.run(config.sweep_interval), name="sweep")
                status = group.create_task(parts.status.run(config.status_poll_interval), name="status")
                in_doubt = group.create_task(self.in_doubt.run(), name="in-doubt")
                reconciler = None
                if parts.incoming_reconciler is not None:
                    reconciler = group.create_task(
                        parts.incoming_reconciler.run(config.incoming_reconcile_interval),
                        name="incoming-reconcile")
                channels = group.create_task(parts.channels.run(), name="channels")
                parts.ready.set()
                log.info("active_session_started", generation=self.generation, seq=since)
                await stop.wait()
                deadline = time.monotonic() + config.shutdown_timeout
                for part in (feed, sweeper, status, in_doubt, reconciler, channels):
                    if part is not None:
                        part.cancel()
                # finish in-flight work within the deadline, abandon the rest (redone after restart)
                finished = await dispatcher.drain(config.shutdown_timeout)
                self.abandoned = 0 if finished else await dispatcher.abandon()
                checkpointer.cancel()
        except asyncio.CancelledError:
            # The lease is lost: stop at once. The next holder resumes from the last checkpoint.
            self.abandoned = await dispatcher.abandon()
            log.info("active_session_stopped", generation=self.generation, reason="lease lost",
                     abandoned=self.abandoned, checkpoint=parts.checkpoints.saved_seq)
            self.follower = None
            self.dispatcher = None
            raise
        except BaseException:
            self.abandoned = await dispatcher.abandon()
            raise
        # The checkpoint (the watermark passes only what is done). Bounded, so shutdown ends on
        # time with CouchDB away: a checkpoint not written means changes processed again.
        try:
            async with asyncio.timeout(max(FINAL_CHECKPOINT_MIN_S, deadline + 1.5 - time.monotonic())):
                await self._write_checkpoint(final=True)
        except TimeoutError:
            log.warning("checkpoint_save_failed", seq=dispatcher.watermark.seq,
                        error="CouchDB did not answer in time at shutdown")
        log.info("active_session_stopped", generation=self.generation, reason="shutdown",
                 abandoned=self.abandoned, checkpoint=parts.checkpoints.saved_seq)

    # ---- processing ------------------------------------------------------------------------

    @staticmethod
    def _doc_of(change: Change) -> dict[str, Any]:
        doc = change.doc
        if doc is None and change.deleted:  # a deleted doc the transitions follow (translations)
            doc = {"_id": change.doc_id, "_deleted": True}
        assert doc is not None
        return doc

    def _wanted(self, change: Change) -> bool:
        """Whether any transition acts on the change's doc (pure; the feed's skip path asks)."""
        doc = self._doc_of(change)
        return any(transition.matches(doc) for transition in self._parts.transitions)

    async def _process(self, change: Change) -> None:
        doc = self._doc_of(change)
        for transition in self._parts.transitions:
            if transition.matches(doc):
                await transition.apply(doc)

    # ---- the checkpoint --------------------------------------------------------------------

    def _progress(self, passed: int) -> None:
        self._since_checkpoint += passed
        if self._since_checkpoint >= self._parts.config.checkpoint_every:
            self._checkpoint_due.set()

    async def _checkpoint_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and shutdown would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._parts.config.checkpoint_interval):
                    await self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            await self._write_checkpoint()

    async def _write_checkpoint(self, final: bool = False) -> None:
        checkpoints = self._parts.checkpoints
        if self.dispatcher is None:
            return
        seq = self.dispatcher.watermark.seq
        if not self._parts.lease.may_act(checkpoints.generation):
            if seq != checkpoints.saved_seq:
                log.info("checkpoint_not_saved", seq=seq, reason="not the lease holder any more")
            return
        try:
            if seq == checkpoints.saved_seq:
                # Nothing new; a deposed holder's late write may still have left a conflicting
                # revision on a cluster (it settles to this generation's).
                await checkpoints.settle_if_due()
                return
            await checkpoints.save(seq)
            self._since_checkpoint = 0
            log.log(20 if final else 10, "checkpoint_saved", seq=seq, generation=checkpoints.generation)
        except CheckpointFenced as exc:
            log.warning("checkpoint_fenced", seq=seq, error=str(exc))
        except CouchError as exc:
            # Not fatal: the next write carries it; at worst changes are processed again.
            log.warning("checkpoint_save_failed", seq=seq, error=str(exc))


class SessionSupervisor:
    """One active session at a time, following the lease's role changes: a new generation's
    session starts once the previous one's cancellation has finished (its abandoned work)."""

    def __init__(self, parts: SessionParts, on_crash: Callable[[BaseException], None]) -> None:
        self._parts = parts
        self._on_crash = on_crash  # a bug in a part: the worker exits non-zero
        self.active: ActiveSession | None = None  # the lease holder's work (the last session's)
        self.task: asyncio.Task[None] | None = None  # the active role's parts, while active
        self._stop = asyncio.Event()  # graceful end of the session (shutdown)
        self._sessions = 0
        self.abandoned = 0

    def became_active(self, generation: int) -> None:
        previous = self.task
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run(generation, previous), name=f"active-session-{generation}")
        self.task.add_done_callback(self._done)

    def became_standby(self, reason: str) -> None:
        # Synchronously: from this moment nothing of the session runs on (in-flight sends are
        # cancelled; a POST cut off after it left is an in-doubt claim, resolved as usual).
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def end(self) -> None:
        """Shutdown: the session finishes its in-flight work and writes its checkpoint."""
        task = self.task
        if task is None:
            return
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._on_crash(exc)

    async def _run(self, generation: int, previous: asyncio.Task[None] | None) -> None:
        """The lease holder's work, until shutdown or the lease is lost (cancelled)."""
        if previous is not None and not previous.done():
            await asyncio.wait({previous})  # its cancellation finishing (abandoned work)
        self._sessions += 1
        session = ActiveSession(self._parts, generation, self._sessions)
        self.active = session
        try:
            await session.run(self._stop)
        finally:
            self.abandoned = session.abandoned

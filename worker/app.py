"""Builds the daemon's parts, runs them in one TaskGroup, and owns start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from config.env import Config
from config.settings import SETTINGS_DOC_ID, Settings
from transitions.base import Transition
from transitions.dispatch import double_sender_risk
from transitions.settings_watcher import SettingsWatcher
from transitions.status import Policy
from transitions.timestamps import cht_time
from transitions.translations import MESSAGES_PREFIX
from transitions.translations_watcher import TranslationsWatcher
from worker.admin import Admin
from worker.app_settings import SettingsStore
from worker.app_translations import TranslationsStore
from worker.backoff import Backoff
from worker.changes import Change
from worker.checkpoint import CheckpointFenced, CheckpointStore, Watermark
from worker.couch import CouchError, CouchServer, CouchUnavailable, Unauthorized
from worker.dispatch import Dispatcher
from worker.feed import ChangesFollower
from worker.health_text import status_line
from worker.in_doubt import InDoubtResolver
from worker.incoming_reconcile import IncomingReconciler
from worker.lease import ACTIVE, FencedDatabase, LeaseKeeper
from worker.ledger import OWNER, Ledger
from worker.limits import log_resource_limits
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.outgoing import OutgoingSender
from worker.own_writes import OwnWrites
from worker.parking import ParkedChanges
from worker.public_server import build_public_app
from worker.rapidpro import RapidProClient, user_agent
from worker.ratelimit import RateBudget
from worker.sdnotify import Notifier
from worker.server import HttpServer, ListenError, build_app
from worker.status import StatusTracker
from worker.sweep import PendingSweep
from worker.task_writer import TaskWriter
from worker.vault import Credential, Vault
from worker.webhook import IncomingWebhook

log = get_logger(__name__)
T = TypeVar("T")

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 2
# The final checkpoint write gets at least this long after the in-flight work is done.
FINAL_CHECKPOINT_MIN_S = 1.0
# How often a standby checks whether the settings or translations changed.
STANDBY_REFRESH_S = 10.0


class StartupError(Exception):
    """A problem only the operator can fix (permissions); the daemon exits with status 2."""


class Worker:
    def __init__(self, config: Config, *, extra_transitions: Sequence[Transition] = ()) -> None:
        self.config = config
        self.couch = CouchServer(config.couch, timeout=config.couch_timeout, threads=config.couch_threads)
        self.medic = self.couch.db(config.couch.db_name)
        self.own_db = self.couch.db(config.worker_db)
        self.own_writes = OwnWrites()
        self.medic.on_write = self.own_writes.remember
        self.settings = SettingsStore()
        self.translations = TranslationsStore()
        self.checkpoints = CheckpointStore(self.own_db)
        self.parked = ParkedChanges(self.own_db)
        self.vault = Vault(self.couch, config.couch.vault_db_name, config.couch_secret)
        self.outgoing_token = Credential(self.vault, "rapidpro:outgoing", value=config.rapidpro_api_token,
                                         file=config.rapidpro_api_token_file, ttl=config.credentials_ttl)
        self.incoming_key = Credential(self.vault, "rapidpro:incoming", value=config.rapidpro_incoming_key,
                                       file=config.rapidpro_incoming_key_file, ttl=config.credentials_ttl)
        # A tenth of the budget is only for sends: status tracking never empties it before a burst.
        self.budget = RateBudget(config.rapidpro_calls_per_hour, send_reserve=0.1)
        # One active worker of several (worker/lease.py): it alone talks to RapidPro and moves
        # the feed; every worker serves the webhook and the health endpoints.
        self.instance_id = config.instance_id or OWNER
        self.lease = LeaseKeeper(self.own_db, self.instance_id, ttl=config.lease_ttl,
                                 renew_interval=config.lease_renew_interval,
                                 request_timeout=config.couch_timeout,
                                 on_active=self._became_active, on_standby=self._became_standby)
        # A call waits at most rapidpro_timeout for the budget, then at most as long for its answer.
        self.rapidpro = RapidProClient(self.budget, timeout=config.rapidpro_timeout,
                                       max_wait=config.rapidpro_timeout,
                                       user_agent=user_agent(self.instance_id), may_call=self.lease.may_act)
        self.ledger = Ledger(self.own_db)
        self.sender = OutgoingSender(
            ledger=self.ledger, client=self.rapidpro, writer=TaskWriter(self.medic),
            token=self.outgoing_token,
            settings=lambda: self.settings.current, service_name=config.outgoing_service_name,
            # Longer than any send can take (budget wait + request + recording the outcome).
            claim_timeout=config.claim_timeout,
        )
        # Status tracking writes through handles fenced by the lease: a deposed holder's late
        # round writes nothing.
        status_medic = FencedDatabase(self.couch, config.couch.db_name, self.lease.may_act)
        status_medic.on_write = self.own_writes.remember
        self.status = StatusTracker(
            medic=status_medic,
            own_db=FencedDatabase(self.couch, config.worker_db, self.lease.may_act),
            client=self.rapidpro, token=self.outgoing_token,
            settings=lambda: self.settings.current, service_name=config.outgoing_service_name,
            policy=Policy(interval=config.status_poll_interval, horizon=config.status_tracking_horizon))
        self.incoming = IncomingWebhook(self.medic, self.incoming_key, lambda: self.settings.current,
                                        translations=lambda: self.translations.current,
                                        max_body=config.webhook_max_body,
                                        couch_timeout=min(config.couch_timeout, 5.0))
        self.incoming_reconciler = IncomingReconciler(
            client=self.rapidpro, token=self.outgoing_token, settings=lambda: self.settings.current,
            translations=lambda: self.translations.current,
            store=self.incoming.store, own_db=self.own_db) if config.incoming_reconcile else None
        self.double_sender_risk = False
        self.settings.subscribe(self._settings_changed)
        self.transitions: list[Transition] = [
            SettingsWatcher(lambda: self.settings.current, self.settings.put_in_force, self.settings.refuse),
            TranslationsWatcher(self.translations.put_in_force),
            self.sender,
            *extra_transitions,
        ]
        self.in_doubt: InDoubtResolver | None = None
        self.sweep: PendingSweep | None = None
        self.dispatcher: Dispatcher | None = None
        self.follower: ChangesFollower | None = None
        self.http: HttpServer | None = None
        self.public_http: HttpServer | None = None  # the public door (webhook only), when configured
        self._stop = asyncio.Event()
        self._session: asyncio.Task[None] | None = None  # the active role's parts, while active
        self._session_stop = asyncio.Event()  # graceful end of the session (shutdown)
        self._sessions = 0
        self._exit_code = EXIT_OK
        self._abandoned = 0
        self._checkpoint_due = asyncio.Event()
        self._since_checkpoint = 0
        self.started_at = time.time()
        self.ready = asyncio.Event()  # set once the feed runs (tests wait on it)
        self.notifier = Notifier()  # systemd readiness, status and watchdog; no-op outside systemd
        self.metrics = Metrics(self)
        self.admin = Admin(self)  # operator requests: rescan, retry parked changes
        self.status.on_state_learned = self.metrics.observe_status_freshness

    # ---- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for an orderly shutdown (what SIGTERM/SIGINT do)."""
        if not self._stop.is_set():
            self.notifier.stopping()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("shutdown_requested", signal=sig.name)
        self.stop()

    async def run(self) -> int:
        log.info("worker_starting", couch=self.config.couch.redacted_url, worker_db=self.config.worker_db)
        log_resource_limits(log)  # warns when systemd's MemoryMax=/TasksMax= are not in force
        watchdog = asyncio.create_task(self.notifier.watchdog(), name="watchdog")
        try:
            started = await self._until_stopped(self._start())
            if not started:
                log.info("worker_stopped", before="start-up finished")
                return EXIT_OK
            return await self._run_parts()
        except StartupError as exc:
            log.error("worker_cannot_start", error=str(exc))
            return EXIT_CONFIG
        finally:
            watchdog.cancel()
            self.notifier.close()
            await self.couch.close()

    async def _until_stopped(self, coro: Awaitable[T]) -> bool:
        """Run `coro` unless a stop is asked for first; True when it completed."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stopper.cancel()
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _retry_transient(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Start-up calls wait for CouchDB to come up rather than exit."""
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                return await call()
            except CouchUnavailable as exc:
                delay = backoff.next_delay(exc.retry_after)
                log.warning("couch_unavailable", during=what, error=str(exc), retry_in_s=round(delay, 2))
                self.notifier.status(f"starting: waiting for CouchDB ({what})")
                await asyncio.sleep(delay)

    async def _start(self) -> None:
        await self._retry_transient("worker_db", self._ensure_own_db)
        await self._retry_transient("settings", lambda: self.settings.load(self.medic))
        await self._retry_transient("translations", lambda: self.translations.load(self.medic))
        app = build_app(self.health)
        self.incoming.register(app)
        self.metrics.register(app)
        self.admin.register(app)
        self.http = HttpServer(app, self.config.listen_host, self.config.listen_port)
        if self.config.webhook_listen_host is not None:
            self.public_http = HttpServer(
                build_public_app(self), self.config.webhook_listen_host, self.config.webhook_listen_port,
                keepalive_timeout=self.config.webhook_read_timeout, door="public")
        await self._check_double_sender()

    async def _ensure_own_db(self) -> None:
        await self._create_own_db()
        await self.ledger.ensure_views()

    async def _create_own_db(self) -> None:
        try:
            created = await self.own_db.create()
        except Unauthorized as exc:
            raise StartupError(
                f"the CouchDB user may not create the worker's database {self.own_db.name!r} ({exc}); "
                "create it as an admin or set WORKER_DB to one the user can write") from None
        except CouchError as exc:
            if isinstance(exc, CouchUnavailable):
                raise
            raise StartupError(f"cannot create the worker's database {self.own_db.name!r}: {exc}") from None
        if created:
            log.info("worker_db_created", db=self.own_db.name)

    async def _run_parts(self) -> int:
        """Every worker serves HTTP and keeps the lease; the holder also runs the active session
        (`_active_session`), started and stopped by the lease's role changes."""
        assert self.http is not None
        try:
            await self.http.start()
            if self.public_http is not None:
                await self.public_http.start()
        except ListenError as exc:
            # Nothing can serve the webhook: exit non-zero, and a service manager tries again
            # later (RestartSec), when a previous run may have let the port go.
            log.error("http_listen_failed", error=str(exc))
            await self.http.stop()
            await self.rapidpro.close()
            return EXIT_CRASH
        http_stop: asyncio.Task[None] | None = None
        public_stop: asyncio.Task[None] | None = None
        try:
            async with asyncio.TaskGroup() as group:
                await self.lease.tick()  # the first decision before saying we are up
                lease_loop = group.create_task(self.lease.run(), name="lease")
                sd_status = group.create_task(self.notifier.status_loop(self._status_line), name="sd-status")
                refresher = group.create_task(self._standby_refresh_loop(), name="standby-refresh")
                if self.lease.role != ACTIVE and self.lease.holder is not None:
                    self.ready.set()  # a standby: up as soon as it serves the webhook
                elif self._session is not None:
                    # Active: "started" once the feed's start is fixed (a change written after
                    # this log line is never skipped), unless the lease or a stop comes first.
                    waits = {asyncio.ensure_future(self.ready.wait()),
                             asyncio.ensure_future(self._stop.wait())}
                    await asyncio.wait({*waits, self._session}, return_when=asyncio.FIRST_COMPLETED)
                    for waiter in waits:
                        waiter.cancel()
                self.notifier.ready(status=await self._status_line())
                log.info("worker_started", role=self.lease.role, instance_id=self.instance_id,
                         lease_holder=self.lease.holder)
                await self._stop.wait()
                stop_deadline = time.monotonic() + self.config.shutdown_timeout
                # 1. stop taking webhook requests; those in progress get the shutdown time
                http_stop = asyncio.create_task(self.http.stop(self.config.shutdown_timeout))
                if self.public_http is not None:
                    public_stop = asyncio.create_task(self.public_http.stop(self.config.shutdown_timeout))
                # 2. the active session finishes its in-flight work and writes its checkpoint,
                # still under the lease (the renewals go on meanwhile)
                await self._end_session()
                # 3. then give the lease up, so a standby takes over at once
                lease_loop.cancel()
                # (bounded like the rest of shutdown: not released, a standby waits out the TTL)
                await self.lease.release(min(self.config.couch_timeout,
                                             max(1.0, stop_deadline + 2.0 - time.monotonic())))
                sd_status.cancel()
                refresher.cancel()
        except* Exception as group_error:  # a part crashed: a bug; exit non-zero so systemd restarts us
            for exc in group_error.exceptions:
                log.error("worker_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            self._exit_code = EXIT_CRASH
            await self._end_session()
        await (http_stop or self.http.stop())
        if public_stop is not None:
            await public_stop
        elif self.public_http is not None:
            await self.public_http.stop()
        await self.rapidpro.close()
        log.info("worker_stopped", checkpoint=self.checkpoints.saved_seq, abandoned=self._abandoned,
                 exit_code=self._exit_code)
        return self._exit_code

    # ---- the active role ---------------------------------------------------------------------

    async def _standby_refresh_loop(self) -> None:
        """A standby follows no feed, yet serves the webhook: it re-reads the settings (SMS forms)
        and CHT's translation docs when their revisions change, as the feed would have told it."""
        seen: tuple[Any, Any] | None = None
        while True:
            await asyncio.sleep(STANDBY_REFRESH_S)
            if self.lease.role == ACTIVE:
                seen = None  # the feed keeps them current
                continue
            try:
                async with asyncio.timeout(self.config.couch_timeout):
                    settings_doc = await self.medic.get_or_none(SETTINGS_DOC_ID)
                    rows = (await self.medic.all_docs(start_key=MESSAGES_PREFIX,
                                                      end_key=MESSAGES_PREFIX + "\ufff0")).get("rows") or []
                    revs = (settings_doc.get("_rev") if settings_doc else None,
                            tuple((row.get("id"), (row.get("value") or {}).get("rev")) for row in rows))
                    current = self.settings.current.rev if self.settings.current else None
                    if revs[0] != current and (seen is None or revs[0] != seen[0]):
                        await self.settings.load(self.medic)
                    if seen is not None and revs[1] != seen[1]:
                        await self.translations.load(self.medic)
                    seen = revs
            except (CouchError, TimeoutError) as exc:
                log.debug("standby_refresh_failed", error=str(exc) or type(exc).__name__)

    def _became_active(self, generation: int) -> None:
        previous = self._session
        self._session_stop = asyncio.Event()
        self._session = asyncio.create_task(self._active_session(generation, previous),
                                            name=f"active-session-{generation}")
        self._session.add_done_callback(self._session_done)

    def _became_standby(self, reason: str) -> None:
        # Synchronously: from this moment nothing of the session runs on (in-flight sends are
        # cancelled; a POST cut off after it left is an in-doubt claim, resolved as usual).
        if self._session is not None and not self._session.done():
            self._session.cancel()

    def _session_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug in a part: exit non-zero so systemd restarts us
            log.error("worker_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            self._exit_code = EXIT_CRASH
            self.stop()

    async def _end_session(self) -> None:
        session = self._session
        if session is None:
            return
        self._session_stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({session})

    async def _active_session(self, generation: int, previous: asyncio.Task[None] | None) -> None:
        """The lease holder's work: feed + checkpoint, sending, sweeps, status tracking, in-doubt
        resolution, incoming reconciliation. Cancelled the moment the lease is lost."""
        if previous is not None and not previous.done():
            await asyncio.wait({previous})  # its cancellation finishing (abandoned work)
        self._sessions += 1
        self.checkpoints.generation = generation
        if self._sessions > 1 or time.time() - self.started_at > self.config.lease_ttl:
            # A standby does not follow the feed: what changed in the settings and translations
            # while it stood by is read now (the feed resumes after those changes).
            await self._retry_transient("settings", lambda: self.settings.load(self.medic))
            await self._retry_transient("translations", lambda: self.translations.load(self.medic))
        try:
            since = await self._retry_transient("checkpoint", self.checkpoints.load)
            if since is None:
                # First start: a big CHT holds millions of old changes; begin at the end of the feed.
                since = await self._retry_transient("end_seq", self.medic.end_seq)
                await self._retry_transient("checkpoint", lambda: self.checkpoints.save(since))
                log.info("checkpoint_initialised", seq=since, reason="first start: following from now")
            else:
                # Written again under this generation: from now on a deposed holder's late
                # checkpoint write conflicts and is refused (worker/checkpoint.py).
                await self._retry_transient("checkpoint", lambda: self.checkpoints.save(since))
                log.info("checkpoint_loaded", seq=since, generation=generation)
        except CheckpointFenced as exc:
            log.warning("checkpoint_fenced", error=str(exc), generation=generation)
            return
        dispatcher = Dispatcher(
            self.admin.wrap(self._process), self.parked.park, Watermark(since),
            concurrency=self.config.concurrency, max_pending=self.config.max_pending_changes,
            max_attempts=self.config.change_max_attempts, own_writes=self.own_writes,
            on_progress=self._progress, wanted=self._wanted,
        )
        self.dispatcher = dispatcher
        self.follower = ChangesFollower(
            self.medic, dispatcher, batch_size=self.config.changes_batch_size,
            catchup_batch_size=self.config.changes_catchup_batch_size)
        self.sweep = PendingSweep(self.medic, dispatcher.submit, self.sender.refresh_gate)
        self.in_doubt = InDoubtResolver(
            ledger=self.ledger, medic=self.medic, client=self.rapidpro, token=self.outgoing_token,
            settings=lambda: self.settings.current, writer=TaskWriter(self.medic),
            submit=dispatcher.submit, in_charge=self.sender.refresh_gate,
            rapidpro_timeout=self.config.rapidpro_timeout, check_after=self.config.in_doubt_check_after,
            margin=self.config.in_doubt_clock_margin, claim_timeout=self.config.claim_timeout)
        if self._sessions > 1:
            # Another worker tracked statuses meanwhile: what this one knew may be out of date.
            self.status.trigger_rescan()
        deadline = 0.0
        try:
            async with asyncio.TaskGroup() as group:
                feed = group.create_task(self.follower.run(dispatcher.watermark.seq), name="feed")
                checkpointer = group.create_task(self._checkpoint_loop(), name="checkpointer")
                sweeper = group.create_task(self.sweep.run(self.config.sweep_interval), name="sweep")
                status = group.create_task(self.status.run(self.config.status_poll_interval), name="status")
                in_doubt = group.create_task(self.in_doubt.run(), name="in-doubt")
                reconciler = None
                if self.incoming_reconciler is not None:
                    reconciler = group.create_task(
                        self.incoming_reconciler.run(self.config.incoming_reconcile_interval),
                        name="incoming-reconcile")
                self.ready.set()
                log.info("active_session_started", generation=generation, seq=since)
                await self._session_stop.wait()
                deadline = time.monotonic() + self.config.shutdown_timeout
                for part in (feed, sweeper, status, in_doubt, reconciler):
                    if part is not None:
                        part.cancel()
                # finish in-flight work within the deadline, abandon the rest (redone after restart)
                finished = await dispatcher.drain(self.config.shutdown_timeout)
                self._abandoned = 0 if finished else await dispatcher.abandon()
                checkpointer.cancel()
        except asyncio.CancelledError:
            # The lease is lost: stop at once. The next holder resumes from the last checkpoint.
            self._abandoned = await dispatcher.abandon()
            log.info("active_session_stopped", generation=generation, reason="lease lost",
                     abandoned=self._abandoned, checkpoint=self.checkpoints.saved_seq)
            self.follower = None
            self.dispatcher = None
            raise
        except BaseException:
            self._abandoned = await dispatcher.abandon()
            raise
        # The checkpoint (the watermark passes only what is done). Bounded, so shutdown ends on
        # time with CouchDB away: a checkpoint not written means changes processed again.
        try:
            async with asyncio.timeout(max(FINAL_CHECKPOINT_MIN_S, deadline + 1.5 - time.monotonic())):
                await self._write_checkpoint(final=True)
        except TimeoutError:
            log.warning("checkpoint_save_failed", seq=dispatcher.watermark.seq,
                        error="CouchDB did not answer in time at shutdown")
        log.info("active_session_stopped", generation=generation, reason="shutdown",
                 abandoned=self._abandoned, checkpoint=self.checkpoints.saved_seq)

    # ---- settings and sending ----------------------------------------------------------------

    async def _settings_changed(self, old: Settings | None, new: Settings) -> None:
        was_in_charge = self.sender.gate.not_in_charge is None
        now_in_charge = await self.sender.refresh_gate()
        url_changed = old is not None and old.rapidpro_url != new.rapidpro_url
        if now_in_charge and (not was_in_charge or url_changed) and self.sweep is not None:
            # Switched to the worker (or to another RapidPro host): send what is pending now.
            log.info("outgoing_switched", rapidpro_url=new.rapidpro_url)
            self.sweep.trigger()
            self.status.trigger_rescan()  # as CHT does: ask about every non-final message
        if self.dispatcher is not None:  # not during start-up: checked once there
            await self._check_double_sender()

    async def _check_double_sender(self) -> None:
        try:
            has_token = await self.vault.has("rapidpro:outgoing")
        except CouchError:
            return
        risk = double_sender_risk(self.settings.current, has_token)
        if risk and self.config.outgoing_service_name == "rapidpro":
            log.error("double_sender_risk",
                      detail="CHT's built-in RapidPro sender also runs (outgoing_service is 'rapidpro' and "
                             "rapidpro:outgoing is in the vault): messages can be sent twice. See the "
                             "README, 'Exactly one sender'.")
        self.double_sender_risk = risk and self.config.outgoing_service_name == "rapidpro"

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
        return any(transition.matches(doc) for transition in self.transitions)

    async def _process(self, change: Change) -> None:
        doc = self._doc_of(change)
        for transition in self.transitions:
            if transition.matches(doc):
                await transition.apply(doc)

    def _progress(self, passed: int) -> None:
        self._since_checkpoint += passed
        if self._since_checkpoint >= self.config.checkpoint_every:
            self._checkpoint_due.set()

    async def _checkpoint_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and shutdown would then wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.checkpoint_interval):
                    await self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            await self._write_checkpoint()

    async def _write_checkpoint(self, final: bool = False) -> None:
        if self.dispatcher is None:
            return
        seq = self.dispatcher.watermark.seq
        if seq == self.checkpoints.saved_seq:
            return
        if not self.lease.may_act(self.checkpoints.generation):
            log.info("checkpoint_not_saved", seq=seq, reason="not the lease holder any more")
            return
        try:
            await self.checkpoints.save(seq)
            self._since_checkpoint = 0
            log.log(20 if final else 10, "checkpoint_saved", seq=seq, generation=self.checkpoints.generation)
        except CheckpointFenced as exc:
            log.warning("checkpoint_fenced", seq=seq, error=str(exc))
        except CouchError as exc:
            # Not fatal: the next write carries it; at worst changes are processed again.
            log.warning("checkpoint_save_failed", seq=seq, error=str(exc))

    # ---- health ----------------------------------------------------------------------------

    async def _status_line(self) -> str:
        return status_line(await self.health())

    async def health(self) -> dict[str, Any]:
        feed = self.follower.status if self.follower else None
        stats = self.dispatcher.stats if self.dispatcher else None
        checkpoint = self.checkpoints.saved_seq
        backlog: int | None = None
        parked_total: int | None = None
        if checkpoint is not None:
            with contextlib.suppress(CouchError, TimeoutError):
                async with asyncio.timeout(3):
                    page = await self.medic.changes(checkpoint, limit=0, include_docs=False)
                backlog = page.pending
        with contextlib.suppress(CouchError, TimeoutError):
            async with asyncio.timeout(3):
                parked_total = await self.parked.count()
        settings = self.settings.current
        gate = self.sender.gate
        last_in_doubt = self.in_doubt.last if self.in_doubt else None
        paused = gate.remaining_pause() > 0
        return {
            "status": "ok",
            "role": self.lease.role,
            "lease_holder": self.lease.holder,
            "lease": self.lease.health(),
            "started_at": cht_time(self.started_at),
            "feed": {
                "connected": feed.connected if feed else False,
                "since": feed.since if feed else None,
                "caught_up": feed.caught_up if feed else False,
                "last_error": feed.last_error if feed else None,
            },
            "checkpoint": checkpoint,
            "backlog": backlog,
            "last_progress": cht_time(stats.last_progress) if stats and stats.last_progress else None,
            "in_flight": self.dispatcher.in_flight if self.dispatcher else 0,
            "changes": {
                "processed": stats.processed if stats else 0,
                "skipped": stats.skipped if stats else 0,
                "failures": stats.failures if stats else 0,
                "parked": stats.parked if stats else 0,
            },
            "parked_total": parked_total,
            "settings": settings.summary() if settings else None,
            "settings_error": self.settings.last_error,
            "translations": self.translations.current.summary(),
            "outgoing": {
                "sending": gate.not_in_charge is None and not paused,
                "not_sending_reason": gate.not_in_charge,
                "paused_reason": gate.pause_reason if paused else None,
                "double_sender_risk": self.double_sender_risk,
                "token_source": self.outgoing_token.source,
                "sent": self.sender.stats.sent,
                "rejected": self.sender.stats.rejected,
                "denied": self.sender.stats.denied,
                "in_doubt": self.sender.stats.in_doubt,
                "in_doubt_unresolved": last_in_doubt.unresolved if last_in_doubt else None,
                "in_doubt_waiting_operator": last_in_doubt.waiting_operator if last_in_doubt else None,
                "in_doubt_found": self.in_doubt.totals["found"] if self.in_doubt else 0,
                "in_doubt_resent": self.in_doubt.totals["resent"] if self.in_doubt else 0,
                "reprojected": self.sender.stats.reprojected,
                "send_errors": self.sender.stats.send_errors,
                "last_sweep_docs": self.sweep.last_count if self.sweep else None,
            },
            "status_tracking": self.status.health(),
            "incoming": {
                "key_source": self.incoming_key.source,
                "requests": dict(self.incoming.counters),
                "reconcile": None if self.incoming_reconciler is None else {
                    "last_round": (vars(self.incoming_reconciler.last_round)
                                   if self.incoming_reconciler.last_round else None),
                    "last_error": self.incoming_reconciler.last_error,
                },
            },
        }


async def run_worker(config: Config) -> int:
    worker = Worker(config)
    worker.install_signal_handlers()
    return await worker.run()

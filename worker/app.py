"""Builds the daemon's parts, runs them in one TaskGroup, and owns start-up and shutdown.

It wires and does not decide: every worker serves both HTTP doors and keeps the lease; the lease
holder also runs an active session (worker/session.py); each capability reports its own health
(worker/reporting.py). The map of the packages is worker/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from config.env import Config
from transitions.base import Transition
from transitions.cht.settings_watcher import SettingsWatcher
from transitions.cht.translations_watcher import TranslationsWatcher
from transitions.status.rules import Policy
from worker.backoff import Backoff
from worker.cht.refresh import StandbyRefresh
from worker.cht.report import ChtReport
from worker.cht.settings import SettingsStore
from worker.cht.translations import TranslationsStore
from worker.couch.client import CouchError, CouchServer, CouchUnavailable, Unauthorized
from worker.feed.checkpoint import CheckpointStore
from worker.feed.dispatcher import Dispatcher
from worker.feed.follower import ChangesFollower
from worker.feed.own_writes import OwnWrites
from worker.feed.parking import ParkedChanges, ParkedRetries
from worker.feed.report import FeedReport
from worker.http.admin import Admin, admin_token
from worker.http.health import HealthDocument, readiness_problems
from worker.http.health_text import status_line
from worker.http.metrics import Metrics
from worker.http.public import build_public_app
from worker.http.server import HttpServer, ListenError, build_app
from worker.identity import OWNER
from worker.incoming.reconcile import IncomingReconciler
from worker.incoming.report import IncomingReport
from worker.incoming.webhook import IncomingWebhook
from worker.lease.keeper import ACTIVE, FencedDatabase, LeaseKeeper
from worker.lease.report import LeaseReport
from worker.limits import log_resource_limits
from worker.logs import get_logger
from worker.outgoing.cht_sender import ChtSenderWatch
from worker.outgoing.in_doubt import InDoubtResolver
from worker.outgoing.ledger import Ledger
from worker.outgoing.report import OutgoingReport
from worker.outgoing.sender import OutgoingSender
from worker.outgoing.sweep import PendingSweep
from worker.outgoing.switch import SendingSwitch
from worker.outgoing.task_writer import TaskWriter
from worker.rapidpro.budget import ScopedBudget
from worker.rapidpro.channels import ChannelWatcher
from worker.rapidpro.client import RapidProClient, user_agent
from worker.rapidpro.credentials import Credential, Vault
from worker.rapidpro.report import RapidProReport
from worker.reporting import Reporter
from worker.sdnotify import Notifier
from worker.session import ActiveSession, SessionParts, SessionSupervisor
from worker.status.report import StatusReport
from worker.status.tracker import StatusTracker

log = get_logger(__name__)
T = TypeVar("T")

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 2


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
        self.parked = ParkedChanges(self.own_db)
        self.vault = Vault(self.couch, config.couch.vault_db_name, config.couch_secret)
        self.outgoing_token = Credential(self.vault, "rapidpro:outgoing", value=config.rapidpro_api_token,
                                         file=config.rapidpro_api_token_file, ttl=config.credentials_ttl)
        self.incoming_key = Credential(self.vault, "rapidpro:incoming", value=config.rapidpro_incoming_key,
                                       file=config.rapidpro_incoming_key_file, ttl=config.credentials_ttl)
        # One budget per RapidPro throttle scope, at the rates of the server's version (learnt
        # from its first broadcast) or the operator's; within a scope sends go first, with a
        # minute of the rate kept for them and a tenth guaranteed to the rest
        # (worker/rapidpro/budget.py, transitions/rapidpro/rate_scopes.py).
        self.budget = ScopedBudget(overrides=config.rapidpro_scope_rates,
                                   every=config.rapidpro_calls_per_hour)
        # While CHT's own RapidPro sender runs, the worker stands down (worker/outgoing/cht_sender.py).
        self.cht_sender = ChtSenderWatch(self.vault, lambda: self.settings.current,
                                         interval=max(config.credentials_ttl, 1.0),
                                         on_change=lambda: self.switch.in_charge_changed())
        # One active worker of several (worker/lease/keeper.py): it alone talks to RapidPro and moves
        # the feed; every worker serves the webhook and the health endpoints.
        self.instance_id = config.instance_id or OWNER
        self.checkpoints = CheckpointStore(self.own_db, instance=self.instance_id)
        self.lease = LeaseKeeper(self.own_db, self.instance_id, ttl=config.lease_ttl,
                                 renew_interval=config.lease_renew_interval,
                                 request_timeout=config.couch_timeout,
                                 on_active=lambda g: self.sessions.became_active(g),
                                 on_standby=lambda r: self.sessions.became_standby(r))
        # A call waits at most rapidpro_timeout for the budget, then at most as long for its answer.
        self.rapidpro = RapidProClient(self.budget, timeout=config.rapidpro_timeout,
                                       max_wait=config.rapidpro_timeout,
                                       user_agent=user_agent(self.instance_id), may_call=self.lease.may_act)
        self.ledger = Ledger(self.own_db, instance=self.instance_id)
        self.sender = OutgoingSender(
            ledger=self.ledger, client=self.rapidpro, writer=TaskWriter(self.medic),
            token=self.outgoing_token,
            settings=lambda: self.settings.current, service_name=config.outgoing_service_name,
            # Longer than any send can take (budget wait + request + recording the outcome).
            claim_timeout=config.claim_timeout,
            cht_sender=lambda: self.cht_sender.reason,
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
            cht_sender=lambda: self.cht_sender.reason,
            policy=Policy(interval=config.status_poll_interval, horizon=config.status_tracking_horizon),
            changes_from_feed=True)
        self.incoming = IncomingWebhook(self.medic, self.incoming_key, lambda: self.settings.current,
                                        translations=lambda: self.translations.current,
                                        max_body=config.webhook_max_body,
                                        couch_timeout=min(config.couch_timeout, 5.0))
        self.incoming_reconciler = IncomingReconciler(
            client=self.rapidpro, token=self.outgoing_token, settings=lambda: self.settings.current,
            translations=lambda: self.translations.current,
            store=self.incoming.store, own_db=self.own_db) if config.incoming_reconcile else None
        # The active worker reads the workspace's channels (last seen, battery) every interval.
        self.channels = ChannelWatcher(client=self.rapidpro, token=self.outgoing_token,
                                       settings=lambda: self.settings.current,
                                       interval=config.channel_check_interval)
        self.transitions: list[Transition] = [
            SettingsWatcher(lambda: self.settings.current, self.settings.put_in_force, self.settings.refuse),
            TranslationsWatcher(self.translations.put_in_force),
            self.sender,
            *extra_transitions,
        ]
        self.http: HttpServer | None = None
        self.public_http: HttpServer | None = None  # the public door (webhook only), when configured
        self._stop = asyncio.Event()
        self._exit_code = EXIT_OK
        self.started_at = time.time()
        self.ready = asyncio.Event()  # set once the feed runs (tests wait on it)
        self.notifier = Notifier()  # systemd readiness, status and watchdog; no-op outside systemd
        self.parked_retries = ParkedRetries(self.parked, self.medic, lambda: self.dispatcher)
        self.session_parts = SessionParts(
            config=config, medic=self.medic, settings=self.settings, translations=self.translations,
            checkpoints=self.checkpoints, parked=self.parked, parked_retries=self.parked_retries,
            own_writes=self.own_writes, lease=self.lease, sender=self.sender, ledger=self.ledger,
            rapidpro=self.rapidpro, outgoing_token=self.outgoing_token, status=self.status,
            incoming_reconciler=self.incoming_reconciler, channels=self.channels,
            transitions=self.transitions,
            retry_transient=self._retry_transient, ready=self.ready, started_at=self.started_at)
        # One active session at a time, following the lease (worker/session.py).
        self.sessions = SessionSupervisor(self.session_parts, on_crash=self._crashed)
        # CHT's settings or CHT's own sender changed: whether the worker sends may have too.
        self.switch = SendingSwitch(self.sender, self.cht_sender, lambda: self.settings.current,
                                    sweep=lambda: self.sweep, rescan=self.status.trigger_rescan,
                                    started=lambda: self.dispatcher is not None)
        self.settings.subscribe(self.switch.settings_changed)
        self.standby_refresh = StandbyRefresh(self.medic, self.settings, self.translations,
                                              active=lambda: self.lease.role == ACTIVE,
                                              timeout=config.couch_timeout)
        # Each capability reports its own part of /healthz and its metrics; the HTTP layer
        # composes them (worker/reporting.py).
        self.reporters: list[Reporter] = [
            LeaseReport(self.lease),
            FeedReport(self.medic, self.checkpoints, self.parked,
                       follower=lambda: self.follower, dispatcher=lambda: self.dispatcher),
            ChtReport(self.settings, self.translations),
            OutgoingReport(self.sender, self.outgoing_token,
                           cht_sender=self.cht_sender,
                           in_doubt=lambda: self.in_doubt, sweep=lambda: self.sweep),
            StatusReport(self.status),
            IncomingReport(self.incoming, self.incoming_key, self.incoming_reconciler),
            RapidProReport(self.rapidpro, self.budget, self.channels),
        ]
        self.health_document = HealthDocument(self.reporters, self.started_at)
        self.metrics = Metrics(self.reporters, self.readiness)
        # Operator requests: rescan statuses, retry parked changes.
        self.admin = Admin(admin_token(config), rescan=self.status.trigger_rescan,
                           retry_parked=self.parked_retries.retry)
        self.status.on_state_learned = self.metrics.observe_status_freshness

    # The active session's parts, for the reporters and tests (None on a standby or at start).

    @property
    def active(self) -> ActiveSession | None:
        return self.sessions.active

    @property
    def dispatcher(self) -> Dispatcher | None:
        return self.active.dispatcher if self.active else None

    @property
    def follower(self) -> ChangesFollower | None:
        return self.active.follower if self.active else None

    @property
    def sweep(self) -> PendingSweep | None:
        return self.active.sweep if self.active else None

    @property
    def in_doubt(self) -> InDoubtResolver | None:
        return self.active.in_doubt if self.active else None

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
        if self.config.rapidpro_calls_per_hour is not None:
            log.warning("setting_deprecated", name="RAPIDPRO_CALLS_PER_HOUR",
                        hint="it sets every RapidPro throttle scope's rate; RapidPro counts scopes apart: "
                             "use RAPIDPRO_BROADCASTS_/MESSAGES_/V2_CALLS_PER_HOUR, or nothing for the "
                             "server version's rates")
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
        # CHT's vault read before the settings are put in force: they are judged against it at once.
        await self.cht_sender.check(notify=False)
        await self._retry_transient("settings", lambda: self.settings.load(self.medic))
        await self._retry_transient("translations", lambda: self.translations.load(self.medic))
        app = build_app(self.health)
        self.incoming.register(app)
        self.metrics.register(app)
        self.admin.register(app)
        self.http = HttpServer(app, self.config.listen_host, self.config.listen_port)
        if self.config.webhook_listen_host is not None:
            public_app = build_public_app(
                self.incoming, readiness=self.readiness,
                observe_webhook=self.metrics.observe_webhook_on,
                client_concurrency=self.config.webhook_client_concurrency,
                read_timeout=self.config.webhook_read_timeout, max_body=self.config.webhook_max_body)
            self.public_http = HttpServer(
                public_app, self.config.webhook_listen_host, self.config.webhook_listen_port,
                keepalive_timeout=self.config.webhook_read_timeout, door="public")
        await self.cht_sender.check()

    async def _ensure_own_db(self) -> None:
        await self._create_own_db()
        try:
            await self.ledger.ensure_views()
        except Unauthorized as exc:  # a member but not its admin: no views to find claims in doubt
            raise StartupError(f"{exc}; give the user admin rights there, or run `check`") from None
        await self._seed_send_window()

    async def _seed_send_window(self) -> None:
        """RapidPro counts the last hour's calls: the ledger holds every send of that hour, so the
        broadcasts' budget starts with what RapidPro will really allow, not a guess."""
        wall, mono = time.time(), time.monotonic()
        claims = await self.ledger.claims_since(wall - 3600)
        self.budget.seed_sends([mono - (wall - t) for t in claims])
        log.info("rapidpro_send_window_rebuilt", sends_last_hour=len(claims))

    async def _create_own_db(self) -> None:
        # Asked first: a user that is not a server admin may use an existing database (as its
        # member and admin) but not PUT one, even one that exists (401 "not a server admin").
        try:
            if await self.own_db.exists():
                return
        except Unauthorized as exc:
            raise StartupError(
                f"the CouchDB user may not use the worker's database {self.own_db.name!r} ({exc}); "
                "make it a member and an admin of that database (its _security), or run `check`") from None
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
        (worker/session.py), started and stopped by the lease's role changes."""
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
                refresher = group.create_task(self.standby_refresh.run(), name="standby-refresh")
                cht_sender = group.create_task(self.cht_sender.run(), name="cht-sender-watch")
                if self.lease.role != ACTIVE and self.lease.holder is not None:
                    self.ready.set()  # a standby: up as soon as it serves the webhook
                elif self.sessions.task is not None:
                    # Active: "started" once the feed's start is fixed (a change written after
                    # this log line is never skipped), unless the lease or a stop comes first.
                    waits = {asyncio.ensure_future(self.ready.wait()),
                             asyncio.ensure_future(self._stop.wait())}
                    await asyncio.wait({*waits, self.sessions.task}, return_when=asyncio.FIRST_COMPLETED)
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
                await self.sessions.end()
                # 3. then give the lease up, so a standby takes over at once
                lease_loop.cancel()
                # (bounded like the rest of shutdown: not released, a standby waits out the TTL)
                await self.lease.release(min(self.config.couch_timeout,
                                             max(1.0, stop_deadline + 2.0 - time.monotonic())))
                sd_status.cancel()
                refresher.cancel()
                cht_sender.cancel()
        except* Exception as group_error:  # a part crashed: a bug; exit non-zero so systemd restarts us
            for exc in group_error.exceptions:
                log.error("worker_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            self._exit_code = EXIT_CRASH
            await self.sessions.end()
        await (http_stop or self.http.stop())
        if public_stop is not None:
            await public_stop
        elif self.public_http is not None:
            await self.public_http.stop()
        await self.rapidpro.close()
        log.info("worker_stopped", checkpoint=self.checkpoints.saved_seq, abandoned=self.sessions.abandoned,
                 exit_code=self._exit_code)
        return self._exit_code

    def _crashed(self, exc: BaseException) -> None:
        """A bug in a part of the active session: exit non-zero so systemd restarts us."""
        log.error("worker_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        self._exit_code = EXIT_CRASH
        self.stop()

    # ---- health ----------------------------------------------------------------------------

    async def _status_line(self) -> str:
        return status_line(await self.health())

    async def health(self) -> dict[str, Any]:
        return await self.health_document.build()

    async def readiness(self) -> list[str]:
        """Why this worker is not ready (empty when it is): for /readyz on both doors."""
        return await readiness_problems(
            self.medic, settings_loaded=lambda: self.settings.current is not None,
            feed_missing=lambda: self.follower is None and self.lease.role == ACTIVE)


async def run_worker(config: Config) -> int:
    worker = Worker(config)
    worker.install_signal_handlers()
    return await worker.run()

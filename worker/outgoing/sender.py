"""The outgoing-dispatch transition: sends a doc's sendable messages to RapidPro, exactly once.

Per message: claim it (create-only; on a 409 read the entry and decide, transitions/outgoing/dispatch.py),
POST, record the outcome in the ledger → then one write of all the doc's task changes. The order matters: the
claim exists before the POST, and the outcome is in the ledger before it is on the task, so a
crash anywhere leaves either nothing sent or a claim that is treated as in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from config.settings import Settings
from transitions.cht.phone import mask_phone
from transitions.outgoing.broadcasts import gateway_ref, ledger_ref, log_fields
from transitions.outgoing.dispatch import (
    Action,
    TaskUpdate,
    denied_update,
    ledger_action,
    not_sending_reason,
    projection,
)
from transitions.outgoing.sendable import is_denied, recipient_urn, sendable_messages
from worker.backoff import Backoff
from worker.couch.client import Accepted, CouchUnavailable, TransientError
from worker.identity import owner_is_dead
from worker.logs import get_logger
from worker.outgoing.ledger import Ledger
from worker.outgoing.task_writer import TaskWriter
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.credentials import Credential
from worker.rapidpro.errors import MessageRejected, NotActive, RapidProError, SendInDoubt

log = get_logger(__name__)


class ClaimContested(TransientError):
    """A message's ledger entry holds conflicting claims (a clustered CouchDB) and one may be a
    send under way: nobody sends it until that claim records an outcome or goes stale."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class SendingPaused(TransientError):
    """RapidPro cannot take messages now (bad token, wrong URL, workspace blocked, 5xx…).

    `resume` waits on the sending gate: the change is retried as soon as the gate may admit it,
    not after a backoff of its own that would keep growing through a long outage.
    """

    def __init__(self, reason: str, retry_after: float,
                 resume: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(f"sending paused: {reason}")
        self.retry_after = retry_after
        self.resume = resume


@dataclass
class OutgoingStats:
    sent: int = 0
    rejected: int = 0
    denied: int = 0
    in_doubt: int = 0
    reprojected: int = 0
    send_errors: int = 0


class Admission(Enum):
    OPEN = "open"  # not paused: send
    PROBE = "probe"  # the pause is over: this send finds out whether RapidPro takes messages again
    CLOSED = "closed"  # paused, or another send is probing: wait (`SendingGate.wait`)


class SendingGate:
    """Whether the worker is in charge of sending, and whether RapidPro is taking messages.

    A RapidPro fault comes back from every send in flight (up to CONCURRENCY) within moments: that
    is one failure episode, and it grows the backoff once. A failure of a send that started
    before the current pause was decided belongs to that episode: it may lengthen the pause (a
    longer Retry-After) but never grows the backoff or shortens the pause. When the pause is
    over one send goes through as a probe while the others wait; its success ends the pause for
    everyone at once (waiters are woken), its failure starts the next, longer pause.
    """

    # How long a waiter sleeps while a probe is out before looking again (the probe wakes it
    # earlier; this only bounds a wait whose wake-up was somehow missed).
    PROBE_WAIT = 5.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._backoff = Backoff(base=1.0, cap=60.0)
        self.paused_until: float | None = None
        # When the latest pause step was decided (kept after resuming: a send that began before
        # it and fails later is old news).
        self.paused_at: float | None = None
        self.pause_reason: str | None = None
        self.probing = False
        self.not_in_charge: str | None = "not started"
        self._logged_reason: str | None = None
        self._changed = asyncio.Event()
        self._episode_start: float | None = None

    def now(self) -> float:
        return self._clock()

    def set_not_in_charge(self, reason: str | None) -> None:
        """Log the reason once when it changes, not on every change."""
        self.not_in_charge = reason
        if reason != self._logged_reason:
            self._logged_reason = reason
            if reason is None:
                log.info("sending_enabled")
            else:
                log.warning("sending_disabled", reason=reason)

    # ---- before a send

    def admit(self) -> Admission:
        if self.paused_until is None:
            return Admission.OPEN
        if self.probing or self._clock() < self.paused_until:
            return Admission.CLOSED
        self.probing = True
        return Admission.PROBE

    def end_probe(self) -> None:
        """The probing caller is done without an answer either way (sent nothing, or in doubt):
        the next caller probes."""
        if self.probing:
            self.probing = False
            self._notify()

    async def wait(self) -> None:
        """Until the gate may admit someone: the pause is over, or the probe ended either way."""
        if self.paused_until is None or not (self.probing or self.remaining_pause() > 0):
            return
        event = self._changed
        timeout = self.PROBE_WAIT if self.probing else self.remaining_pause()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    # ---- after a send

    def failed(self, reason: str, retry_after: float | None = None, started: float | None = None) -> float:
        """RapidPro refused a send that proves nothing was created; returns the pause left (s).

        `started`: when that send began (this gate's clock); None counts as "just now".
        """
        now = self._clock()
        same_episode = (self.paused_at is not None and started is not None and started < self.paused_at)
        if same_episode:
            # Old news: this send was in flight when the pause was decided.
            # (Resumed meanwhile: a later send got through, which says more than this one.)
            until = None if retry_after is None else now + retry_after
            if until is not None and self.paused_until is not None and until > self.paused_until:
                self.paused_until = until
                log.info("sending_pause_extended", reason=reason, retry_in_s=round(retry_after, 1))
            return self.remaining_pause()
        if self.paused_until is None:
            self._episode_start = now
        delay = self._backoff.next_delay(retry_after)
        until = now + delay
        # Never shortened: an earlier, longer Retry-After still stands.
        self.paused_until = until if self.paused_until is None else max(self.paused_until, until)
        self.paused_at = now
        self.pause_reason = reason
        self.probing = False
        log.error("sending_paused", reason=reason, retry_in_s=round(self.paused_until - now, 1))
        self._notify()
        return self.remaining_pause()

    def succeeded(self, started: float | None = None) -> None:
        """RapidPro took a message. A send that began after the pause was decided ends it."""
        if self.paused_until is None:
            self._backoff.reset()
            return
        if started is not None and self.paused_at is not None and started < self.paused_at:
            return  # accepted before the failure that paused us: proves nothing about now
        log.info("sending_resumed", after=self.pause_reason,
                 paused_s=round(self._clock() - (self._episode_start or self._clock()), 1))
        self.paused_until = None
        self.pause_reason = None
        self.probing = False
        self._episode_start = None
        self._backoff.reset()
        self._notify()

    def remaining_pause(self) -> float:
        if self.paused_until is None:
            return 0.0
        return max(0.0, self.paused_until - self._clock())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class OutgoingSender:
    name = "outgoing_dispatch"

    def __init__(
        self,
        *,
        ledger: Ledger,
        client: RapidProClient,
        writer: TaskWriter,
        token: Credential,
        settings: Callable[[], Settings | None],
        service_name: str = "rapidpro",
        claim_timeout: float = 90.0,
        clock: Callable[[], float] = time.time,
        cht_sender: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._writer = writer
        self._token = token
        self._settings = settings
        self._service_name = service_name
        self._claim_timeout = claim_timeout
        self._clock = clock
        self._cht_sender = cht_sender  # why CHT's own sender may run: stand down (cht_sender.py)
        self.gate = SendingGate()
        self.stats = OutgoingStats()

    def matches(self, doc: Mapping[str, Any]) -> bool:
        return isinstance(doc.get("tasks"), list) or isinstance(doc.get("scheduled_tasks"), list)

    async def refresh_gate(self) -> bool:
        """Re-evaluate whether the worker is in charge; True when it may send."""
        settings = self._settings()
        try:
            token = await self._token.get()
        except CouchUnavailable:
            token = None
        self.gate.set_not_in_charge(not_sending_reason(settings, self._service_name, bool(token),
                                                       self._cht_sender()))
        return self.gate.not_in_charge is None

    async def apply(self, doc: dict[str, Any]) -> None:
        messages = sendable_messages(doc)
        if not messages or not await self.refresh_gate():
            return
        settings = self._settings()
        assert settings is not None and settings.rapidpro_url is not None
        token = await self._token.get()
        assert token is not None
        # No await between being admitted and the try below: a probe must always be released.
        admission = self._check_gate(self.gate.admit())

        updates: list[TaskUpdate] = []
        try:
            for i, message in enumerate(messages):
                still_probing = admission is Admission.PROBE and self.gate.probing
                if i and not still_probing:  # the gate may have closed while earlier ones went out
                    admission = self._check_gate(self.gate.admit())
                update = await self._dispatch_one(doc["_id"], message, settings, token)
                if update is not None:
                    updates.append(update)
        finally:
            if admission is Admission.PROBE:
                # Ended without RapidPro's verdict (nothing sent, or in doubt): another send probes.
                self.gate.end_probe()
            # Outcomes already in the ledger go onto the task even when a later message paused us.
            await self._writer.write(doc, updates)

    def _check_gate(self, admission: Admission) -> Admission:
        if admission is Admission.CLOSED:
            raise SendingPaused(self.gate.pause_reason or "", self.gate.remaining_pause(), self.gate.wait)
        return admission

    async def _dispatch_one(self, doc_id: str, message: Any, settings: Settings, token: str
                            ) -> TaskUpdate | None:
        denied = is_denied(message.to, settings.outgoing_deny_list, settings.outgoing_deny_shorter_than,
                           settings.outgoing_deny_with_alphas)
        urn = None if denied else recipient_urn(message.to, settings.default_country_code,
                                                settings.phone_validation)
        if urn is not None:
            # Claim first, without reading the ledger: nearly every message reaching this point is
            # new, and the create-only write's 409 says all a read would ("someone has it"). Only
            # then is the entry read, to see what that someone recorded.
            claim = await self._ledger.claim(message.uuid, doc_id, urn)
            if claim is not None:
                return await self._send(claim, message, urn, settings, token)
        # Read from a quorum with every conflicting revision (a clustered CouchDB), settled where
        # that is safe (transitions/outgoing/ledger_leaves.py).
        entry, contested = await self._ledger.current(message.uuid, self._claim_timeout)
        if contested:
            log.info("message_claim_contested", message_uuid=message.uuid)
            raise ClaimContested(f"message {message.uuid}: conflicting claims, one may be a send under way",
                                 self._claim_timeout / 4)
        if entry is None and urn is not None:
            # Gone between the 409 and the read (only a restore or an operator deletes entries):
            # leave it to the next change of the doc or the sweep rather than guess.
            log.warning("message_claim_vanished", message_uuid=message.uuid)
            return None
        owner_dead = entry is not None and owner_is_dead(entry.get("owner"))
        ours_unsent = entry is not None and self._ledger.is_unsent(entry)
        action = ledger_action(entry, self._clock(), self._claim_timeout, owner_dead, ours_unsent)
        if action is Action.WAIT:
            log.debug("message_claimed_elsewhere", message_uuid=message.uuid)
            return None
        if action is Action.REPROJECT:
            assert entry is not None
            self.stats.reprojected += 1
            log.info("message_reprojected", message_uuid=message.uuid, state=entry.get("state"),
                     **log_fields(ledger_ref(entry)))
            return projection(entry)
        if action is Action.MARK_IN_DOUBT:
            assert entry is not None
            entry = await self._ledger.record_in_doubt(entry, "claimed but no outcome was recorded "
                                                       "(the sender stopped during the request)")
            self.stats.in_doubt += 1
            log.error("message_in_doubt", message_uuid=message.uuid, reason="stale claim")
            return projection(entry)

        if urn is None:
            self.stats.denied += 1
            log.info("message_denied", message_uuid=message.uuid, to=mask_phone(message.to))
            return denied_update(message.uuid)

        # A released claim (nothing was created): taken over with its `_rev`, so one worker wins.
        claim = await self._ledger.claim(message.uuid, doc_id, urn, released=entry)
        if claim is None:
            log.info("message_claimed_elsewhere", message_uuid=message.uuid)
            return None
        return await self._send(claim, message, urn, settings, token)

    async def _send(self, claim: dict[str, Any], message: Any, urn: str, settings: Settings,
                    token: str) -> TaskUpdate | None:
        started = time.perf_counter()
        gate_started = self.gate.now()
        assert settings.rapidpro_url is not None
        try:
            broadcast = await self._client.send_broadcast(settings.rapidpro_url, token, urn, message.message)
        except MessageRejected as exc:
            self.gate.succeeded(gate_started)  # RapidPro answered about the message: it is up
            entry = await self._record(self._ledger.record_rejected, claim, exc.reason)
            self.stats.rejected += 1
            log.warning("message_rejected", message_uuid=message.uuid, error=exc.reason)
            return projection(entry)
        except SendInDoubt as exc:
            entry = await self._record(self._ledger.record_in_doubt, claim, str(exc))
            self.stats.in_doubt += 1
            log.error("message_in_doubt", message_uuid=message.uuid, error=str(exc))
            return projection(entry)
        except NotActive:
            # Deposed before the request left (worker/lease/keeper.py): nothing was sent, no pause.
            await self._record(self._ledger.release, claim, "not the active worker")
            raise
        except RapidProError as exc:
            # The answer proves nothing was created: release the claim and pause sending.
            self.stats.send_errors += 1
            await self._record(self._ledger.release, claim, str(exc))
            delay = self.gate.failed(f"{type(exc).__name__}: {exc}", exc.retry_after, gate_started)
            raise SendingPaused(str(exc), delay, self.gate.wait) from None
        self.gate.succeeded(gate_started)
        entry = await self._record(self._ledger.record_sent, claim, broadcast.id, broadcast.uuid,
                                   broadcast.status)
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        self.stats.sent += 1
        log.info("message_sent", message_uuid=message.uuid,
                 **log_fields(gateway_ref(broadcast.id, broadcast.uuid)),
                 to=mask_phone(urn.removeprefix("tel:")), duration_ms=duration_ms)
        return projection(entry)

    async def _record(self, record: Callable[..., Any], claim: dict[str, Any], *args: Any) -> dict[str, Any]:
        """Record an outcome; CouchDB briefly away must not turn a known outcome into a doubt."""
        backoff = Backoff(base=0.2, cap=5.0)
        deadline = time.monotonic() + 30
        while True:
            try:
                return await record(claim, *args)
            except (CouchUnavailable, Accepted):  # Accepted: not yet confirmed by a quorum
                if time.monotonic() > deadline:
                    raise  # the claim stays without outcome: in doubt later, never re-sent
                await asyncio.sleep(backoff.next_delay())

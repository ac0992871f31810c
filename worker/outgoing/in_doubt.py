"""In-doubt sends: looked up in RapidPro and resolved without an operator where RapidPro can tell
(decisions in transitions/outgoing/in_doubt.py), and the operator's command for the rest.

A round: read the claims without outcome from the ledger (view `unresolved`), take those due
(`IN_DOUBT_CHECK_AFTER` old), read their messages' texts from the CHT docs, list RapidPro's
broadcasts once per group of nearby windows (in the shared budget, after sends and before status
tracking), then per claim write the decision with the `_rev` read before the listing:

- found: the ledger records the broadcast as the outcome, the task goes `received-by-gateway`;
- resend: the ledger entry is released and the doc handed to the dispatcher, which claims and
  sends it like any message (so of several workers only one sends);
- operator: the entry says why, the task says so, `/healthz` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from transitions.cht.phone import mask_phone
from transitions.cht.timestamps import rapidpro_time
from transitions.outgoing.broadcasts import BroadcastKey, as_id, as_uuid, key_of, log_fields, refs_of
from transitions.outgoing.dispatch import FORWARDED_TO_GATEWAY, TaskUpdate, projection
from transitions.outgoing.in_doubt import (
    Decision,
    Kind,
    Listing,
    Window,
    claim_window,
    claimed_epoch,
    decide,
    is_due,
    is_unresolved,
    listing_failed_too_long,
    operator_refusal,
    plan_listings,
)
from transitions.outgoing.rapidpro_forms import workspace_country
from transitions.outgoing.sendable import find_task_message, sendable_messages
from worker.couch.client import CouchError, Database
from worker.feed.changes import Change
from worker.identity import owner_is_dead
from worker.logs import get_logger
from worker.outgoing.ledger import Ledger
from worker.outgoing.task_writer import TaskWriter
from worker.progress import Progress
from worker.rapidpro.budget import Priority
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.credentials import Credential
from worker.rapidpro.errors import RapidProError

log = get_logger(__name__)

MAX_PAGES = 400  # 100,000 broadcasts in one window: beyond that, give up this round
STALL_ROUNDS = 3  # intervals without a completed round that make a stall


@dataclass
class RoundResult:
    unresolved: int = 0
    waiting_operator: int = 0
    found: int = 0
    resent: int = 0
    operator: int = 0
    resolved: set[str] = field(default_factory=set)  # found or resent this round
    lookups_failed: int = 0  # RapidPro listings that failed (429, budget, errors): not complete
    marked: set[str] = field(default_factory=set)  # waiting for an operator from this round


def message_text(doc: Mapping[str, Any] | None, uuid: str) -> str | None:
    if not isinstance(doc, dict):
        return None
    found = find_task_message(doc, uuid)
    if found is None:
        return None
    for message in found[2].get("messages") or []:
        if isinstance(message, dict) and message.get("uuid") == uuid:
            text = message.get("message")
            return text if isinstance(text, str) else None
    return None


class InDoubtResolver:
    def __init__(
        self,
        *,
        ledger: Ledger,
        medic: Database,
        client: RapidProClient,
        token: Credential,
        settings: Callable[[], Settings | None],
        writer: TaskWriter,
        submit: Callable[[Change], Awaitable[None]],
        in_charge: Callable[[], Awaitable[bool]],
        rapidpro_timeout: float,
        check_after: float,
        margin: float,
        claim_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._medic = medic
        self._client = client
        self._token = token
        self._settings = settings
        self._writer = writer
        self._submit = submit
        self._in_charge = in_charge
        self._rapidpro_timeout = rapidpro_timeout
        self._check_after = check_after
        self._margin = margin
        self._claim_timeout = claim_timeout
        self._clock = clock
        self._failing_since: float | None = None
        # The workspace's country by RapidPro URL (workspace.json): RapidPro stores a local or
        # unprefixed number in E.164 of that country, and the lookup must compare that form.
        self._countries: dict[str, str | None] = {}
        self._wake = asyncio.Event()
        self.last: RoundResult | None = None
        self.totals: Counter[str] = Counter()  # since start: found, resent, operator
        self.last_error: str | None = None
        # Rounds that looked up every due claim (or had none due) complete; a few intervals
        # without one is a stall (/healthz, metrics, `check`), allowing a listing its budget
        # wait and its answer.
        self.progress = Progress(stall_after=STALL_ROUNDS * self.interval + 2 * rapidpro_timeout)

    @property
    def interval(self) -> float:
        # A due claim is looked up within 30 s of reaching IN_DOUBT_CHECK_AFTER (at most 15 s
        # between rounds, plus the listing itself).
        return max(0.5, min(15.0, self._check_after / 4))

    def trigger(self) -> None:
        self._wake.set()

    def health(self) -> dict[str, Any]:
        return self.progress.health(self._clock())

    async def run(self) -> None:
        self.progress.started(self._clock())
        try:
            await self._run_rounds()
        finally:
            self.progress.stopped()

    async def _run_rounds(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                result = await self.run_once()
                if not result.lookups_failed:
                    self.progress.completed(self._clock())
                self.last_error = None
            except (CouchError, RapidProError) as exc:
                self.last_error = str(exc)
                log.warning("in_doubt_round_failed", error=str(exc))
            except Exception as exc:  # a bug or a doc we did not foresee: log it, keep the daemon up
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("in_doubt_round_crashed", error=self.last_error, exc_info=True)

    async def run_once(self) -> RoundResult:
        result = RoundResult()
        await self._settle_conflicts()
        # An entry still conflicted is decided on once settled (a fresh claim among its leaves).
        entries = [e for e in await self._ledger.unresolved()
                   if isinstance(e.get("uuid"), str) and not e.get("_conflicts")]
        now = self._clock()
        dead = {e["uuid"]: owner_is_dead(e.get("owner")) for e in entries}
        open_entries = [e for e in entries if is_unresolved(e, now, self._claim_timeout, dead[e["uuid"]])]
        result.unresolved = len(open_entries)
        due = [e for e in open_entries
               if is_due(e, now, self._check_after, self._claim_timeout, dead[e["uuid"]])]
        if due and await self._in_charge():
            await self._resolve(due, now, result)
        # What is left waiting for an operator after this round's decisions.
        waiting = {e["uuid"] for e in open_entries if e.get("needs_operator")}
        result.waiting_operator = len((waiting - result.resolved) | result.marked)
        self.totals.update(found=result.found, resent=result.resent, operator=result.operator)
        self.last = result
        return result

    async def _settle_conflicts(self) -> None:
        """Entries with conflicting revisions (a clustered CouchDB) made one again where that is
        safe (transitions/outgoing/ledger_leaves.py), so none is left conflicted once the cluster is whole."""
        if not await self._in_charge():
            return
        for uuid in await self._ledger.conflicted():
            try:
                await self._ledger.current(uuid, self._claim_timeout)
            except CouchError as exc:
                log.warning("ledger_conflict_not_resolved", message_uuid=uuid, error=str(exc))

    async def _resolve(self, due: list[dict[str, Any]], now: float, result: RoundResult) -> None:
        settings = self._settings()
        token = await self._token.get()
        if settings is None or not settings.rapidpro_url or not token:
            return
        docs = await self._docs({e["doc_id"] for e in due if isinstance(e.get("doc_id"), str)})
        windows: dict[str, Window] = {}
        by_uuid = {e["uuid"]: e for e in due}
        for entry in due:
            claimed = claimed_epoch(entry)
            text = message_text(docs.get(entry.get("doc_id", "")), entry["uuid"])
            if claimed is None or text is None or not isinstance(entry.get("urn"), str):
                # Nothing to look for: the operator decides (decide() says why).
                decision = decide(urn=str(entry.get("urn")), text=text, claimed_at=claimed,
                                  listing=Listing(Window(0, 0), 0, False), recorded=(),
                                  rapidpro_timeout=self._rapidpro_timeout, margin=self._margin)
                await self._act(entry, decision, docs, result)
                continue
            windows[entry["uuid"]] = claim_window(claimed, self._rapidpro_timeout, self._margin)

        for window, uuids in plan_listings(windows):
            try:
                country = await self._country(settings.rapidpro_url, token)
                listing = await self._list(settings.rapidpro_url, token, window)
            except RapidProError as exc:
                if self._failing_since is None:
                    self._failing_since = now
                result.lookups_failed += 1
                log.warning("in_doubt_lookup_failed", error=str(exc), claims=len(uuids))
                if listing_failed_too_long(self._failing_since, now):
                    for uuid in uuids:
                        # A stable reason: the entry is marked (and logged) once, not every round.
                        reason = "RapidPro's broadcast listing has failed for over a day"
                        await self._act(by_uuid[uuid], Decision(Kind.OPERATOR, reason=reason), docs, result,
                                        retry=True)
                continue
            self._failing_since = None
            keys = [key for b in listing.broadcasts for key in refs_of(b)]
            recorded = set(await self._ledger.outcomes_of(keys))
            for uuid in uuids:
                entry = by_uuid[uuid]
                decision = decide(urn=entry["urn"], text=message_text(docs.get(entry["doc_id"]), uuid),
                                  claimed_at=claimed_epoch(entry), listing=listing, recorded=recorded,
                                  rapidpro_timeout=self._rapidpro_timeout, margin=self._margin,
                                  country=country)
                if await self._act(entry, decision, docs, result) and decision.broadcast is not None:
                    recorded.update(refs_of(decision.broadcast))  # not also another claim's outcome

    async def _country(self, base_url: str, token: str) -> str | None:
        """The workspace's country (ISO alpha-2, None when it has none), read once per URL."""
        if base_url not in self._countries:
            info = await self._client.get_workspace(base_url, token, priority=Priority.IN_DOUBT)
            self._countries[base_url] = workspace_country(info)
        return self._countries[base_url]

    async def _list(self, base_url: str, token: str, window: Window) -> Listing:
        started = self._clock()
        results: list[dict[str, Any]] = []
        page = await self._client.list_broadcasts(base_url, token, after=rapidpro_time(window.start),
                                                  before=rapidpro_time(window.end),
                                                  priority=Priority.IN_DOUBT)
        results.extend(page.results)
        pages = 1
        while page.next is not None and pages < MAX_PAGES:
            page = await self._client.list_broadcasts(base_url, token, cursor_url=page.next,
                                                      priority=Priority.IN_DOUBT)
            results.extend(page.results)
            pages += 1
        log.debug("in_doubt_listing", broadcasts=len(results), pages=pages)
        return Listing(window, started, page.next is None, results)

    async def _docs(self, doc_ids: set[str]) -> dict[str, dict[str, Any]]:
        if not doc_ids:
            return {}
        rows = (await self._medic.all_docs(keys=sorted(doc_ids), include_docs=True)).get("rows", [])
        return {row["id"]: row["doc"] for row in rows if isinstance(row.get("doc"), dict)}

    async def _act(self, entry: dict[str, Any], decision: Decision, docs: dict[str, dict[str, Any]],
                   result: RoundResult, retry: bool = False) -> bool:
        """Write one decision; False when the entry changed meanwhile (decided again next round)."""
        uuid = entry["uuid"]
        doc = docs.get(entry.get("doc_id", ""))
        if decision.kind is Kind.WAIT:
            log.debug("in_doubt_waiting", message_uuid=uuid, reason=decision.reason)
            return False
        if decision.kind is Kind.RESEND and (doc is None
                                             or uuid not in {m.uuid for m in sendable_messages(doc)}):
            found_task = None if doc is None else find_task_message(doc, uuid)
            state = None if found_task is None else found_task[2].get("state")
            decision = Decision(Kind.OPERATOR, reason=f"RapidPro has no broadcast for it, but its task is no "
                                                      f"longer waiting to be sent (state {state!r})")
        if decision.kind is Kind.FOUND:
            assert decision.broadcast is not None
            found = key_of(decision.broadcast)
            assert found is not None
            status = decision.broadcast.get("status")
            updated = await self._ledger.resolve_sent(
                entry, as_id(decision.broadcast.get("id")), as_uuid(decision.broadcast.get("uuid")),
                status if isinstance(status, str) else None,
                self._ledger.resolution("found", **log_fields(found)))
            if updated is None:
                return False
            result.found += 1
            result.resolved.add(uuid)
            log.info("in_doubt_resolved", resolution="found", message_uuid=uuid, **log_fields(found),
                     doc_id=entry.get("doc_id"))
            await self._write_task(doc, updated)
            return True
        if decision.kind is Kind.RESEND:
            assert doc is not None
            updated = await self._ledger.release_for_resend(
                entry, "in doubt, but RapidPro has no broadcast for it: sent again",
                self._ledger.resolution("resent"))
            if updated is None:
                return False
            result.resent += 1
            result.resolved.add(uuid)
            log.info("in_doubt_resolved", resolution="resent", message_uuid=uuid, doc_id=entry.get("doc_id"))
            # The dispatcher claims it anew (one worker wins) and sends it.
            await self._submit(Change(seq=None, doc_id=doc["_id"], doc=doc, recheck=True))
            return True
        # OPERATOR
        reason = decision.reason or "RapidPro cannot tell"
        waiting = entry.get("needs_operator")
        if isinstance(waiting, Mapping) and waiting.get("reason") == reason:
            result.marked.add(uuid)
            return True
        updated = await self._ledger.needs_operator(entry, reason, retry=retry)
        if updated is None:
            return False
        result.operator += 1
        result.marked.add(uuid)
        log.error("in_doubt_needs_operator", message_uuid=uuid, doc_id=entry.get("doc_id"), reason=reason)
        await self._write_task(doc, updated)
        return True

    async def _write_task(self, doc: dict[str, Any] | None, entry: dict[str, Any]) -> None:
        update = projection(entry)
        if doc is None or update is None:
            return
        try:
            await self._writer.write(doc, [update])
        except CouchError as exc:
            # The ledger holds the decision; the next pass over the doc re-projects it.
            log.warning("in_doubt_task_write_failed", doc_id=doc.get("_id"), error=str(exc))


# ---------------------------------------------------------------------- the operator's command


class OperatorError(Exception):
    """A resolve the command refuses; str() is the message for the operator."""


def describe(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One line of `cht-rapidpro-worker in-doubt`."""
    waiting = entry.get("needs_operator")
    reason = waiting.get("reason") if isinstance(waiting, Mapping) else None
    urn = entry.get("urn")
    return {
        "message_uuid": entry.get("uuid"),
        "doc_id": entry.get("doc_id"),
        "to": mask_phone(urn.removeprefix("tel:")) if isinstance(urn, str) else None,
        "claimed_at": entry.get("claimed_at"),
        "reason": reason or entry.get("error") or "claimed but no outcome was recorded",
        "waiting_operator": reason is not None,
    }


async def list_in_doubt(ledger: Ledger, claim_timeout: float, every: bool,
                        clock: Callable[[], float] = time.time) -> list[dict[str, Any]]:
    now = clock()
    lines = []
    for entry in await ledger.unresolved():
        if not is_unresolved(entry, now, claim_timeout, owner_is_dead(entry.get("owner"))):
            continue
        if every or entry.get("needs_operator"):
            lines.append(describe(entry))
    return lines


async def operator_resolve(ledger: Ledger, medic: Database, uuid: str, *, claim_timeout: float,
                           sent: BroadcastKey | None = None, resend: bool = False, failed: str | None = None,
                           who: str | None = None, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Record the operator's decision in the ledger and on the task, as the daemon would have."""
    who = who or _os_user()
    entry = await ledger.get(uuid)
    refusal = operator_refusal(entry, clock(), claim_timeout,
                               entry is not None and owner_is_dead(entry.get("owner")))
    if refusal is not None:
        raise OperatorError(f"message {uuid} cannot be resolved: {refusal}")
    assert entry is not None
    if sent is not None:
        holders = await ledger.outcomes_of([sent])
        if holders.get(sent) not in (None, uuid):
            raise OperatorError(f"broadcast {sent} is already the outcome of message {holders[sent]}")
        resolution = ledger.resolution("operator", by=who, decision="sent", **log_fields(sent))
        updated = await ledger.resolve_sent(entry, as_id(sent), as_uuid(sent), None, resolution)
        task_update = None if updated is None else projection(updated)
    elif resend:
        resolution = ledger.resolution("operator", by=who, decision="resend")
        updated = await ledger.release_for_resend(entry, f"in doubt; resend decided by {who}", resolution)
        # A change on the doc makes the running daemon (or the next start) send it.
        task_update = TaskUpdate(uuid, FORWARDED_TO_GATEWAY, f"Resend decided by {who}; waiting to be sent")
    else:
        assert failed is not None
        resolution = ledger.resolution("operator", by=who, decision="failed")
        updated = await ledger.resolve_failed(entry, failed, resolution)
        task_update = None if updated is None else projection(updated)
    if updated is None:
        raise OperatorError(f"message {uuid} changed while being resolved (the daemon may have just "
                            "resolved it); run `cht-rapidpro-worker in-doubt --all` and try again")
    log.info("in_doubt_resolved", resolution="operator", decision=resolution["decision"], message_uuid=uuid,
             doc_id=entry.get("doc_id"), **log_fields(sent), by=who)
    doc = await medic.get_or_none(entry["doc_id"]) if isinstance(entry.get("doc_id"), str) else None
    task_written = False
    if doc is not None and task_update is not None:
        task_written = await TaskWriter(medic).write(doc, [task_update])
    return {"message_uuid": uuid, "doc_id": entry.get("doc_id"), "decision": resolution["decision"],
            "broadcast_id": sent, "by": who, "at": resolution["at"], "task_updated": task_written}


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"uid {os.getuid()}"



"""The lease that makes one of several workers the active one (rules in transitions/lease/rules.py).

`LeaseKeeper.run` reads the lease doc every `renew_interval`: the holder renews it with its
`_rev`, a standby takes it over (compare-and-swap on `_rev`, generation + 1) once it has lapsed.
The app is told of role changes through two plain callbacks, called on the event loop:
`on_active(generation)` and `on_standby(reason)`. A holder that cannot renew in time is made a
standby by a timer of its own, before any standby can deem the lease lapsed.

`may_act()` is the guard everything that talks to RapidPro or moves the feed consults right
before acting; `FencedDatabase` applies it to CouchDB writes (status tracking's), tagged with the
generation of the session that makes them.

On a clustered CouchDB only a write a quorum of copies took (201) takes or keeps the lease: a
take-over stored on fewer (202, e.g. through a node cut off from the others) is not a take-over,
and a holder whose renewal is only stored on fewer steps down at once. The lease is read from a
quorum with every conflicting revision, which `pick` (transitions/lease/rules.py) resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from transitions.cht.timestamps import cht_time
from transitions.lease.rules import (
    LEASE_DOC_ID,
    Decision,
    Lease,
    act_until,
    decide,
    lease_doc,
    lease_from_doc,
    pick,
    released_doc,
)
from worker.couch.client import Accepted, Conflict, CouchError, CouchServer, Database
from worker.identity import HOSTNAME, owner_is_dead
from worker.logs import get_logger

log = get_logger(__name__)

ACTIVE = "active"
STANDBY = "standby"
STANDBY_POLL = 1.0  # seconds between a standby's reads of the lease, at most


class Fenced(CouchError):
    """A write refused because this worker no longer holds the lease of the session making it."""


class LeaseKeeper:
    def __init__(
        self,
        db: Database,
        instance_id: str,
        *,
        ttl: float,
        renew_interval: float,
        request_timeout: float,
        on_active: Callable[[int], None] | None = None,
        on_standby: Callable[[str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.instance_id = instance_id
        self.ttl = ttl
        self.renew_interval = renew_interval
        self._request_timeout = min(request_timeout, renew_interval)
        self.on_active = on_active
        self.on_standby = on_standby
        self._monotonic = monotonic
        self._clock = clock
        self.role = STANDBY
        self.generation: int | None = None  # ours while active
        self.lease: Lease | None = None  # as last read or written
        self.last_error: str | None = None
        self.acquired = 0  # take-overs by this process (metrics)
        self._act_until = 0.0
        self._seen_rev: str | None = None
        self._seen_since = 0.0
        self._poke = asyncio.Event()
        self._stopped = False
        self._process = uuid.uuid4().hex  # tells this run from another under the same instance id

    # ---- what the rest of the worker asks -----------------------------------------------------

    def may_act(self, generation: int | None = None) -> bool:
        """True while this worker holds the lease (of `generation`, when given) and its last
        renewal is recent enough that no standby can have deemed it lapsed."""
        if self.role != ACTIVE or self._monotonic() >= self._act_until:
            return False
        return generation is None or generation == self.generation

    @property
    def holder(self) -> str | None:
        return self.lease.holder if self.lease else None

    def health(self) -> dict[str, Any]:
        lease = self.lease
        return {
            "instance_id": self.instance_id,
            "generation": lease.generation if lease else None,
            "expires_at": cht_time(lease.expires_at) if lease and lease.holder else None,
            "ttl_s": self.ttl,
            "last_error": self.last_error,
        }

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        watch = asyncio.create_task(self._watch_expiry(), name="lease-expiry")
        try:
            while True:
                try:
                    await self.tick()
                except Exception as exc:  # a bug: log it, keep trying (the expiry timer still runs)
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("lease_tick_crashed", error=self.last_error, exc_info=True)
                # A standby reads more often than a holder renews, to notice a release at once.
                await asyncio.sleep(self.renew_interval if self.role == ACTIVE
                                    else min(self.renew_interval, STANDBY_POLL))
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def tick(self) -> None:
        """Read the lease once and act on it: renew, take over, or stay a standby."""
        if self._stopped:
            return
        read, lease = await self._read()
        if not read:
            return
        seen_for = self._monotonic() - self._seen_since
        holder_dead = (lease is not None and lease.holder is not None and lease.host == HOSTNAME
                       and lease.pid is not None and owner_is_dead(f"{lease.host}:{lease.pid}"))
        same_process = lease is not None and lease.process == self._process
        decision = decide(lease, self.instance_id, seen_for=seen_for, ttl=self.ttl, holder_dead=holder_dead,
                          same_process=same_process)
        if decision is Decision.RENEW and self.role == ACTIVE:
            assert lease is not None
            if lease.generation != self.generation:
                log.error("lease_generation_mismatch", instance_id=self.instance_id,
                          generation=lease.generation, ours=self.generation)
                self._become_standby("the lease names another generation")
                return
            await self._write(lease, take=False)
        elif decision is Decision.STANDBY:
            if self.role == ACTIVE:
                self._become_standby(f"the lease is held by {lease.holder if lease else None}")
        elif not self._stopped:
            # TAKE, or RENEW of a lease this process wrote while it is not active (it stepped
            # down): a new session, so a new generation.
            await self._write(lease, take=True, dead_holder=holder_dead)

    async def _write(self, lease: Lease | None, *, take: bool, dead_holder: bool = False) -> None:
        sent_at = self._monotonic()
        doc = lease_doc(lease, self.instance_id, now=self._clock(), ttl=self.ttl, take=take,
                        host=HOSTNAME, pid=os.getpid(), process=self._process, nonce=uuid.uuid4().hex)
        try:
            async with asyncio.timeout(self._request_timeout):
                rev = await self._db.write(doc)
        except Accepted:
            # Stored on too few copies: neither a take-over nor a renewal. A holder steps down
            # now (it may be cut off with a minority of the nodes); the leaf it left is settled
            # by the next read.
            self.last_error = "lease write stored on fewer copies than a quorum"
            log.warning("lease_write_not_confirmed", take=take, instance_id=self.instance_id)
            if not take:
                self._become_standby("a renewal was stored on fewer CouchDB copies than a quorum")
            return
        except Conflict:
            # Someone wrote it since we read it: a take-over (we lost), or our own earlier write
            # that timed out here but landed. The next read tells; until then, no extension.
            self.last_error = "lease write conflicted"
            log.info("lease_write_conflict", take=take)
            await self._after_conflict()
            return
        except (CouchError, TimeoutError) as exc:
            self._failed("take" if take else "renew", exc)
            return
        written = lease_from_doc({**doc, "_rev": rev})
        assert written is not None
        self.lease = written
        self._observe(written)
        self.last_error = None
        self._act_until = act_until(sent_at, self.ttl)
        self._poke.set()
        if take:
            previous = lease.holder if lease else None
            self.acquired += 1
            log.info("lease_acquired", instance_id=self.instance_id, generation=written.generation,
                     previous_holder=previous, previous_released=lease is None or lease.released,
                     previous_dead=dead_holder)
            self.role = ACTIVE
            self.generation = written.generation
            if self.on_active is not None:
                self.on_active(written.generation)

    async def _read(self) -> tuple[bool, Lease | None]:
        """The lease as CouchDB holds it now, noted as seen; (False, None) when the read failed
        (logged)."""
        try:
            async with asyncio.timeout(self._request_timeout):
                docs = await self._db.leaves(LEASE_DOC_ID)
        except (CouchError, TimeoutError) as exc:
            self._failed("read", exc)
            return False, None
        leaves = [lease for lease in (lease_from_doc(doc) for doc in docs) if lease is not None]
        my_rev = self.lease.rev if self.lease is not None else None
        lease, losers = pick(leaves, process=self._process, active=self.role == ACTIVE, my_rev=my_rev)
        if losers:
            await self._delete(losers)
        self._observe(lease)
        return True, lease

    async def _delete(self, losers: list[Lease]) -> None:
        """Conflicting lease revisions that decide nothing, deleted (best effort: the next read
        tries again)."""
        docs = [{"_id": LEASE_DOC_ID, "_rev": leaf.rev, "_deleted": True} for leaf in losers if leaf.rev]
        try:
            async with asyncio.timeout(self._request_timeout):
                await self._db.bulk_docs(docs, quorum=True)
            log.info("lease_conflict_resolved", deleted=len(docs), instance_id=self.instance_id)
        except (CouchError, TimeoutError) as exc:
            self._failed("delete conflicts", exc)

    async def _after_conflict(self) -> None:
        read, current = await self._read()
        if not read:
            return
        if (self.role == ACTIVE and current is not None and current.holder == self.instance_id
                and current.generation == self.generation):
            self.lease = current  # our own write landed after all: renew on top of it next time
            return
        if self.role == ACTIVE:
            self._become_standby(f"the lease was taken over by {current.holder if current else None}")

    def _observe(self, lease: Lease | None) -> None:
        self.lease = lease
        rev = lease.rev if lease else None
        if rev != self._seen_rev:
            # Seen from now on: the holder sent this revision before we could read it.
            self._seen_rev = rev
            self._seen_since = self._monotonic()

    def _failed(self, what: str, exc: BaseException) -> None:
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"[:300]
        log.warning("lease_call_failed", during=what, error=str(exc)[:200] or type(exc).__name__,
                    role=self.role)

    async def _watch_expiry(self) -> None:
        """Steps down the moment the last renewal is too old, whatever the renewals are doing."""
        while True:
            self._poke.clear()
            wait: float | None = None
            if self.role == ACTIVE:
                wait = self._act_until - self._monotonic()
                if wait <= 0:
                    self._become_standby("the lease could not be renewed in time")
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._poke.wait()

    def _become_standby(self, reason: str, *, voluntary: bool = False) -> None:
        if self.role != ACTIVE:
            return
        log.log(logging.INFO if voluntary else logging.WARNING, "lease_lost", instance_id=self.instance_id,
                generation=self.generation, reason=reason)
        self.role = STANDBY
        self.generation = None
        self._act_until = 0.0
        self._poke.set()
        if self.on_standby is not None:
            self.on_standby(reason)

    # ---- shutdown ----------------------------------------------------------------------------

    async def release(self, timeout: float) -> bool:
        """Give the lease up (SIGTERM): a standby takes over at its next read, not after the TTL.
        Only a lease we still hold is released, with its `_rev`; True when it was."""
        self._stopped = True
        was_active = self.role == ACTIVE
        lease = self.lease
        self._become_standby("shutting down", voluntary=True)
        if not was_active or lease is None or lease.holder != self.instance_id:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._db.write(released_doc(lease, now=self._clock()))
        except Accepted:
            log.warning("lease_release_not_confirmed", generation=lease.generation)
            return False
        except (CouchError, TimeoutError) as exc:
            log.warning("lease_release_failed", error=str(exc)[:200] or type(exc).__name__)
            return False
        log.info("lease_released", instance_id=self.instance_id, generation=lease.generation)
        return True


class FencedDatabase(Database):
    """A handle on a database whose writes — every one, through whichever method — are refused
    once the session that makes them has lost the lease: `allowed()` is consulted right before
    each write (status tracking's writes, so a deposed holder's late round cannot overwrite what
    the new holder learned). The check itself is `Database`'s fence."""

    def __init__(self, server: CouchServer, name: str, allowed: Callable[[], bool]) -> None:
        def fence() -> None:
            if not allowed():
                raise Fenced("not written: this worker no longer holds the lease")

        super().__init__(server, name, fence=fence)

"""The active worker's lease: pure rules (who holds it, has it lapsed, may I take it), given times.

Several workers on one CHT agree on one *active* worker through a doc in the worker db. The doc
names the holder, a generation (bumped at every take-over, never at a renewal) and an expiry
(wall clock, for people and for `/healthz`). Writes go with the doc's `_rev`, so a renewal and a
take-over racing each other cannot both win.

Wall clocks of two hosts may differ, so no worker trusts another's `expires_at`. Instead:

- a *standby* deems the lease lapsed when it has seen the same `_rev` for `ttl` seconds of its own
  monotonic clock (it first saw that `_rev` after the holder had sent it);
- the *holder* acts only until `ttl - margin` seconds after it *sent* its last successful renewal
  (monotonic clock), so it has stopped before any standby can deem the lease lapsed, even while
  CouchDB does not answer it or the process was paused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

LEASE_DOC_ID = "lease:active-worker"
LEASE_TYPE = "lease"


@dataclass(frozen=True)
class Lease:
    holder: str | None  # instance id; None once released
    generation: int
    expires_at: float  # epoch seconds (informational: see the module docstring)
    rev: str | None
    host: str | None = None
    pid: int | None = None
    process: str | None = None  # a random token per process run: which process wrote it

    @property
    def released(self) -> bool:
        return self.holder is None


def lease_from_doc(doc: Any) -> Lease | None:
    """The lease in a doc read from CouchDB; None for no doc. A malformed doc reads as released
    (generation kept when it can be), so it can be taken over rather than block every worker."""
    if not isinstance(doc, dict):
        return None
    holder = doc.get("holder")
    generation = doc.get("generation")
    expires_at = doc.get("expires_at_epoch")
    pid = doc.get("pid")
    return Lease(
        holder=holder if isinstance(holder, str) and holder else None,
        generation=generation if isinstance(generation, int) and not isinstance(generation, bool) else 0,
        expires_at=float(expires_at) if isinstance(expires_at, int | float) else 0.0,
        rev=doc.get("_rev") if isinstance(doc.get("_rev"), str) else None,
        host=doc.get("host") if isinstance(doc.get("host"), str) else None,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        process=doc.get("process") if isinstance(doc.get("process"), str) else None,
    )


class Decision(enum.Enum):
    RENEW = "renew"  # mine: write it again with its _rev
    TAKE = "take"  # free, released or lapsed: take it over with its _rev (or create it)
    STANDBY = "standby"  # another worker holds it


def decide(lease: Lease | None, me: str, *, seen_for: float, ttl: float,
           holder_dead: bool = False, same_process: bool = False) -> Decision:
    """What a worker does with the lease it just read.

    `seen_for`: how long (own monotonic clock) this worker has seen the lease at this very `_rev`.
    `holder_dead`: the holder was a process on this host that no longer exists (nothing of it
    can still act, so there is no need to wait out the TTL).
    `same_process`: the lease was written by this very process. A lease under our instance id
    written by another process (a restart, or a second process given the same INSTANCE_ID) is
    treated as anyone else's: it may still act.
    """
    if lease is None or lease.released:
        return Decision.TAKE
    if lease.holder == me and same_process:
        return Decision.RENEW
    if holder_dead or seen_for >= ttl:
        return Decision.TAKE
    return Decision.STANDBY


def lease_doc(lease: Lease | None, me: str, *, now: float, ttl: float, take: bool,
              host: str | None = None, pid: int | None = None, process: str | None = None,
              nonce: str | None = None) -> dict[str, Any]:
    """The doc to write: a renewal keeps the generation, a take-over bumps it. `nonce` keeps two
    writers' revisions apart on a cluster (identical bodies would make one revision)."""
    generation = (lease.generation if lease else 0) + (1 if take else 0)
    doc: dict[str, Any] = {
        "_id": LEASE_DOC_ID, "type": LEASE_TYPE, "holder": me, "generation": generation,
        "expires_at_epoch": now + ttl, "renewed_at_epoch": now, "ttl_s": ttl, "host": host, "pid": pid,
        "process": process, "nonce": nonce,
    }
    if lease is not None and lease.rev:
        doc["_rev"] = lease.rev
    return doc


def released_doc(lease: Lease, *, now: float) -> dict[str, Any]:
    """Giving the lease up at shutdown: the generation stays, so the next holder bumps it."""
    doc: dict[str, Any] = {"_id": LEASE_DOC_ID, "type": LEASE_TYPE, "holder": None,
                           "generation": lease.generation, "expires_at_epoch": now,
                           "released_by": lease.holder}
    if lease.rev:
        doc["_rev"] = lease.rev
    return doc


def stop_margin(ttl: float) -> float:
    """How long before a standby could deem the lease lapsed the holder stops acting: room for
    cancelling its in-flight work and for the two clocks running at slightly different rates."""
    return ttl / 4


def act_until(renew_sent_at: float, ttl: float) -> float:
    """Monotonic time until which a holder may act after a renewal it sent at `renew_sent_at`."""
    return renew_sent_at + ttl - stop_margin(ttl)


def _depth(lease: Lease) -> int:
    head = (lease.rev or "0-").split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def pick(leaves: list[Lease], *, process: str, active: bool, my_rev: str | None
         ) -> tuple[Lease | None, list[Lease]]:
    """The lease among conflicting revisions (a clustered CouchDB), and the leaves to delete.

    Only a write CouchDB answered 201 (a quorum of copies) makes or keeps a holder, and no two
    writers get a quorum for writes on the same parent. So: a holder whose last confirmed revision
    is still a leaf holds the lease, and every other leaf is a write that reached too few copies
    (deleted). A standby never builds on its own unconfirmed leaves (deleted, unless nothing else
    is left); among the others it follows the one renewed most (deepest), then the newest
    generation, then the highest `_rev`, as every reader does, and waits out the TTL on it.
    """
    if not leaves:
        return None, []
    if len(leaves) == 1:
        return leaves[0], []
    if active and my_rev is not None:
        mine = next((leaf for leaf in leaves if leaf.rev == my_rev), None)
        if mine is not None:
            return mine, [leaf for leaf in leaves if leaf is not mine]
    own = [leaf for leaf in leaves if leaf.process == process]
    others = [leaf for leaf in leaves if leaf.process != process]
    pool = others or own
    winner = max(pool, key=lambda leaf: (_depth(leaf), leaf.generation, leaf.rev or ""))
    return winner, [leaf for leaf in own if leaf is not winner]

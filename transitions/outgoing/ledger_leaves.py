"""A ledger entry with conflicting revisions, resolved (pure).

On a clustered CouchDB two writers of one entry can both leave a revision: a claim answered 202
(stored on too few copies) beside the claim that won its quorum, or an outcome recorded beside a
stale claim. Only a writer told 201 for its claim ever sends (worker/outgoing/ledger.py), so the
question here is what the entry *means* once several leaves exist, and whether they can safely be
merged into one:

- a leaf that records RapidPro's outcome (sent, rejected) is the answer: the others are deleted;
- a fresh claim of someone else may be a send under way: nobody touches the entry (wait);
- otherwise the leaves merge into one: released when every leaf is known to have sent nothing
  (released entries, and claims this process wrote but was never told it won), in doubt when any
  leaf is a claim without outcome whose writer may have sent — then RapidPro is asked first.

Every writer puts its instance and a nonce in the entry (`writer`), so two writers' revisions never
collapse into one identical revision, and a process can recognise the claims it never sent on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transitions.outgoing.broadcasts import ledger_ref
from transitions.outgoing.dispatch import CLAIMED, IN_DOUBT, REJECTED, RELEASED, SENT


class Merge(enum.Enum):
    NONE = "none"  # one leaf, or an outcome: use `entry` as it is
    WAIT = "wait"  # a fresh claim of someone else among the leaves: do nothing now
    RELEASED = "released"  # no leaf sent anything: the merged entry is free to claim
    IN_DOUBT = "in_doubt"  # some leaf may have sent: the merged entry is in doubt


@dataclass(frozen=True)
class Resolution:
    entry: dict[str, Any] | None  # the revision that stands for the message (None: no entry)
    losers: list[dict[str, Any]] = field(default_factory=list)  # leaves to delete
    merge: Merge = Merge.NONE
    double_sent: bool = False  # two leaves name different broadcasts: RapidPro sent it twice


def writer_nonce(entry: Mapping[str, Any]) -> str | None:
    writer = entry.get("writer")
    nonce = writer.get("nonce") if isinstance(writer, Mapping) else None
    return nonce if isinstance(nonce, str) else None


def _outcome_rank(leaf: Mapping[str, Any]) -> tuple[int, int, str, str]:
    # A broadcast RapidPro created outranks a rejection; then the lowest broadcast id (a broadcast
    # known by its uuid alone after those), then the rev (only so that every reader picks the same one).
    broadcast = ledger_ref(leaf)
    number = broadcast if isinstance(broadcast, int) else 2**62
    return (0 if leaf.get("state") == SENT else 1, number, str(broadcast or ""), str(leaf.get("_rev")))


def resolve(leaves: Sequence[dict[str, Any]], *, unsent: Collection[str], now: float, claim_timeout: float,
            owner_dead: Callable[[Any], bool]) -> Resolution:
    """`leaves`: CouchDB's winner first. `unsent`: nonces of claims this process wrote and was
    never told it won (so it never sent on them)."""
    if not leaves:
        return Resolution(None)
    if len(leaves) == 1:
        return Resolution(leaves[0])
    outcomes = sorted((leaf for leaf in leaves if leaf.get("state") in (SENT, REJECTED)), key=_outcome_rank)
    if outcomes:
        best = outcomes[0]
        broadcasts = {ledger_ref(leaf) for leaf in outcomes if leaf.get("state") == SENT}
        return Resolution(best, [leaf for leaf in leaves if leaf is not best], Merge.NONE,
                          double_sent=len(broadcasts) > 1)
    may_have_sent = False
    for leaf in leaves:
        state = leaf.get("state")
        if state == RELEASED or writer_nonce(leaf) in unsent:
            continue  # known to have sent nothing
        if state == CLAIMED:
            claimed_at = leaf.get("claimed_at_epoch")
            fresh = isinstance(claimed_at, int | float) and now - claimed_at < claim_timeout
            if fresh and not owner_dead(leaf.get("owner")):
                return Resolution(leaves[0], merge=Merge.WAIT)
        may_have_sent = True  # a stale claim, or one already in doubt
    merge = Merge.IN_DOUBT if may_have_sent else Merge.RELEASED
    return Resolution(leaves[0], list(leaves[1:]), merge)


def merged_entry(resolution: Resolution, now_iso: str) -> dict[str, Any]:
    """The one revision that replaces the leaves (written on CouchDB's winner, `_rev` kept), with
    every leaf's claim kept in `history`."""
    assert resolution.entry is not None and resolution.merge in (Merge.RELEASED, Merge.IN_DOUBT)
    winner = resolution.entry
    history = list(winner.get("history") or [])
    for leaf in (winner, *resolution.losers):
        history.append({k: leaf.get(k) for k in ("claimed_at", "owner", "state", "error", "attempts")}
                       | {"merged_at": now_iso})
    merged = {**winner, "history": history}
    if resolution.merge is Merge.RELEASED:
        merged.update(state=RELEASED, error="conflicting claims merged: none had sent")
    else:
        merged.update(state=IN_DOUBT, error="conflicting claims merged: one may have sent")
    return merged

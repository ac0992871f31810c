"""Resolving in-doubt sends (pure): which claims to look up, which broadcasts could be theirs,
and what to do about them.

A claim without an outcome (the worker died mid-POST, the answer was lost, RapidPro committed and
hung) may or may not have created a broadcast. RapidPro has no idempotency key, but it lists its
broadcasts (`GET /api/v2/broadcasts.json`, newest first, cursor pages, `after`/`before` inclusive
on `created_on`; see RapidPro's API docs, BroadcastsEndpoint). A broadcast the POST created is in
that listing, to the message's URN with its text, created within the claim's window:

- from `margin` before the claim (the clocks of the worker and RapidPro may differ by that much),
- to `margin` after the latest moment the POST could have reached RapidPro: the request waits up
  to RAPIDPRO_TIMEOUT for the call budget, then lasts up to RAPIDPRO_TIMEOUT.

The listing *covers* the window when every page was read, it asked for the whole window, and it
started after the POST's deadline (claim + 2 × RAPIDPRO_TIMEOUT): nothing can be created for the
claim after that. Then exactly one candidate is the outcome, none means the POST never created
anything (send again, under a new claim), and several need an operator.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transitions.cht.timestamps import parse_time
from transitions.outgoing.broadcasts import BroadcastKey, key_of, ledger_ref, refs_of
from transitions.outgoing.dispatch import CLAIMED, IN_DOUBT, Action, ledger_action
from transitions.outgoing.rapidpro_forms import rapidpro_text, rapidpro_urn

# After this long without a successful listing, an operator is told (the lookups go on).
LISTING_FAILURE_LIMIT = 24 * 3600.0
# Windows closer than this are read with one listing (one call serves every claim in it).
MERGE_GAP = 600.0


class Kind(enum.Enum):
    FOUND = "found"  # exactly one candidate: it is the outcome
    RESEND = "resend"  # provably nothing was created: send again under a new claim
    OPERATOR = "operator"  # RapidPro cannot tell: an operator decides
    WAIT = "wait"  # the listing does not cover the window (yet): look again later


@dataclass(frozen=True)
class Decision:
    kind: Kind
    broadcast: Mapping[str, Any] | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Window:
    start: float  # epoch seconds, inclusive
    end: float


@dataclass(frozen=True)
class Listing:
    """What one listing of broadcasts.json saw."""

    window: Window  # the `after` / `before` it asked for
    started_at: float  # our clock before the first page was asked for
    complete: bool  # every page was read
    broadcasts: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


def claim_window(claimed_at: float, rapidpro_timeout: float, margin: float) -> Window:
    return Window(claimed_at - margin, claimed_at + 2 * rapidpro_timeout + margin)


def post_deadline(claimed_at: float, rapidpro_timeout: float) -> float:
    """The latest moment the claim's POST can still have been under way (budget wait + request)."""
    return claimed_at + 2 * rapidpro_timeout


def claimed_epoch(entry: Mapping[str, Any]) -> float | None:
    value = entry.get("claimed_at_epoch")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return parse_time(entry.get("claimed_at"))


def is_unresolved(entry: Mapping[str, Any], now: float, claim_timeout: float, owner_dead: bool) -> bool:
    """A claim without outcome whose sender is done: marked in doubt, or a stale claim."""
    state = entry.get("state")
    if state == IN_DOUBT:
        return True
    return state == CLAIMED and ledger_action(entry, now, claim_timeout, owner_dead) is Action.MARK_IN_DOUBT


def is_due(entry: Mapping[str, Any], now: float, check_after: float, claim_timeout: float,
           owner_dead: bool) -> bool:
    """Look this claim up in RapidPro now? Only unresolved claims `check_after` seconds old, and
    not those waiting for an operator — except when the reason was the listing failing."""
    if not is_unresolved(entry, now, claim_timeout, owner_dead):
        return False
    waiting = entry.get("needs_operator")
    if isinstance(waiting, Mapping) and not waiting.get("retry"):
        return False
    claimed = claimed_epoch(entry)
    return claimed is None or now - claimed >= check_after


def plan_listings(windows: Mapping[str, Window], gap: float = MERGE_GAP) -> list[tuple[Window, list[str]]]:
    """Group claims whose windows overlap or nearly touch: one listing per group."""
    groups: list[tuple[Window, list[str]]] = []
    for key, window in sorted(windows.items(), key=lambda item: (item[1].start, item[0])):
        if groups and window.start <= groups[-1][0].end + gap:
            last, keys = groups[-1]
            groups[-1] = (Window(last.start, max(last.end, window.end)), [*keys, key])
        else:
            groups.append((window, [key]))
    return groups


def normalise_urn(urn: Any) -> str | None:
    """`tel:+254 700-000 001` and `TEL:+254700000001` are the same URN."""
    if not isinstance(urn, str) or ":" not in urn:
        return None
    scheme, _, path = urn.strip().partition(":")
    scheme = scheme.lower()
    if scheme == "tel":
        path = ("+" if path.strip().startswith("+") else "") + "".join(c for c in path if c.isdigit())
    return f"{scheme}:{path}"


def _text_matches(broadcast_text: Any, text: str) -> bool:
    """`text` is what CHT holds; RapidPro stores and lists it trimmed (rapidpro_forms.py beside this)."""
    stored = rapidpro_text(text)
    if isinstance(broadcast_text, str):
        return broadcast_text == stored
    if isinstance(broadcast_text, Mapping):  # by language, as RapidPro echoes it
        return any(value == stored for value in broadcast_text.values())
    return False


def decide(*, urn: str, text: str | None, claimed_at: float | None, listing: Listing,
           recorded: Collection[BroadcastKey], rapidpro_timeout: float, margin: float,
           country: str | None = None) -> Decision:
    """What to do with one in-doubt claim, given a listing of RapidPro's broadcasts.

    `recorded`: broadcasts (ids or uuids) that ledger entries already hold as their outcome —
    another message's broadcast is never taken for this one's. A broadcast is named by its id
    while the server gives one and by its uuid where it does not (transitions/outgoing/broadcasts.py).
    `country`: the workspace's (`workspace.json`), with which RapidPro normalised the URN the
    claim holds (a local or unprefixed number is stored as E.164 in that country).
    """
    if claimed_at is None:
        return Decision(Kind.OPERATOR, reason="the claim has no readable time")
    if text is None:
        return Decision(Kind.OPERATOR, reason="the message is no longer on its CHT doc")
    window = claim_window(claimed_at, rapidpro_timeout, margin)
    if not listing.complete:
        return Decision(Kind.WAIT, reason="the listing was not read to its end")
    if listing.window.start > window.start or listing.window.end < window.end:
        return Decision(Kind.WAIT, reason="the listing does not span the claim's window")
    if listing.started_at < post_deadline(claimed_at, rapidpro_timeout):
        return Decision(Kind.WAIT, reason="the POST may still be under way")

    wanted = rapidpro_urn(urn, country) or normalise_urn(urn)
    candidates: list[Mapping[str, Any]] = []
    hidden = 0
    for broadcast in listing.broadcasts:
        created = parse_time(broadcast.get("created_on"))
        if created is None or not window.start <= created <= window.end:
            continue
        if not _text_matches(broadcast.get("text"), text):
            continue
        if any(ref in recorded for ref in refs_of(broadcast)):
            continue
        urns = broadcast.get("urns")
        if not isinstance(urns, list) or not urns:
            hidden += 1  # an anonymous workspace hides URNs (null; `[]` on some old versions)
            continue
        # The worker sends each broadcast to one URN.
        if [rapidpro_urn(u, country) or normalise_urn(u) for u in urns] == [wanted]:
            candidates.append(broadcast)

    if hidden:
        return Decision(Kind.OPERATOR, reason=(
            f"RapidPro hides the recipients (anonymous workspace): {hidden + len(candidates)} "
            "broadcast(s) with this text in the claim's window may be this message"))
    if len(candidates) > 1:
        ids = ", ".join(str(key_of(b)) for b in candidates)
        return Decision(Kind.OPERATOR, reason=f"{len(candidates)} broadcasts to this number with this "
                                              f"text in the claim's window ({ids})")
    if len(candidates) == 1:
        if key_of(candidates[0]) is None:
            return Decision(Kind.OPERATOR, reason="the matching broadcast has neither an id nor a uuid")
        return Decision(Kind.FOUND, broadcast=candidates[0])
    return Decision(Kind.RESEND)


def listing_failed_too_long(failing_since: float | None, now: float,
                            limit: float = LISTING_FAILURE_LIMIT) -> bool:
    return failing_since is not None and now - failing_since >= limit


def operator_refusal(entry: Mapping[str, Any] | None, now: float, claim_timeout: float,
                     owner_dead: bool) -> str | None:
    """Why an operator may not resolve this message now (None: they may)."""
    if entry is None:
        return "no ledger entry: the worker never claimed this message"
    if is_unresolved(entry, now, claim_timeout, owner_dead):
        return None
    state = entry.get("state")
    if state == CLAIMED:
        return "it is being sent right now (a fresh claim); try again in a few minutes"
    resolution = entry.get("resolution")
    how = ""
    if isinstance(resolution, Mapping):
        how = f" ({resolution.get('how')} by {resolution.get('by')} at {resolution.get('at')})"
    broadcast = ledger_ref(entry)
    ref = f", broadcast {broadcast}" if broadcast is not None else ""
    return f"it is not in doubt: already resolved, ledger state {state!r}{ref}{how}"

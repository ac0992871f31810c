"""Status tracking's round plan (pure): which due messages to ask about together, and how — one
bulk folder sync (`messages.json?folder=…&after=…&before=…`, 250 a page, newest first) for a
window of `created_on`, or one query per broadcast, whichever costs fewer calls. A round splits
the due messages into windows wherever the gap between them would cost a page of its own. The
schedule it plans from is in transitions/status.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from transitions.states import RECEIVED_BY_GATEWAY
from transitions.status import FOLDERS, OUTBOX, SENT_FOLDER, Policy, Tier, Tracked, folder_of, is_due

ROW_BUCKET = 300.0  # seconds of created_on per counted bucket


@dataclass
class FolderStats:
    """How many rows each folder held per 5 minutes of `created_on`, as the syncs saw them (all
    senders of the workspace, final messages included), to predict the pages of the next sync.
    Buckets older than the horizon are dropped, so it stays small."""

    rows: dict[str, dict[int, int]] = field(default_factory=dict)

    def learn(self, folder: str, created: Iterable[float], after: float, before: float) -> None:
        seen: dict[int, int] = {}
        for when in created:
            bucket = int(when // ROW_BUCKET)
            seen[bucket] = seen.get(bucket, 0) + 1
        counts = self.rows.setdefault(folder, {})
        first, last = int(after // ROW_BUCKET), int(before // ROW_BUCKET)
        for bucket in range(first, last + 1):
            whole = bucket * ROW_BUCKET >= after and (bucket + 1) * ROW_BUCKET <= before
            value = seen.get(bucket, 0)
            counts[bucket] = value if whole else max(value, counts.get(bucket, 0))

    def estimate(self, folder: str, after: float, before: float, fallback: Mapping[int, int]) -> float:
        """Rows of `folder` created in [after, before]; buckets never read count our own tracked
        messages in them (an underestimate the first sync corrects)."""
        counts = self.rows.get(folder, {})
        total = 0.0
        for bucket in range(int(after // ROW_BUCKET), int(before // ROW_BUCKET) + 1):
            lo, hi = bucket * ROW_BUCKET, (bucket + 1) * ROW_BUCKET
            share = max(0.0, min(hi, before) - max(lo, after)) / ROW_BUCKET
            value = counts.get(bucket)
            total += (value if value is not None else fallback.get(bucket, 0)) * share
        return total

    def prune(self, oldest: float) -> None:
        limit = int(oldest // ROW_BUCKET)
        for counts in self.rows.values():
            for bucket in [b for b in counts if b < limit]:
                del counts[bucket]

    def forget(self) -> None:
        self.rows.clear()


@dataclass(frozen=True)
class Window:
    """Due messages answered together: by a sync of [after, before] (before None: up to now), or
    one query per broadcast."""

    due: tuple[str, ...]
    sync: bool
    after: float
    before: float | None
    expected_pages: int
    broadcasts: tuple[int, ...]
    tier: Tier  # the freshest tier in it (windows run freshest first)


@dataclass(frozen=True)
class Plan:
    kind: str  # "idle" | "sync" | "broadcasts" | "mixed"
    windows: tuple[Window, ...] = ()

    @property
    def due(self) -> tuple[str, ...]:
        return tuple(uuid for window in self.windows for uuid in window.due)

    @property
    def broadcasts(self) -> tuple[int, ...]:
        return tuple(b for window in self.windows if not window.sync for b in window.broadcasts)

    @property
    def expected_calls(self) -> int:
        return sum(w.expected_pages if w.sync else len(w.broadcasts) for w in self.windows)


def sync_folders(due: Sequence[Tracked]) -> tuple[str, ...]:
    """The folders a sync is expected to read: `sent` (where most messages are), and `outbox`
    when a due message is still there. `failed` is read only when several due messages turn
    out to be in neither (the caller decides; failures are rare, one query per broadcast is
    cheaper for one or two)."""
    if any(item.state == RECEIVED_BY_GATEWAY for item in due):
        return (SENT_FOLDER, OUTBOX)
    return (SENT_FOLDER,)


def _own_buckets(tracked: Iterable[Tracked], policy: Policy) -> dict[str, dict[int, int]]:
    own: dict[str, dict[int, int]] = {folder: {} for folder in FOLDERS}
    for item in tracked:
        bucket = int(((item.created_estimate(policy) + item.created_upper(policy)) / 2) // ROW_BUCKET)
        counts = own[folder_of(item.state, item.details)]
        counts[bucket] = counts.get(bucket, 0) + 1
    return own


def expected_pages(folders: Iterable[str], after: float, before: float, tracked: Iterable[Tracked],
                   stats: FolderStats, policy: Policy,
                   own: Mapping[str, Mapping[int, int]] | None = None) -> int:
    """Pages a sync of `folders` over [after, before] should read."""
    counts = own if own is not None else _own_buckets(tracked, policy)
    total = 0
    for folder in folders:
        rows = stats.estimate(folder, after, before, counts.get(folder, {}))
        total += max(1, math.ceil(rows / policy.page_size))
    return total


def plan_round(tracked: Iterable[Tracked], now: float, policy: Policy, stats: FolderStats) -> Plan:
    """The due messages, split into windows of created_on wherever the rows between two of them
    would fill a page (asking across such a gap costs more than it can save), each answered the
    cheaper way: the pages of a sync, or one call per broadcast. Freshest window first, so a
    short budget delays the older tiers, not the fresh one."""
    items = list(tracked)
    due = [item for item in items if is_due(item, now, policy)]
    if not due:
        return Plan("idle")
    own = _own_buckets(items, policy)
    due.sort(key=lambda item: item.created_upper(policy), reverse=True)
    groups: list[list[Tracked]] = [[due[0]]]
    for previous, item in itertools.pairwise(due):
        gap = stats.estimate(SENT_FOLDER, item.created_upper(policy), previous.created_estimate(policy),
                             own.get(SENT_FOLDER, {}))
        if gap >= policy.page_size:
            groups.append([item])
        else:
            groups[-1].append(item)
    windows: list[Window] = []
    for index, group in enumerate(groups):
        after = min(item.created_estimate(policy) for item in group)
        # The newest window reads up to now (rows created meanwhile are few); older ones stop
        # at their newest message, so the rows of fresher windows are not read twice.
        before = None if index == 0 else max(item.created_upper(policy) for item in group)
        pages = expected_pages(sync_folders(group), after, now if before is None else before, items,
                               stats, policy, own)
        broadcasts = tuple(sorted({item.broadcast for item in group}))
        tier = min((item.tier(now, policy) for item in group), key=lambda t: list(Tier).index(t))
        # On a tie a sync still wins when it answers for several: it refreshes the others too.
        sync = len(broadcasts) > pages or (len(broadcasts) == pages and len(broadcasts) > 1)
        windows.append(Window(tuple(item.uuid for item in group), sync, after, before, pages, broadcasts,
                              tier))
    windows.sort(key=lambda w: list(Tier).index(w.tier))
    kinds = {w.sync for w in windows}
    kind = "mixed" if len(kinds) > 1 else ("sync" if kinds == {True} else "broadcasts")
    return Plan(kind, tuple(windows))



"""Status tracking's round plan (pure): which due messages to ask about together, and how — one
bulk folder sync (`messages.json?folder=…&after=…&before=…`, 250 a page, newest first) for a
window of `created_on`, or one query per message (transitions/status/api.py), whichever costs
fewer calls. A round splits the due messages into windows wherever the gap between them would
cost a page of its own. The schedule it plans from is in transitions/status/rules.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from transitions.cht.states import RECEIVED_BY_GATEWAY
from transitions.status.api import Ask, ServerApi, message_ask
from transitions.status.rules import (
    FAILED_FOLDER,
    FOLDERS,
    OUTBOX,
    SENT_FOLDER,
    Policy,
    Tier,
    Tracked,
    folder_of,
    is_due,
)

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
    one call each (`asks`). A *parked* window syncs the `failed` folder alone: its messages sit
    at `sent` on channels that never report delivery, and only a failure can still come."""

    due: tuple[str, ...]
    sync: bool
    after: float
    before: float | None
    expected_pages: int
    asks: tuple[Ask, ...]
    tier: Tier  # the freshest tier in it (windows run freshest first)
    parked: bool = False

    @property
    def expected_calls(self) -> int:
        return self.expected_pages if self.sync else len(self.asks)


@dataclass(frozen=True)
class Plan:
    kind: str  # "idle" | "sync" | "broadcasts" | "mixed"
    windows: tuple[Window, ...] = ()

    @property
    def due(self) -> tuple[str, ...]:
        return tuple(uuid for window in self.windows for uuid in window.due)

    @property
    def asks(self) -> tuple[Ask, ...]:
        return tuple(a for window in self.windows if not window.sync for a in window.asks)

    @property
    def expected_calls(self) -> int:
        return sum(w.expected_calls for w in self.windows)


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


def _freshest(group: Iterable[Tracked], now: float, policy: Policy) -> Tier:
    return min((item.tier(now, policy) for item in group), key=lambda t: list(Tier).index(t))


@dataclass
class _Group:
    """Due messages that may share a window, and what its cost depends on."""

    items: list[Tracked]
    after: float
    upper: float
    asks: set[Ask]
    unaskable: bool  # one can only be found by a sync

    @classmethod
    def of(cls, item: Tracked, policy: Policy, api: ServerApi) -> _Group:
        ask = message_ask(item, api)
        return cls([item], item.created_estimate(policy), item.created_upper(policy),
                   {ask} if ask is not None else set(), ask is None)

    @property
    def estimated(self) -> bool:
        """One's created_on is not known yet (its bounds are estimates)."""
        return any(item.created_on is None for item in self.items)

    def absorb(self, other: _Group) -> None:
        self.items.extend(other.items)
        self.after, self.upper = min(self.after, other.after), max(self.upper, other.upper)
        self.unaskable = self.unaskable or other.unaskable
        self.asks |= other.asks


class _Planner:
    """The windows of one round (see plan_round)."""

    def __init__(self, items: list[Tracked], now: float, policy: Policy, stats: FolderStats,
                 api: ServerApi) -> None:
        self.items, self.now, self.policy, self.stats, self.api = items, now, policy, stats, api
        self.own = _own_buckets(items, policy)

    def before(self, group: _Group, newest: bool) -> float | None:
        """Older windows stop at their newest message, so the rows of fresher windows are not read
        twice. The newest reads on to now when that costs no page more — it refreshes the
        messages sent since the last round early, and a quiet workspace's tail fits the same page —
        or while a created_on in it is only estimated (CHT's clock, RapidPro's queue: the message
        may sit later than thought); else it stops there too."""
        if not newest:
            return group.upper
        if group.estimated:
            return None
        return None if self.pages(group, self.now) <= self.pages(group, group.upper) else group.upper

    def pages(self, group: _Group, before: float) -> int:
        """The pages a sync of the group's window up to `before` should read."""
        return expected_pages(sync_folders(group.items), group.after, before, self.items, self.stats,
                              self.policy, self.own)

    def window(self, group: _Group, newest: bool) -> Window:
        """The group answered the cheaper way: a sync when its pages cost fewer calls than one per
        message, or when some due message can only be found by a sync."""
        before = self.before(group, newest)
        pages = self.pages(group, self.now if before is None else before)
        count = len(group.asks)
        # On a tie a sync still wins when it answers for several: it refreshes the others too.
        sync = group.unaskable or count > pages or (count == pages and count > 1)
        asks = () if sync else tuple(sorted(group.asks, key=lambda a: (a.param, str(a.value))))
        return Window(tuple(item.uuid for item in group.items), sync, group.after, before, pages, asks,
                      _freshest(group.items, self.now, self.policy))

    def split(self, due: list[Tracked], folder: str) -> list[_Group]:
        """Newest first, split wherever the rows of `folder` between two due messages would fill
        a page of their own."""
        due.sort(key=lambda item: item.created_upper(self.policy), reverse=True)
        groups = [_Group.of(due[0], self.policy, self.api)]
        for previous, item in itertools.pairwise(due):
            gap = self.stats.estimate(folder, item.created_upper(self.policy),
                                      previous.created_estimate(self.policy), self.own.get(folder, {}))
            single = _Group.of(item, self.policy, self.api)
            if gap >= self.policy.page_size:
                groups.append(single)
            else:
                groups[-1].absorb(single)
        return groups

    def parked_windows(self, parked: list[Tracked]) -> list[Window]:
        """The parked messages due (hourly): one sync of `failed` over where they sit, split where
        the failed rows between two would fill a page."""
        windows = []
        for group in self.split(parked, FAILED_FOLDER):
            pages = expected_pages((FAILED_FOLDER,), group.after, group.upper, self.items, self.stats,
                                   self.policy, self.own)
            windows.append(Window(tuple(item.uuid for item in group.items), True, group.after, group.upper,
                                  pages, (), Tier.OLD, parked=True))
        return windows


def plan_round(tracked: Iterable[Tracked], now: float, policy: Policy, stats: FolderStats,
               api: ServerApi | None = None) -> Plan:
    """The due messages, split into windows of created_on wherever the rows between two of them
    would fill a page (asking across such a gap costs more than it can save), each answered the
    cheaper way: the pages of a sync, or one call per message. Freshest window first, so a
    short budget delays the older tiers, not the fresh one. Parked messages due are looked for
    in the `failed` folder alone, last."""
    items = list(tracked)
    due = [item for item in items if is_due(item, now, policy)]
    if not due:
        return Plan("idle")
    planner = _Planner(items, now, policy, stats, api or ServerApi())
    active = [item for item in due if not item.parked]
    windows = [planner.window(group, index == 0)
               for index, group in enumerate(planner.split(active, SENT_FOLDER))] if active else []
    windows.sort(key=lambda w: list(Tier).index(w.tier))
    parked = [item for item in due if item.parked]
    if parked:
        windows.extend(planner.parked_windows(parked))
    kinds = {w.sync for w in windows}
    kind = "mixed" if len(kinds) > 1 else ("sync" if kinds == {True} else "broadcasts")
    return Plan(kind, tuple(windows))

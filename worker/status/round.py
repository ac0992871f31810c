"""The pieces of a status round, as plain data: what it planned, how far it got, what it cost."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from transitions.status.api import Ask
from transitions.status.plan import Plan, Window


class BudgetShort(Exception):
    """The shared budget has nothing for status tracking now (sends keep a reserve): stop the
    round without waiting; the next one resumes it."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate budget short for {wait:.1f} s")
        self.wait = wait


@dataclass
class StatusStats:
    """Counters for /healthz."""

    tracked: int = 0
    rounds: int = 0
    calls: int = 0  # RapidPro calls made by status tracking (429s included)
    syncs: int = 0
    sync_pages: int = 0
    broadcast_queries: int = 0
    broadcast_lookups: int = 0
    updates_written: int = 0
    final: int = 0  # messages followed to a final state
    expired: int = 0  # past the tracking horizon, left as they were
    missing_gave_up: int = 0  # RapidPro kept answering "no such message" (host changed?)
    unknown_statuses: int = 0
    throttled: int = 0
    budget_short: int = 0  # rounds cut short because the shared budget had nothing to spare
    rescans: int = 0
    view_pages: int = 0  # pages of CHT's view read (only at start and on a rescan)
    parked: int = 0  # messages parked: `sent` on a channel that never reports delivery
    last_round_at: str | None = None
    last_error: str | None = None


@dataclass
class RoundResult:
    plan: str = "idle"  # idle | sync | broadcasts | mixed | resumed
    calls: int = 0
    updates: int = 0
    finished: bool = True  # False: stopped early (429, error); the next round resumes it
    retry_in: float | None = None  # after a 429: when RapidPro takes calls again
    skipped_reason: str | None = None


@dataclass
class Part:
    """One window of the plan, as a sync: what it has read and matched so far."""

    window: Window
    due: set[str]
    read: set[str] = field(default_factory=set)  # folders read completely


@dataclass
class Step:
    # "folder" | "decide" | "settle" | "ask" (messages.json?uuid|broadcast) | "around" (messages.json
    # of every folder near one message) | "lookup" (broadcasts.json)
    kind: str
    part: int = -1
    folder: str | None = None
    cursor: str | None = None
    created: list[float] = field(default_factory=list)  # created_on of the rows read (to learn)
    ask: Ask | None = None
    uuids: tuple[str, ...] = ()  # the tracked messages an ask, a lookup or a listing is about
    after: float | None = None  # "around": the created_on a listing without folder reads
    before: float | None = None


@dataclass
class Round:
    plan: Plan
    steps: deque[Step]
    parts: list[Part]
    now: float  # when this (part of the) round started: checks are scheduled from it
    matched: set[str] = field(default_factory=set)
    asked: set[Ask] = field(default_factory=set)  # messages queried one by one
    looked_up: set[Ask] = field(default_factory=set)  # broadcasts looked up


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

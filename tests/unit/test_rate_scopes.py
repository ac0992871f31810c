"""One budget per RapidPro throttle scope (transitions/rapidpro/rate_scopes.py, worker/rapidpro/budget.py
ScopedBudget): which scope a call is counted in, each version's rates, a 429 pausing its scope
only, and the sends' sliding hour rebuilt from the ledger."""

from __future__ import annotations

import asyncio

import pytest

from playground.fake_rapidpro import FakeClock
from transitions.rapidpro import rate_scopes
from transitions.rapidpro.rate_scopes import (
    BROADCASTS,
    MESSAGES,
    V2,
    scope_of_path,
    scope_rates,
    version_of_broadcast,
)
from worker.rapidpro.budget import HOUR, Priority, ScopedBudget, TokenBucket

BROADCASTS_JSON = "/api/v2/broadcasts.json"
MESSAGES_JSON = "/api/v2/messages.json"


@pytest.mark.parametrize(("broadcast", "version"), [
    ({"uuid": "u", "id": 1, "quick_replies": {}, "created_on": "x"}, "current"),
    ({"uuid": "u", "created_on": "x"}, "current"),  # a future server without ids
    ({"id": 1, "quick_replies": {}, "progress": {}, "created_on": "x"}, "2025"),
    ({"id": 1, "progress": {}, "created_on": "x"}, "before-2025"),  # v9.x
    ({"id": 1, "text": {"eng": "x"}, "created_on": "x"}, "before-2025"),  # v8.2 (2023)
    ({"detail": "nope"}, None),
    (None, None),
])
def test_the_version_a_broadcast_shows(broadcast: object, version: str | None) -> None:
    assert version_of_broadcast(broadcast) == version


@pytest.mark.parametrize(("version", "broadcasts_scope", "rates"), [
    ("before-2025", BROADCASTS, {BROADCASTS: 36000, MESSAGES: 2500, V2: 2500}),
    ("2025", BROADCASTS, {BROADCASTS: 2500, MESSAGES: 2500, V2: 2500}),
    ("current", V2, {BROADCASTS: 3600, MESSAGES: 3600, V2: 3600}),
    ("unknown", V2, {BROADCASTS: 2500, MESSAGES: 2500, V2: 2500}),
])
def test_scopes_and_rates_by_version(version: str, broadcasts_scope: str, rates: dict[str, int]) -> None:
    table = rate_scopes.VERSIONS[version]
    assert scope_of_path(BROADCASTS_JSON, table) == broadcasts_scope
    assert scope_of_path("/rapidpro" + MESSAGES_JSON, table) == MESSAGES
    for other in ("workspace", "channels", "globals", "flows", "definitions"):
        assert scope_of_path(f"/api/v2/{other}.json", table) == V2
    assert scope_rates(table) == rates


def test_overrides_per_scope_and_the_deprecated_single_rate() -> None:
    table = rate_scopes.BEFORE_2025
    assert scope_rates(table, {MESSAGES: 1000}) == {BROADCASTS: 36000, MESSAGES: 1000, V2: 2500}
    assert scope_rates(table, {}, every=3600) == dict.fromkeys(rate_scopes.SCOPES, 3600)
    assert scope_rates(table, {BROADCASTS: 9000, V2: None}, every=3600) == {
        BROADCASTS: 9000, MESSAGES: 3600, V2: 3600}


def test_the_budget_follows_the_version_its_first_broadcast_shows() -> None:
    budget = ScopedBudget(clock=FakeClock())
    assert budget.for_path(BROADCASTS_JSON) is budget.scope(V2)  # unknown: shared, lowest rates
    assert budget.rates() == {MESSAGES: 2500, V2: 2500}
    budget.observe_broadcast({"id": 1, "text": {"eng": "x"}, "created_on": "x"})  # a 2023 server
    assert budget.for_path(BROADCASTS_JSON) is budget.scope(BROADCASTS)
    assert budget.rates() == {BROADCASTS: 36000, MESSAGES: 2500, V2: 2500}
    budget.observe_broadcast({"uuid": "u", "id": 1, "created_on": "x"})  # upgraded meanwhile
    assert budget.for_path(BROADCASTS_JSON) is budget.scope(V2)
    assert budget.rates() == {MESSAGES: 3600, V2: 3600}


def test_a_429_pauses_only_its_scope() -> None:
    clock = FakeClock()
    budget = ScopedBudget(clock=clock, version="before-2025")
    assert budget.for_path(BROADCASTS_JSON).throttled(55.0) == 55.0
    assert budget.scope(BROADCASTS).paused_for() == 55.0
    assert budget.next_token_in(Priority.SEND) == pytest.approx(55.0)
    # Status tracking and reconciliation (messages.json), the channel watcher (v2): untouched.
    assert budget.next_token_in(Priority.STATUS) == 0.0
    assert budget.paused_for(Priority.STATUS) == 0.0
    assert budget.next_token_in(Priority.INCOMING) == 0.0
    assert budget.next_token_in(Priority.CHANNELS) == 0.0


def test_on_a_current_server_a_broadcasts_429_pauses_v2_but_not_messages() -> None:
    budget = ScopedBudget(clock=FakeClock(), version="current")
    budget.for_path(BROADCASTS_JSON).throttled(30.0)
    assert budget.next_token_in(Priority.CHANNELS) == pytest.approx(30.0)  # the same scope
    assert budget.next_token_in(Priority.STATUS) == 0.0


def test_messages_keep_no_reserve_for_sends_they_never_make() -> None:
    """In v2.messages status tracking may use every token: no send is ever counted there."""
    clock = FakeClock()
    budget = ScopedBudget(clock=clock, version="current")
    messages = budget.scope(MESSAGES)
    taken = 0
    while messages.next_token_in(Priority.STATUS) == 0.0:
        messages._policy.take(messages._policy.choose([_waiter(Priority.STATUS)], clock()), clock())
        taken += 1
    assert taken == 10  # the start level (ten seconds of 3,600/h), none of it held back


def _waiter(priority: Priority):  # a queue of one for BudgetPolicy.choose
    from worker.rapidpro.budget import _Waiter
    return _Waiter(int(priority), 0)


# ---------------------------------------------------------------------- the sliding hour


def test_a_seeded_window_allows_exactly_what_rapidpro_still_allows() -> None:
    """RapidPro counts the last hour's calls; with the ledger's sends of that hour the bucket
    knows exactly: 3,600/h and 3,590 sends in the last 10 minutes leave 10 now, and the next
    slot when the oldest of them leaves the hour — not `rate` later."""
    bucket = TokenBucket(3600, window=True)
    now = 10_000.0
    sends = [now - 600 + i * (600 / 3590) for i in range(3590)]
    bucket.seed_window(sends, now)
    for _ in range(10):
        assert bucket.try_take(now) == 0.0
    assert bucket.try_take(now) == pytest.approx(sends[0] + HOUR - now)  # 3000 s, not 1 s
    later = sends[0] + HOUR + 0.001
    assert bucket.try_take(later) == 0.0


def test_an_old_ledger_leaves_the_whole_hour() -> None:
    bucket = TokenBucket(3600, window=True)
    bucket.seed_window([1.0, 2.0], 10_000.0)  # more than an hour ago
    assert bucket.window_count(10_000.0) == 0
    assert bucket.tokens(10_000.0) == 3600  # not ten seconds' worth: nothing is unknown


def test_a_fresh_worker_rebuilds_the_sends_window_from_the_ledger() -> None:
    clock = FakeClock(start=50_000.0)
    budget = ScopedBudget(clock=clock, version="before-2025")
    now = clock()
    budget.seed_sends([now - 4000, *[now - 100.0] * 35_990])  # one already out of the hour
    sends = budget.scope(BROADCASTS)
    assert sends.window_count() == 35_990
    assert sends.next_token_in(Priority.SEND) == 0.0
    assert budget.scope(MESSAGES).window_count() == 0  # the ledger says nothing about others

    async def take(n: int) -> None:
        for _ in range(n):
            await sends.acquire(Priority.SEND)

    asyncio.run(take(10))
    assert sends.next_token_in(Priority.SEND) == pytest.approx(HOUR - 100)


def test_the_sends_window_moves_with_the_broadcasts_scope() -> None:
    clock = FakeClock(start=50_000.0)
    budget = ScopedBudget(clock=clock)  # unknown: broadcasts counted in v2
    budget.seed_sends([clock() - 10] * 100)
    assert budget.scope(V2).window_count() == 100
    budget.observe_broadcast({"id": 1, "created_on": "x"})  # before 2025: their own scope
    assert budget.scope(BROADCASTS).window_count() == 100


def test_an_empty_ledger_hour_leaves_the_whole_window_to_sends() -> None:
    budget = ScopedBudget(clock=FakeClock(start=50_000.0), version="current")
    assert budget.scope(V2).tokens() == 10  # before the ledger is read: ten seconds' worth
    budget.seed_sends([])
    assert budget.scope(V2).tokens() == 3600
    assert budget.scope(MESSAGES).tokens() == 10  # unknown: the others' calls are not in the ledger

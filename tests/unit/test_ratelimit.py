"""The RapidPro call budget: the pure token bucket on a fake clock, and the async gate.

The async tests use a FakeClock for the budget: waiters would sleep (for real) until the next
token is due on that clock, so the tests move the clock and call `budget.wake()` instead of
sleeping, and wait for events rather than for time. Nothing depends on machine speed.
"""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from playground.fake_rapidpro import FakeClock
from worker.backoff import Backoff
from worker.rapidpro.budget import HOUR, Priority, RateBudget, TokenBucket

# ---------------------------------------------------------------------- TokenBucket


@pytest.mark.parametrize(("calls_per_hour", "start"), [(3600, 10), (1_000_000, 2777.78), (60, 1)])
def test_bucket_starts_with_ten_seconds_of_the_rate_not_the_whole_hour(calls_per_hour, start):
    # A restarted worker cannot know what its predecessor used of RapidPro's window.
    bucket = TokenBucket(calls_per_hour)
    assert bucket.tokens(100.0) == pytest.approx(start, abs=0.01)
    while bucket.tokens(100.0) >= 1:
        assert bucket.try_take(100.0) == 0.0
    assert bucket.try_take(100.0) > 0  # then the rate


def test_a_quiet_bucket_saves_up_the_whole_hourly_budget_as_a_burst():
    bucket = TokenBucket(3600)
    bucket.tokens(0.0)
    for _ in range(3600):
        assert bucket.try_take(HOUR) == 0.0
    assert bucket.try_take(HOUR) == pytest.approx(1.0)  # 3600/h = one per second


def test_bucket_refills_at_the_hourly_rate_and_never_beyond_capacity():
    bucket = TokenBucket(60, start_seconds=HOUR)  # one per minute, starting full
    for _ in range(60):
        assert bucket.try_take(0.0) == 0.0
    assert bucket.try_take(30.0) == pytest.approx(30.0)  # half a token so far
    assert bucket.try_take(60.0) == 0.0
    assert bucket.try_take(60.0) == pytest.approx(60.0)
    assert bucket.tokens(10 * 3600.0) == pytest.approx(60.0)  # capped at the hourly budget


def test_waiting_exactly_the_returned_time_always_gives_a_token():
    bucket = TokenBucket(7, start_seconds=HOUR)  # an awkward rate for floats
    now = 0.0
    for _ in range(7):
        bucket.try_take(now)
    for _ in range(50):
        wait = bucket.try_take(now)
        assert wait > 0
        now += wait
        assert bucket.try_take(now) == 0.0


def test_pause_blocks_until_its_end_then_goes_on_at_the_normal_pace():
    bucket = TokenBucket(3600)
    assert bucket.try_take(0.0) == 0.0
    bucket.pause_until(100.0, now=0.0)
    assert bucket.try_take(40.0) == pytest.approx(60.0)
    assert bucket.time_until_token(40.0) == pytest.approx(60.0)
    assert bucket.try_take(99.99) == pytest.approx(0.01)
    # Retry-After says when one slot frees; RapidPro's window is still full: no burst.
    assert bucket.try_take(100.0) == 0.0
    assert bucket.try_take(100.0) == pytest.approx(1.0)
    assert bucket.try_take(101.0) == 0.0
    assert bucket.try_take(101.0) == pytest.approx(1.0)


def test_a_budget_under_one_call_an_hour_still_works():
    bucket = TokenBucket(0.5)
    assert bucket.try_take(0.0) == 0.0
    assert bucket.try_take(0.0) == pytest.approx(7200.0)


def test_pauses_only_extend():
    bucket = TokenBucket(3600)
    bucket.pause_until(100.0, now=0.0)
    bucket.pause_until(50.0, now=0.0)
    assert bucket.paused_until() == 100.0
    assert bucket.try_take(60.0) == pytest.approx(40.0)


def test_rate_can_change_at_runtime():
    bucket = TokenBucket(3600, start_seconds=HOUR)
    for _ in range(3600):
        bucket.try_take(0.0)
    bucket.set_calls_per_hour(7200, now=0.0)
    assert bucket.try_take(0.0) == pytest.approx(0.5)
    assert bucket.try_take(0.5) == 0.0
    bucket.set_calls_per_hour(10, now=0.5)  # a smaller budget also caps what is saved up
    assert bucket.tokens(10_000.0) == pytest.approx(10.0)


def test_unlimited_bucket_never_waits():
    bucket = TokenBucket(math.inf)
    assert all(bucket.try_take(0.0) == 0.0 for _ in range(100_000))
    bucket.set_calls_per_hour(2, now=1.0)  # from unlimited to limited: as a fresh bucket
    assert bucket.try_take(1.0) == 0.0
    assert bucket.try_take(1.0) == pytest.approx(1800.0)


@pytest.mark.parametrize("bad", [0, -1, math.nan])
def test_rate_must_be_positive(bad):
    with pytest.raises(ValueError):
        TokenBucket(bad)


# ---------------------------------------------------------------------- RateBudget


def drained_budget(calls_per_hour: float = 3600, **kwargs) -> tuple[RateBudget, FakeClock]:
    """A budget with nothing left: the main bucket and the others' floor both empty. No send
    reserve unless asked: these tests are about the queue."""
    kwargs.setdefault("send_reserve_seconds", 0)
    clock = FakeClock(0.0)
    budget = RateBudget(calls_per_hour, clock=clock, **kwargs)
    for bucket in (budget._bucket, budget._policy._floor):
        while bucket is not None and bucket.tokens(clock()) >= 1:
            bucket.try_take(clock())
    return budget, clock


async def settle() -> None:
    """Let every runnable task run until it blocks (no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_acquire_returns_at_once_while_tokens_last():
    budget = RateBudget(5, clock=FakeClock(0.0), start_seconds=HOUR, send_reserve_seconds=0)
    for _ in range(5):
        await asyncio.wait_for(budget.acquire(Priority.STATUS), 1)
    assert budget.tokens() < 1


async def test_sends_go_before_in_doubt_status_and_incoming_calls():
    budget, clock = drained_budget(3600)
    order: list[str] = []

    async def call(name: str, priority: Priority) -> None:
        await budget.acquire(priority)
        order.append(name)

    tasks = [asyncio.create_task(call("incoming", Priority.INCOMING))]
    await settle()
    tasks += [asyncio.create_task(call(f"status{i}", Priority.STATUS)) for i in range(2)]
    await settle()
    tasks.append(asyncio.create_task(call("in-doubt", Priority.IN_DOUBT)))
    await settle()
    tasks.append(asyncio.create_task(call("send", Priority.SEND)))
    await settle()
    assert budget.waiting == 5 and order == []

    for expected in (1, 2, 3, 4, 5):
        clock.advance(1.0)  # one token (the floor earns a tenth of one: not enough to jump)
        budget.wake()
        await settle()
        assert len(order) == expected  # one token, one caller: no one else slips through
    assert order == ["send", "in-doubt", "status0", "status1", "incoming"]
    await asyncio.gather(*tasks)
    assert budget.waiting == 0


async def test_a_send_arriving_later_overtakes_callers_already_waiting():
    budget, clock = drained_budget(3600)
    order: list[str] = []

    async def call(name: str, priority: Priority) -> None:
        await budget.acquire(priority)
        order.append(name)

    status = asyncio.create_task(call("status", Priority.STATUS))
    await settle()
    clock.advance(0.9)  # almost a token for the status call
    send = asyncio.create_task(call("send", Priority.SEND))
    await settle()
    clock.advance(0.1)
    budget.wake()
    await settle()
    assert order == ["send"]
    clock.advance(1.0)
    budget.wake()
    await asyncio.wait_for(asyncio.gather(status, send), 1)
    assert order == ["send", "status"]


async def test_a_waiter_gets_its_token_when_it_is_due_with_no_wake_call():
    # Real time here, but generous: one token every 20 ms; nothing calls wake(), so the waiter
    # must have slept until the token was due by itself.
    budget = RateBudget(1)
    await budget.acquire(Priority.STATUS)
    budget.calls_per_hour = 3600 * 50  # still empty, now refilling fast
    await asyncio.wait_for(budget.acquire(Priority.STATUS), 2)


async def test_a_cancelled_waiter_leaves_nothing_behind():
    budget, clock = drained_budget(3600)
    first = asyncio.create_task(budget.acquire(Priority.SEND))
    second = asyncio.create_task(budget.acquire(Priority.STATUS))
    await settle()
    first.cancel()
    await settle()
    assert first.cancelled()
    assert budget.waiting == 1
    clock.advance(1.0)
    budget.wake()
    await asyncio.wait_for(second, 1)
    assert budget.waiting == 0
    # The cancelled waiter took nothing: exactly the one token went to `second`.
    assert budget.tokens() == pytest.approx(0.0)


async def test_timeout_around_acquire_is_safe():
    budget, clock = drained_budget(3600)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await budget.acquire(Priority.SEND)
    assert budget.waiting == 0
    clock.advance(1.0)
    await asyncio.wait_for(budget.acquire(Priority.STATUS), 1)


async def test_throttled_with_retry_after_pauses_everyone():
    budget = RateBudget(3600, clock=FakeClock(0.0), start_seconds=HOUR)
    clock: FakeClock = budget._clock  # type: ignore[assignment]
    assert budget.throttled(30.0) == pytest.approx(30.0)
    assert budget.paused_for() == pytest.approx(30.0)
    waiter = asyncio.create_task(budget.acquire(Priority.SEND))
    await settle()
    clock.advance(29.0)
    budget.wake()
    await settle()
    assert not waiter.done()  # a full bucket does not help during a pause
    clock.advance(1.0)
    budget.wake()
    await asyncio.wait_for(waiter, 1)
    second = asyncio.create_task(budget.acquire(Priority.SEND))
    await settle()
    assert not second.done()  # no burst after a pause: the normal pace
    clock.advance(1.0)
    budget.wake()
    await asyncio.wait_for(second, 1)


async def test_throttled_without_retry_after_backs_off_with_growing_delays():
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    budget = RateBudget(3600, clock=FakeClock(0.0), throttle_backoff=backoff)
    clock: FakeClock = budget._clock  # type: ignore[assignment]
    delays = []
    for _ in range(5):
        delay = budget.throttled(None)
        # Further 429s from calls already in flight during the pause do not grow it.
        assert budget.throttled(None) == pytest.approx(delay)
        delays.append(delay)
        clock.advance(delay)
    assert 0.5 <= delays[0] <= 1.0
    assert 4.0 <= delays[-1] <= 8.0
    budget.record_success()
    assert budget.throttled(None) <= 1.0


async def test_calls_per_hour_can_change_at_runtime_and_wakes_waiters():
    budget, clock = drained_budget(1)  # one call an hour
    waiter = asyncio.create_task(budget.acquire(Priority.STATUS))
    await settle()
    clock.advance(1.0)
    await settle()
    assert not waiter.done()
    budget.calls_per_hour = math.inf  # the setter wakes the waiter: no explicit wake()
    await asyncio.wait_for(waiter, 1)
    budget.calls_per_hour = 7200
    assert budget.calls_per_hour == 7200


# ---------------------------------------------------------------------- the sends' reserve, the floor


def test_bucket_keep_leaves_tokens_for_others():
    bucket = TokenBucket(100, start_seconds=HOUR)
    for _ in range(90):
        assert bucket.try_take(0.0, keep=10) == 0.0
    assert bucket.try_take(0.0, keep=10) == pytest.approx(36.0)  # one more token at 100/h
    assert bucket.time_until_token(0.0, keep=10) == pytest.approx(36.0)
    assert bucket.try_take(0.0) == 0.0  # without keep: the reserve is there


async def test_status_stops_at_a_minute_of_sends_then_only_the_floor_lets_it_through():
    clock = FakeClock(start=0.0)
    budget = RateBudget(3600, clock=clock, start_seconds=HOUR)
    taken = 0
    while budget.next_token_in(Priority.STATUS) == 0 and taken < 4000:
        await asyncio.wait_for(budget.acquire(Priority.STATUS), 1)
        taken += 1
    # The whole hour but the sends' minute (60 tokens), then the floor's saved-up minute at a
    # tenth of the rate (6 calls).
    assert taken == 3600 - 60 + 6
    # The floor's calls came out of the sends' minute too (54 left): status waits until it is
    # whole again (7 s) or the floor has earned a call (10 s), whichever is first.
    assert budget.tokens() == pytest.approx(54)
    assert budget.next_token_in(Priority.STATUS) == pytest.approx(7.0)
    assert budget.next_token_in(Priority.SEND) == 0
    for _ in range(54):
        await asyncio.wait_for(budget.acquire(Priority.SEND), 1)
    assert budget.next_token_in(Priority.SEND) > 0


async def test_in_doubt_lookups_may_use_the_sends_reserve():
    clock = FakeClock(start=0.0)
    budget = RateBudget(3600, clock=clock, start_seconds=60, floor_share=0)
    assert budget.next_token_in(Priority.STATUS) > 0  # all 60 are the sends' reserve
    for _ in range(60):
        await asyncio.wait_for(budget.acquire(Priority.IN_DOUBT), 1)


def test_shares_must_be_shares():
    with pytest.raises(ValueError):
        RateBudget(100, floor_share=1.0)
    with pytest.raises(ValueError):
        RateBudget(100, send_reserve_seconds=-1)


class Traffic:
    """Steady sends and a status caller that always wants a call, on a fake clock: the tokens each
    got, and when. The test moves time in small steps; nothing sleeps for real."""

    def __init__(self, budget: RateBudget, clock: FakeClock, send_every: float) -> None:
        self.budget, self.clock, self.send_every = budget, clock, send_every
        self.sends: list[float] = []
        self.status: list[float] = []
        self.send_waits: list[float] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_send = clock()

    async def _send(self) -> None:
        asked = self.clock()
        await self.budget.acquire(Priority.SEND)
        self.sends.append(self.clock())
        self.send_waits.append(self.clock() - asked)

    async def _status_loop(self) -> None:
        while True:
            await self.budget.acquire(Priority.STATUS)
            self.status.append(self.clock())

    def start_status(self) -> None:
        task = asyncio.create_task(self._status_loop())
        self._tasks.add(task)

    async def run_until(self, end: float, step: float) -> None:
        while self.clock() < end - 1e-9:
            self.clock.advance(min(step, end - self.clock()))
            while self._next_send <= self.clock() + 1e-9:
                task = asyncio.create_task(self._send())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                self._next_send += self.send_every
            self.budget.wake()
            await settle()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.mark.parametrize("calls_per_hour", [3600, 1_000_000])
async def test_after_a_429_status_gets_a_call_within_10_s_while_sends_go_on_at_half_the_budget(
        calls_per_hour: int) -> None:
    clock = FakeClock(start=0.0)
    budget = RateBudget(calls_per_hour, clock=clock)
    rate = calls_per_hour / HOUR
    traffic = Traffic(budget, clock, send_every=2 / rate)  # half the budget
    step = min(0.05, 1 / (4 * rate))
    traffic.start_status()
    try:
        await traffic.run_until(120.0, step)  # a steady state first: status uses what is left
        assert traffic.status, "status tracking had calls before the 429"
        throttled_at = clock()
        assert budget.throttled(2.0) == 2.0  # Retry-After: 2
        await traffic.run_until(throttled_at + 30.0, step)
        after = [t for t in traffic.status if t > throttled_at]
        assert after, "status tracking got no call within 30 s of the 429"
        assert after[0] - throttled_at <= 10.0
        # It keeps getting calls, at least the floor's tenth of the rate, while the sends' reserve
        # refills (no stall behind it) ...
        assert len(after) >= 0.9 * 0.1 * rate * (30.0 - 2.0)
        # ... and the sends were not held up beyond the pace RapidPro accepts after the pause.
        sends_after = [t for t in traffic.sends if t > throttled_at]
        assert len(sends_after) >= 0.9 * (30.0 - 2.0) * rate / 2
    finally:
        await traffic.stop()


async def test_under_sustained_sending_the_others_still_get_a_tenth_of_the_calls() -> None:
    clock = FakeClock(start=0.0)
    budget = RateBudget(3600, clock=clock)
    traffic = Traffic(budget, clock, send_every=0.5)  # twice what the budget allows: sends queue up
    traffic.start_status()
    try:
        await traffic.run_until(600.0, 0.05)
        late = [t for t in traffic.status if t > 120.0]  # after the saved-up floor is spent
        assert 0.08 * 480 <= len(late) <= 0.12 * 480  # a tenth of one call a second
        assert len(traffic.sends) + len(traffic.status) <= 10 + 600 + 6 + 1  # never over the budget
    finally:
        await traffic.stop()


async def test_a_retry_after_of_zero_backs_off_instead_of_retrying_at_once():
    """`Retry-After: 0` says nothing about when a slot frees: treated as no Retry-After."""
    clock = FakeClock()
    budget = RateBudget(3600, clock=clock, throttle_backoff=Backoff(base=2.0, cap=60.0))
    assert budget.throttled(0) > 0
    assert budget.paused_for() > 0

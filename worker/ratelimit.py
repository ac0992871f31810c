"""The RapidPro call budget, shared by every caller in the process (sending, status polling,
incoming reconciliation).

RapidPro limits calls per *workspace* over a sliding one-hour window (3,600/h today), and answers
429 beyond it. Pacing ourselves is cheaper than running into 429s, so every call first takes a
token here:

- `TokenBucket` is the pure arithmetic (time is an argument): it holds the whole hourly budget,
  so bursts are allowed as RapidPro's sliding window allows them, and refills at budget/3600 per
  second. A 429 pauses it.
- `RateBudget` is the async gate in front of it: callers wait in priority order (sends before
  status polling and incoming reconciliation), sleeping until the next token is due or until
  something changes — never polling.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from worker.backoff import Backoff
from worker.logs import get_logger

log = get_logger(__name__)

Clock = Callable[[], float]

# Float rounding must not turn "a token is due now" into an endless series of tiny waits.
_EPSILON = 1e-9


class Priority(IntEnum):
    """Lower goes first. A waiting caller blocks every caller of a lower priority (higher value)."""

    SEND = 0  # outgoing broadcasts: a person is waiting for that SMS
    STATUS = 1  # status polling
    INCOMING = 2  # incoming reconciliation (the webhook is the main path; this is the safety net)


class TokenBucket:
    """A token bucket on an explicit clock: every method takes `now` (seconds, any origin).

    `calls_per_hour` may be `math.inf` (no limit, e.g. for benchmarks).
    """

    def __init__(self, calls_per_hour: float) -> None:
        _check_rate(calls_per_hour)
        self._calls_per_hour = float(calls_per_hour)
        self._tokens = self.capacity  # start full: the hourly budget is available
        self._updated: float | None = None  # last refill time; None until first used
        self._paused_until: float | None = None

    @property
    def calls_per_hour(self) -> float:
        return self._calls_per_hour

    @property
    def capacity(self) -> float:
        # At least one token, or a budget under one call an hour could never be used.
        return max(self._calls_per_hour, 1.0)

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._calls_per_hour / 3600.0

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def paused_until(self) -> float | None:
        return self._paused_until

    def try_take(self, now: float, keep: float = 0.0) -> float:
        """Take one token, leaving at least `keep` in the bucket: 0.0 when taken, else the
        seconds until one can be (nothing taken)."""
        if self._paused_until is not None:
            if now < self._paused_until:
                return self._paused_until - now
            self._paused_until = None
        self._refill(now)
        if self._tokens >= 1.0 + keep - _EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return max((1.0 + keep - self._tokens) / self.rate, _EPSILON)

    def time_until_token(self, now: float, keep: float = 0.0) -> float:
        """What `try_take(now, keep)` would answer, without taking anything."""
        if self._paused_until is not None and now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        if self._tokens >= 1.0 + keep - _EPSILON:
            return 0.0
        return max((1.0 + keep - self._tokens) / self.rate, _EPSILON)

    def pause_until(self, t: float, now: float | None = None) -> None:
        """A 429: nothing is taken before `t`, and at `t` the bucket holds one token only.

        One, because the 429 proves RapidPro's window is full (other clients of the workspace
        use it too) and Retry-After says when *a* slot frees: bursting again at `t` would only
        earn more 429s. From `t` the bucket refills at its normal rate, which is how fast the
        sliding window frees slots. Pauses only extend.
        """
        if self._paused_until is not None and t <= self._paused_until:
            return
        if now is not None:
            self._refill(now)
        self._paused_until = t
        self._tokens = 1.0
        self._updated = t if self._updated is None else max(self._updated, t)

    def set_calls_per_hour(self, calls_per_hour: float, now: float) -> None:
        """Change the budget at runtime: tokens earned so far count at the old rate."""
        _check_rate(calls_per_hour)
        self._refill(now)
        self._calls_per_hour = float(calls_per_hour)
        if math.isinf(self._calls_per_hour):
            self._tokens = math.inf
        elif math.isinf(self._tokens):
            self._tokens = self.capacity  # from unlimited to limited: start full
        else:
            self._tokens = min(self._tokens, self.capacity)

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
            return
        if math.isinf(self._calls_per_hour):
            self._tokens = math.inf
            self._updated = max(self._updated, now)
            return
        if now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now


def _check_rate(calls_per_hour: float) -> None:
    if not calls_per_hour > 0:  # also rejects NaN
        raise ValueError(f"calls_per_hour must be > 0, not {calls_per_hour!r}")


@dataclass(eq=False)
class _Waiter:
    priority: int
    seq: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> tuple[int, int]:
        return (self.priority, self.seq)


class RateBudget:
    """The process-wide RapidPro call budget (async; see the module docstring).

    Only the first waiter in (priority, arrival) order watches the bucket: it sleeps until the
    next token is due, takes it, and hands over to the next waiter. The others sleep on their own
    event until they are first. A newcomer that outranks the first waiter simply becomes first.
    """

    def __init__(
        self,
        calls_per_hour: float = 3600,
        *,
        clock: Clock = time.monotonic,
        throttle_backoff: Backoff | None = None,
        send_reserve: float = 0.0,
    ) -> None:
        """`send_reserve`: the share of the hourly budget only sends may use, so a burst of sends
        never finds the bucket emptied by status tracking or reconciliation."""
        if not 0.0 <= send_reserve < 1.0:
            raise ValueError(f"send_reserve must be in [0, 1), not {send_reserve!r}")
        self._clock = clock
        self._bucket = TokenBucket(calls_per_hour)
        self._send_reserve = send_reserve
        # For 429s without Retry-After: grows per 429, back to its base after a call gets through.
        self._backoff = throttle_backoff or Backoff(base=2.0, cap=60.0)
        self._queue: list[_Waiter] = []  # sorted by (priority, seq)
        self._seq = itertools.count()

    # ------------------------------------------------------------------ configuration / state

    @property
    def calls_per_hour(self) -> float:
        return self._bucket.calls_per_hour

    @calls_per_hour.setter
    def calls_per_hour(self, value: float) -> None:
        self._bucket.set_calls_per_hour(value, self._clock())
        self.wake()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def waiting_by_priority(self) -> dict[Priority, int]:
        counts = dict.fromkeys(Priority, 0)
        for waiter in self._queue:
            counts[Priority(waiter.priority)] += 1
        return counts

    def tokens(self) -> float:
        return self._bucket.tokens(self._clock())

    def paused_for(self) -> float:
        """Seconds left in a 429 pause (0 when not paused)."""
        until = self._bucket.paused_until()
        return 0.0 if until is None else max(0.0, until - self._clock())

    def next_token_in(self, priority: Priority = Priority.SEND) -> float:
        """Seconds until a token is free for `priority` (ignoring callers already waiting)."""
        return self._bucket.time_until_token(self._clock(), self._keep(priority))

    def _keep(self, priority: int) -> float:
        if priority <= Priority.SEND or self._send_reserve <= 0 or math.isinf(self._bucket.calls_per_hour):
            return 0.0
        return self._send_reserve * self._bucket.capacity

    # ------------------------------------------------------------------ taking tokens

    async def acquire(self, priority: Priority = Priority.STATUS) -> None:
        """Wait for a token. Cancelling the wait (or a timeout around it) takes nothing."""
        waiter = _Waiter(int(priority), next(self._seq))
        bisect.insort(self._queue, waiter, key=lambda w: w.key)
        try:
            while True:
                if self._queue[0] is waiter:
                    wait = self._bucket.try_take(self._clock(), self._keep(waiter.priority))
                    if wait <= 0:
                        return
                    # Sleep until the token is due, unless woken earlier (budget changed, a
                    # higher-priority caller arrived and we must re-check our place, ...).
                    waiter.wake.clear()
                    try:
                        async with asyncio.timeout(wait):
                            await waiter.wake.wait()
                    except TimeoutError:
                        pass
                else:
                    waiter.wake.clear()
                    await waiter.wake.wait()
        finally:
            # Runs on success, cancellation and errors alike: no stale waiter blocks the queue.
            self._queue.remove(waiter)
            self.wake()

    def wake(self) -> None:
        """Make the first waiter re-check the bucket now (after the budget or the clock changed)."""
        if self._queue:
            self._queue[0].wake.set()

    # ------------------------------------------------------------------ feedback from RapidPro

    def throttled(self, retry_after: float | None) -> float:
        """RapidPro answered 429: pause every caller. Returns the pause in seconds.

        With Retry-After the pause is exactly that; without it we back off on our own, the delay
        growing with each 429 until a call gets through (`record_success`). Several calls in
        flight when the window filled all come back 429: only the first one grows the backoff.
        """
        now = self._clock()
        if retry_after is not None and retry_after >= 0:
            delay = float(retry_after)
        else:
            remaining = self.paused_for()
            if remaining > 0:
                return remaining
            delay = self._backoff.next_delay()
        self._bucket.pause_until(now + delay, now)
        log.warning("rapidpro_throttled", retry_after=retry_after, pause_s=round(delay, 3))
        self.wake()
        return max(delay, self.paused_for())

    def record_success(self) -> None:
        """A call got an answer other than 429: the next 429 backs off from the start again."""
        self._backoff.reset()

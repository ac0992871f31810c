"""The RapidPro call budget, shared by every caller in the process (sending, in-doubt lookups,
status tracking, the channel watcher, incoming reconciliation).

RapidPro limits calls per *workspace* over a sliding one-hour window (3,600/h today), and answers
429 beyond it. Pacing ourselves is cheaper than running into 429s, so every call first takes a
token here:

- `TokenBucket` is the pure arithmetic (time is an argument). It earns tokens at budget/3600 per
  second and saves up to the whole hourly budget while unused, so a quiet worker may burst as
  RapidPro's window allows. It does *not* start full: a restarted worker cannot know what its
  predecessor used of the window, so it starts with ten seconds' worth and goes on at the rate.
  A 429 pauses it, and it resumes with one token, again at the rate.
- `RateBudget` is the async gate in front of it. Callers go in priority order (sends, then
  in-doubt lookups, then status tracking, then the channel watcher, then incoming
  reconciliation), with two rules that
  keep both promises — sends first, and no one else stalled:
  * the *send reserve*: a minute of the rate (60 tokens at 3,600/h) that status tracking, the
    channel watcher and reconciliation leave in the bucket, so a burst of sends finds tokens;
  * the *floor*: a tenth of the rate is guaranteed to the other callers even while the reserve
    is refilling or sends are waiting (a second, small bucket earns it). After a 429 this is what
    gives in-doubt lookups and status tracking calls within seconds instead of after the reserve
    has refilled; under sustained sending it keeps a tenth of the calls for them.
  Waiters sleep until their token is due or something changes — never polling.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from transitions.rapidpro import rate_scopes
from worker.backoff import Backoff
from worker.logs import get_logger

log = get_logger(__name__)

Clock = Callable[[], float]

# Float rounding must not turn "a token is due now" into an endless series of tiny waits.
_EPSILON = 1e-9

HOUR = 3600.0
START_SECONDS = 10.0  # a fresh bucket holds this many seconds' worth of the rate
SEND_RESERVE_SECONDS = 60.0  # what status tracking and reconciliation leave for sends
FLOOR_SHARE = 0.1  # of the rate, guaranteed to the callers after sends
FLOOR_BURST_SECONDS = 60.0  # the floor saves up at most this many seconds of its rate


class Priority(IntEnum):
    """Lower goes first. A waiting caller blocks every caller of a lower priority (higher value),
    except through the floor (see the module docstring)."""

    SEND = 0  # outgoing broadcasts: a person is waiting for that SMS
    IN_DOUBT = 1  # looking up a send in doubt: it may be an SMS nobody received
    STATUS = 2  # status tracking
    # The channel watcher: one call every CHANNEL_CHECK_INTERVAL (at most 12 an hour by default),
    # after status tracking, before reconciliation, whose catch-up pages must not hold back the
    # one reading that says whether the phone is still sending at all.
    CHANNELS = 3
    INCOMING = 4  # incoming reconciliation (the webhook is the main path; this is the safety net)


class TokenBucket:
    """A token bucket on an explicit clock: every method takes `now` (seconds, any origin).

    `calls_per_hour` may be `math.inf` (no limit, e.g. for benchmarks). `burst_seconds` bounds
    what is saved up (default: the whole hour, as RapidPro's window allows); `start_seconds` is
    what the bucket holds before its first use (at least one token).
    """

    def __init__(self, calls_per_hour: float, *, burst_seconds: float = HOUR,
                 start_seconds: float = START_SECONDS, window: bool = False) -> None:
        _check_rate(calls_per_hour)
        self._calls_per_hour = float(calls_per_hour)
        self._burst_seconds = burst_seconds
        self._tokens = self._start_level(start_seconds)
        self._updated: float | None = None  # last refill time; None until first used
        self._paused_until: float | None = None
        # With `window`, also RapidPro's own count: the times of the last hour's calls (DRF's
        # throttle history), at most `calls_per_hour` of them in any hour.
        self._window: deque[float] | None = deque() if window else None

    @property
    def calls_per_hour(self) -> float:
        return self._calls_per_hour

    @property
    def capacity(self) -> float:
        # At least one token, or a budget under one call per burst could never be used.
        return max(self.rate * self._burst_seconds, 1.0)

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._calls_per_hour / HOUR

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def paused_until(self) -> float | None:
        return self._paused_until

    def try_take(self, now: float, keep: float = 0.0) -> float:
        """Take one token, leaving at least `keep` in the bucket: 0.0 when taken, else the
        seconds until one can be (nothing taken)."""
        wait = self.time_until_token(now, keep)
        if wait > 0:
            return wait
        self._paused_until = None
        self._tokens = max(0.0, self._tokens - 1.0)
        if self._window is not None:
            self._window.append(now)
        return 0.0

    def seed_window(self, call_times: list[float], now: float) -> None:
        """RapidPro's count rebuilt (e.g. from the ledger's sends): `call_times` on this bucket's
        clock. The bucket then starts full and the window alone says what is left of the hour,
        slot by slot as those calls age out — exactly what RapidPro will allow."""
        if self._window is None:
            self._window = deque()
        self._window = deque(sorted([*self._window, *(t for t in call_times if now - HOUR < t <= now)]))
        self._tokens = self.capacity if not math.isinf(self._calls_per_hour) else math.inf
        self._updated = now

    def window_count(self, now: float) -> int | None:
        """Calls in the last hour by this bucket's count (None without a window)."""
        if self._window is None:
            return None
        self._expire(now)
        return len(self._window)

    def _expire(self, now: float) -> None:
        assert self._window is not None
        while self._window and self._window[0] <= now - HOUR:
            self._window.popleft()

    def _window_wait(self, now: float, keep: float) -> float:
        if self._window is None or math.isinf(self._calls_per_hour):
            return 0.0
        self._expire(now)
        over = len(self._window) + 1 + math.ceil(keep - _EPSILON) - int(self._calls_per_hour)
        if over <= 0:
            return 0.0
        # The `over`-th oldest call must leave the hour first.
        index = min(over, len(self._window)) - 1
        return max(self._window[index] + HOUR - now, _EPSILON)

    def time_until_token(self, now: float, keep: float = 0.0) -> float:
        """What `try_take(now, keep)` would answer, without taking anything."""
        if self._paused_until is not None and now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        window = self._window_wait(now, keep)
        if self._tokens >= 1.0 + keep - _EPSILON:
            return window
        return max((1.0 + keep - self._tokens) / self.rate, _EPSILON, window)

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
            self._tokens = self._start_level(START_SECONDS)  # from unlimited to limited: start over
        else:
            self._tokens = min(self._tokens, self.capacity)

    def _start_level(self, seconds: float) -> float:
        if math.isinf(self._calls_per_hour):
            return math.inf
        return min(self.capacity, max(1.0, self.rate * seconds))

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


@dataclass(frozen=True)
class Grant:
    """Who may take a token now (`waiter` set, `floor` when through the floor), or how long until
    anyone may (`wait`)."""

    waiter: _Waiter | None
    floor: bool = False
    wait: float = 0.0


class BudgetPolicy:
    """The pure decision: which waiter takes the next token, on an explicit clock.

    The main bucket is RapidPro's budget; the floor bucket earns `floor_share` of its rate and
    lets the first non-send waiter take a main token when the queue order or the send reserve
    would hold it back. Every token taken comes out of the main bucket, so together the callers
    never exceed the budget.
    """

    def __init__(self, calls_per_hour: float, *, send_reserve_seconds: float = SEND_RESERVE_SECONDS,
                 floor_share: float = FLOOR_SHARE, start_seconds: float = START_SECONDS,
                 window: bool = False) -> None:
        if not 0.0 <= floor_share < 1.0:
            raise ValueError(f"floor_share must be in [0, 1), not {floor_share!r}")
        if send_reserve_seconds < 0:
            raise ValueError(f"send_reserve_seconds must be >= 0, not {send_reserve_seconds!r}")
        self.main = TokenBucket(calls_per_hour, start_seconds=start_seconds, window=window)
        self._floor_share = floor_share
        self._floor = TokenBucket(self._floor_rate(calls_per_hour), burst_seconds=FLOOR_BURST_SECONDS,
                                  start_seconds=FLOOR_BURST_SECONDS) if floor_share > 0 else None
        self._send_reserve_seconds = send_reserve_seconds

    def _floor_rate(self, calls_per_hour: float) -> float:
        return calls_per_hour * self._floor_share

    def set_calls_per_hour(self, calls_per_hour: float, now: float) -> None:
        self.main.set_calls_per_hour(calls_per_hour, now)
        if self._floor is not None:
            self._floor.set_calls_per_hour(self._floor_rate(calls_per_hour), now)

    def keep(self, priority: int) -> float:
        """Tokens a caller of `priority` must leave in the main bucket: the send reserve for
        status tracking and reconciliation; nothing for sends and in-doubt lookups."""
        if priority <= Priority.IN_DOUBT or math.isinf(self.main.calls_per_hour):
            return 0.0
        return min(self.main.rate * self._send_reserve_seconds, max(self.main.capacity - 1.0, 0.0))

    def _floor_wait(self, now: float) -> float:
        if self._floor is None or math.isinf(self.main.calls_per_hour):
            return math.inf
        return max(self.main.time_until_token(now), self._floor.time_until_token(now))

    def time_until_token(self, priority: int, now: float) -> float:
        """Seconds until a caller of `priority` could take a token, ignoring other waiters."""
        normal = self.main.time_until_token(now, self.keep(priority))
        if priority <= Priority.SEND:
            return normal
        return min(normal, self._floor_wait(now))

    def choose(self, queue: list[_Waiter], now: float) -> Grant:
        """`queue` sorted by (priority, arrival). Takes nothing: `take` does, for the grant."""
        if not queue:
            return Grant(None, wait=math.inf)
        head = queue[0]
        other = next((w for w in queue if w.priority > Priority.SEND), None)
        floor_ready = other is not None and self._floor_wait(now) <= 0
        head_wait = self.main.time_until_token(now, self.keep(head.priority))
        if head_wait <= 0:
            # The head goes, unless it is a send that would leave no token for a waiting caller
            # the floor is owed to (the floor must hold under sustained sending too).
            if head.priority <= Priority.SEND and floor_ready and other is not None \
                    and self.main.tokens(now) < 2.0 + self.keep(other.priority) - _EPSILON:
                return Grant(other, floor=True)
            return Grant(head)
        if floor_ready:
            return Grant(other, floor=True)
        wait = head_wait
        if other is not None:
            wait = min(wait, self._floor_wait(now))
        return Grant(None, wait=wait)

    def take(self, grant: Grant, now: float) -> None:
        assert grant.waiter is not None
        taken = self.main.try_take(now, 0.0 if grant.floor else self.keep(grant.waiter.priority))
        assert taken == 0.0, "a granted token must be there"
        if grant.floor and self._floor is not None:
            self._floor.try_take(now)


class RateBudget:
    """The process-wide RapidPro call budget (async; see the module docstring).

    The first waiter in (priority, arrival) order keeps the timer: it sleeps until the next grant
    is due. Whoever runs the decision wakes the waiter it grants; the others sleep on their own
    event. A newcomer that outranks the first waiter simply becomes first.
    """

    def __init__(
        self,
        calls_per_hour: float = 3600,
        *,
        clock: Clock = time.monotonic,
        throttle_backoff: Backoff | None = None,
        send_reserve_seconds: float = SEND_RESERVE_SECONDS,
        floor_share: float = FLOOR_SHARE,
        start_seconds: float = START_SECONDS,
        window: bool = False,
        scope: str = "v2",
    ) -> None:
        self._clock = clock
        self.scope = scope  # RapidPro's throttle scope this budget paces (for logs and metrics)
        self._policy = BudgetPolicy(calls_per_hour, send_reserve_seconds=send_reserve_seconds,
                                    floor_share=floor_share, start_seconds=start_seconds, window=window)
        self._bucket = self._policy.main
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
        self._policy.set_calls_per_hour(value, self._clock())
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
        return self._policy.time_until_token(priority, self._clock())

    # ------------------------------------------------------------------ taking tokens

    async def acquire(self, priority: Priority = Priority.STATUS) -> None:
        """Wait for a token. Cancelling the wait (or a timeout around it) takes nothing."""
        waiter = _Waiter(int(priority), next(self._seq))
        bisect.insort(self._queue, waiter, key=lambda w: w.key)
        try:
            while True:
                now = self._clock()
                grant = self._policy.choose(self._queue, now)
                if grant.waiter is waiter:
                    self._policy.take(grant, now)
                    return
                waiter.wake.clear()
                if grant.waiter is not None:
                    grant.waiter.wake.set()  # it takes its token when it runs
                if self._queue[0] is waiter and grant.waiter is None:
                    # Sleep until a grant is due, unless woken earlier (budget changed, a
                    # caller arrived or left, ...).
                    try:
                        async with asyncio.timeout(grant.wait if math.isfinite(grant.wait) else None):
                            await waiter.wake.wait()
                    except TimeoutError:
                        pass
                else:
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
        # `Retry-After: 0` says nothing about when a slot frees (RapidPro's throttle rounds its wait
        # and the window may be overshot): backed off like a 429 without one, never retried at once.
        if retry_after is not None and retry_after > 0:
            delay = float(retry_after)
        else:
            remaining = self.paused_for()
            if remaining > 0:
                return remaining
            delay = self._backoff.next_delay()
        self._bucket.pause_until(now + delay, now)
        log.warning("rapidpro_throttled", scope=self.scope, retry_after=retry_after, pause_s=round(delay, 3))
        self.wake()
        return max(delay, self.paused_for())

    def record_success(self) -> None:
        """A call got an answer other than 429: the next 429 backs off from the start again."""
        self._backoff.reset()

    def seed_window(self, call_times: list[float]) -> None:
        """Calls RapidPro counted in the last hour (this budget's clock): see TokenBucket.seed_window."""
        self._bucket.seed_window(call_times, self._clock())
        self.wake()

    def window_count(self) -> int | None:
        return self._bucket.window_count(self._clock())

    def health(self) -> dict[str, Any]:
        return {"calls_per_hour": self.calls_per_hour, "remaining": round(self.tokens(), 1),
                "waiting": self.waiting, "paused_s": round(self.paused_for(), 1),
                "used_last_hour": self.window_count()}


# ---------------------------------------------------------------------- per RapidPro scope

# Where callers of a priority mostly call: sends and in-doubt lookups broadcasts.json, status
# tracking and reconciliation messages.json, the channel watcher channels.json.
_PRIORITY_PATHS = {
    Priority.SEND: "/api/v2/broadcasts.json",
    Priority.IN_DOUBT: "/api/v2/broadcasts.json",
    Priority.STATUS: "/api/v2/messages.json",
    Priority.CHANNELS: "/api/v2/channels.json",
    Priority.INCOMING: "/api/v2/messages.json",
}


class ScopedBudget:
    """One `RateBudget` per RapidPro throttle scope (transitions/rapidpro/rate_scopes.py): a call takes a
    token of the scope RapidPro counts it in, a 429 pauses that scope only, and each scope's
    rate follows the server's version, learnt from the first broadcast it answers with (or the
    operator's override of that scope). Every scope's budget also keeps RapidPro's own count of
    the hour (a sliding window); the broadcasts' one is rebuilt at start from the ledger's sends
    of the last hour (`seed_sends`).

    Priorities keep their meaning inside a scope: sends before in-doubt lookups before the rest,
    with the send reserve and the floor where sends share the scope; in `v2.messages` (no sends)
    status tracking goes before reconciliation with nothing held back.
    """

    def __init__(self, *, overrides: Mapping[str, int | None] | None = None, every: int | None = None,
                 clock: Clock = time.monotonic, version: str = "unknown",
                 throttle_backoff: Callable[[], Backoff] | None = None) -> None:
        self._overrides = dict(overrides or {})
        self._every = every
        self._clock = clock
        self.version = rate_scopes.VERSIONS[version]
        self.version_name = version
        rates = rate_scopes.scope_rates(self.version, self._overrides, every)
        self._budgets: dict[str, RateBudget] = {}
        for scope in rate_scopes.SCOPES:
            sends_here = scope != rate_scopes.MESSAGES
            self._budgets[scope] = RateBudget(
                rates[scope], clock=clock, window=True, scope=scope,
                throttle_backoff=throttle_backoff() if throttle_backoff else None,
                send_reserve_seconds=SEND_RESERVE_SECONDS if sends_here else 0.0,
                floor_share=FLOOR_SHARE if sends_here else 0.0)
        self._sends: list[float] | None = None  # the ledger's sends of the last hour, on `clock`

    # ---- which budget

    def scope_of(self, path: str) -> str:
        return rate_scopes.scope_of_path(path, self.version)

    def for_path(self, path: str) -> RateBudget:
        return self._budgets[self.scope_of(path)]

    def scope(self, name: str) -> RateBudget:
        return self._budgets[name]

    def for_priority(self, priority: Priority) -> RateBudget:
        return self.for_path(_PRIORITY_PATHS[Priority(priority)])

    def active_scopes(self) -> list[str]:
        """The scopes the worker's calls are counted in on this server."""
        return [s for s in rate_scopes.SCOPES if s != rate_scopes.BROADCASTS
                or self.version.broadcasts_scope == rate_scopes.BROADCASTS]

    def rates(self) -> dict[str, float]:
        return {scope: self._budgets[scope].calls_per_hour for scope in self.active_scopes()}

    # ---- the server's version and the ledger

    def observe_broadcast(self, broadcast: object) -> None:
        """A broadcast RapidPro answered with: its fields tell the version, hence the rates."""
        version = rate_scopes.version_of_broadcast(broadcast)
        if version is None or version == self.version_name:
            return
        if self.version_name != "unknown" and version == "before-2025":
            return  # a listing of old rows on a newer server proves nothing
        self.set_version(version)

    def set_version(self, version: str) -> None:
        before = self.version.broadcasts_scope
        self.version = rate_scopes.VERSIONS[version]
        self.version_name = version
        for scope, rate in rate_scopes.scope_rates(self.version, self._overrides, self._every).items():
            if self._budgets[scope].calls_per_hour != rate:
                self._budgets[scope].calls_per_hour = rate
        if self.version.broadcasts_scope != before:
            self._seed(self._budgets[self.version.broadcasts_scope])
        log.info("rapidpro_rates", version=self.version.name, rates=self.rates(),
                 broadcasts_scope=self.version.broadcasts_scope)

    def seed_sends(self, call_times: list[float]) -> None:
        """The ledger's sends (claims) of the last hour, on this budget's clock."""
        now = self._clock()
        self._sends = [t for t in call_times if now - HOUR < t <= now]
        self._seed(self.for_path(_PRIORITY_PATHS[Priority.SEND]))

    def _seed(self, budget: RateBudget) -> None:
        if self._sends is not None:  # read from the ledger (none: the whole hour is left)
            budget.seed_window(self._sends)

    # ---- what callers used to ask the single budget (the scope of their usual calls)

    def next_token_in(self, priority: Priority = Priority.SEND) -> float:
        return self.for_priority(priority).next_token_in(priority)

    def paused_for(self, priority: Priority = Priority.STATUS) -> float:
        return self.for_priority(priority).paused_for()

    def health(self) -> dict[str, Any]:
        return {"version": self.version.name, "broadcasts_scope": self.version.broadcasts_scope,
                "scopes": {scope: self._budgets[scope].health() for scope in self.active_scopes()}}

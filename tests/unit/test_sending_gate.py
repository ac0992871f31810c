"""The sending gate's pause: one failure episode grows the backoff once, a pause is never
shortened, and the first successful probe after it resumes sending for everyone."""

from __future__ import annotations

import asyncio

from worker.outgoing.sender import Admission, SendingGate

FIRST_STEP = 1.0  # the gate's backoff base: the first pause is at most this long


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail_in_flight(gate: SendingGate, clock: Clock, count: int, retry_after: float | None = None) -> None:
    """`count` sends that all started before the first of them failed, failing one after another."""
    started = clock.now
    for _ in range(count):
        clock.now += 0.01
        gate.failed("RapidProServerError: 500", retry_after, started)


def test_eight_failures_of_one_episode_pause_for_the_first_step_only():
    clock = Clock()
    gate = SendingGate(clock)
    fail_in_flight(gate, clock, 8)
    pause = gate.paused_until - gate.paused_at
    assert 0 < pause <= FIRST_STEP
    assert gate.admit() is Admission.CLOSED


def test_first_probe_after_the_pause_resumes_for_everyone():
    clock = Clock()
    gate = SendingGate(clock)
    fail_in_flight(gate, clock, 8)
    clock.now = gate.paused_until
    assert gate.admit() is Admission.PROBE
    assert gate.admit() is Admission.CLOSED  # one probe at a time
    gate.succeeded(clock.now)
    assert gate.admit() is Admission.OPEN
    assert gate.remaining_pause() == 0
    # The next episode starts from the first step again.
    fail_in_flight(gate, clock, 3)
    assert gate.paused_until - gate.paused_at <= FIRST_STEP


def test_a_failed_probe_grows_the_backoff_once_per_probe():
    clock = Clock()
    gate = SendingGate(clock)
    fail_in_flight(gate, clock, 8)
    pauses = [gate.paused_until - gate.paused_at]
    for _ in range(4):
        clock.now = gate.paused_until
        assert gate.admit() is Admission.PROBE
        gate.failed("RapidProServerError: 500", None, clock.now)
        pauses.append(gate.paused_until - gate.paused_at)
    # Full jitter: step n lies in [base·2ⁿ/2, base·2ⁿ].
    for n, pause in enumerate(pauses):
        assert FIRST_STEP * 2 ** n / 2 <= pause <= FIRST_STEP * 2 ** n


def test_a_late_failure_from_before_the_pause_does_not_grow_or_shorten_it():
    clock = Clock()
    gate = SendingGate(clock)
    started_early = clock.now
    clock.now += 0.1
    gate.failed("RateLimited", 30.0, clock.now)  # Retry-After 30 s
    until = gate.paused_until
    clock.now += 0.5
    gate.failed("RapidProServerError: 500", None, started_early)  # smaller, older: changes nothing
    assert gate.paused_until == until
    gate.failed("RateLimited", 45.0, started_early)  # longer Retry-After: extends
    assert gate.paused_until == clock.now + 45.0


def test_a_new_failure_never_shortens_a_longer_pause():
    clock = Clock()
    gate = SendingGate(clock)
    gate.failed("RateLimited", 60.0, clock.now)
    until = gate.paused_until
    clock.now += 1
    gate.failed("RapidProServerError: 500", None, clock.now)  # a new step, but ~1-2 s only
    assert gate.paused_until == until


def test_a_success_from_before_the_pause_does_not_end_it():
    clock = Clock()
    gate = SendingGate(clock)
    started_early = clock.now
    clock.now += 0.1
    gate.failed("RapidProServerError: 500", None, clock.now)
    gate.succeeded(started_early)
    assert gate.admit() is Admission.CLOSED


def test_a_probe_without_a_verdict_lets_the_next_caller_probe():
    clock = Clock()
    gate = SendingGate(clock)
    fail_in_flight(gate, clock, 2)
    clock.now = gate.paused_until
    assert gate.admit() is Admission.PROBE
    gate.end_probe()  # e.g. its message turned out to be claimed elsewhere, or in doubt
    assert gate.admit() is Admission.PROBE


async def test_waiters_wake_when_the_probe_succeeds():
    clock = Clock()
    gate = SendingGate(clock)
    fail_in_flight(gate, clock, 8)
    clock.now = gate.paused_until
    assert gate.admit() is Admission.PROBE
    waiters = [asyncio.create_task(gate.wait()) for _ in range(5)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    gate.succeeded(clock.now)
    async with asyncio.timeout(1):  # woken by the success, not by PROBE_WAIT
        await asyncio.gather(*waiters)
    assert gate.admit() is Admission.OPEN


async def test_wait_returns_at_once_when_the_gate_would_admit():
    gate = SendingGate(Clock())
    async with asyncio.timeout(1):
        await gate.wait()

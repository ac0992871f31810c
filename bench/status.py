"""Status tracking benchmark (run by hand, not in CI): freshness and cost, next to CHT's polling.

    .venv/bin/python bench/status.py [--interval 60] [--other 20000] [--slow-hours 192]
                                     [--workloads busy,quiet] [--quick] [--seed 1]

Simulated time: one FakeClock drives the tests' fake RapidPro, the shared rate budget (3,600 calls
an hour, sends first, a tenth kept for them) and the tracker, so a week passes in minutes whatever
the machine's load. CouchDB is real (the local test server in memory, or TEST_COUCH_URL).

Two workloads, run one after the other and printed side by side:

- **busy**: 1,000 messages sent in an hour (real POSTs to the fake, each written to CouchDB as a CHT
  task in `received-by-gateway`), while 20,000 messages of other traffic are created in the same
  workspace over the same hour (a flow, another app: rows every folder sync must read past).
  Followed until nothing is tracked (final, or past the 7-day horizon).
- **quiet**: 20 messages an hour for `--slow-hours` (192 by default: past the 7-day horizon, so the
  hourly tier is at its full size), no other traffic.

Every message (ours and the other traffic) is created at its own moment (drawn at random over
the hour), and moves through RapidPro statuses on its own timeline
(wired within a minute, sent within two more, delivered after minutes to hours, lognormal; some
fail, some go through `errored` and are retried, some are read). 10% go through a channel that
never reports delivery (an Android relayer: its messages stay `sent`), the rest through one that
does; RapidPro names each message's channel. A round runs on every STATUS_POLL_INTERVAL of
simulated time.

Printed per workload:
- freshness: the delay from a RapidPro status change to the CHT task showing it (or a later state),
  p50/p90/p99 per tier by the message's age at the change (fresh < 15 min, up to an hour, older);
- status calls (GET messages.json + GET broadcasts.json, counted by the fake) per message brought
  to a final state, and per hour;
- the same for CHT's way on the same timelines: one call per non-final message per minute from a
  minute after sending (computed, not made: ~10^6 requests), so its delay is the wait for the
  next poll.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import heapq
import math
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.env import parse_couch_url
from config.settings import Settings
from playground.fake_rapidpro import DEFAULT_TOKEN, FakeClock, FakeRapidPro, RecordedBroadcast
from tests.support.couch_fixtures import create_db, delete_db, seed_design_docs
from tests.support.couchserver import CouchTestServer
from transitions.cht.timestamps import parse_time
from transitions.status.rules import Policy
from worker.couch.client import CouchServer
from worker.logs import configure_logging
from worker.outgoing.ledger import Ledger
from worker.rapidpro.budget import RateBudget
from worker.rapidpro.client import RapidProClient
from worker.status.tracker import StatusTracker

FINAL = {"delivered", "read", "failed"}
TIERS = ("fresh", "warm", "old")
TIER_NAMES = {"fresh": "fresh (<15 min)", "warm": "up to an hour", "old": "older"}
CHT_POLL = 60.0
# The workspace's two channels: one reports delivery, the other (an Android relayer) never does.
AGGREGATOR = ("6a1f6e0c-1b2d-4c3e-9f4a-5b6c7d8e9f01", "SMS aggregator")
RELAYER = ("0d9a4b1c-2e3f-4a5b-8c7d-6e5f4a3b2c1d", "Android relayer")


def channel_of(steps: list[tuple[float, str]]) -> tuple[str, str]:
    """The channel a message with this timeline goes through: neither delivered nor failed means
    the relayer, which never reports delivery."""
    return AGGREGATOR if any(status in FINAL for _, status in steps) else RELAYER
STATUS_PATHS = ("/api/v2/messages.json", "/api/v2/broadcasts.json")


class StaticToken:
    async def get(self) -> str | None:
        return DEFAULT_TOKEN


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timeline(rng: random.Random, stuck_share: float) -> list[tuple[float, str]]:
    """(seconds after sending, RapidPro status) steps of one message."""
    t = rng.uniform(5, 60)
    steps = [(t, "wired")]
    roll = rng.random()
    if roll < 0.04:  # the channel refuses it
        return [*steps, (t + rng.uniform(30, 600), "failed")]
    if roll < 0.08:  # an attempt fails, RapidPro retries it
        t += rng.uniform(10, 120)
        steps.append((t, "errored"))
        t += rng.uniform(300, 1800)
        steps.append((t, "wired"))
    t += rng.uniform(10, 120)
    steps.append((t, "sent"))
    if rng.random() < stuck_share:
        return steps  # no delivery report, ever
    t += min(rng.lognormvariate(math.log(180), 1.5), 3 * 86400)
    steps.append((t, "delivered"))
    if rng.random() < 0.1:
        steps.append((t + rng.uniform(60, 7200), "read"))
    return steps


def tier_of(age: float) -> str:
    return "fresh" if age < 900 else ("warm" if age < 3600 else "old")


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Workload:
    name: str
    rate: float  # our messages an hour
    hours: float  # of sending
    other: int  # messages of other traffic in the workspace
    other_over: float  # seconds over which the other traffic is created


@dataclass
class Figures:
    workload: Workload
    sent: int = 0
    final: int = 0
    expired: int = 0
    simulated_days: float = 0.0
    wall_s: float = 0.0
    calls: int = 0
    calls_by_hour: Counter[int] = field(default_factory=Counter)
    cht_calls: float = 0.0
    cht_calls_by_hour: Counter[int] = field(default_factory=Counter)
    delays: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TIERS})
    cht_delays: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TIERS})
    never_shown: Counter[str] = field(default_factory=Counter)
    budget_short: int = 0
    throttled: int = 0
    detail: str = ""


async def simulate(work: Workload, args: argparse.Namespace, server_url: str) -> Figures:
    rng = random.Random(args.seed)
    name = f"bench-status-{uuid.uuid4().hex[:6]}"
    db_url = f"{server_url}/{name}"
    create_db(db_url)
    create_db(f"{db_url}-rapidpro")
    seed_design_docs(db_url)
    interval = args.interval
    # Rounds on the interval grid, a little after it (as the daemon's loop runs them).
    clock = FakeClock(start=time.time())
    fake = FakeRapidPro(clock=clock)  # its wall time follows the clock from here
    clock.advance(math.ceil(clock() / 3600) * 3600 + 0.5 - clock())
    fake.rate_limit = 10**9  # our own budget paces us; RapidPro's window is not the subject here
    fake.advance_scripts_on_poll = False
    await fake.start()
    couch = CouchServer(parse_couch_url(db_url), timeout=30.0)
    medic = couch.db(name)
    # A worker that has run for a while: the hour's budget saved up (a fresh one starts with ten
    # seconds of it, and the sends of the first simulated minute would not wait on a FakeClock).
    budget = RateBudget(args.calls_per_hour, clock=clock, start_seconds=3600.0)
    client = RapidProClient(budget, timeout=10.0)
    settings = Settings(outgoing_service="rapidpro", rapidpro_url=fake.url)
    policy = Policy(interval=interval, horizon=args.horizon)
    ledger = Ledger(couch.db(f"{name}-rapidpro"), clock=clock)
    tracker = StatusTracker(medic=medic, own_db=couch.db(f"{name}-rapidpro"), client=client,
                            token=StaticToken(), settings=lambda: settings, clock=clock, policy=policy,
                            max_wait=0.0)
    figures = Figures(work)
    started_wall = time.perf_counter()
    try:
        start = clock()
        count = round(work.rate * work.hours)
        send_at = sorted(start + rng.uniform(0, work.hours * 3600) for _ in range(count))
        other_at = sorted(start + rng.uniform(0, work.other_over) for _ in range(work.other))
        events: list[tuple[float, int, int, str]] = []  # (time, seq, broadcast id, status)
        seq = 0
        by_id: dict[int, RecordedBroadcast] = {}
        ours: dict[int, tuple[float, list[tuple[float, str]]]] = {}  # id → (sent, [(t, status)])
        next_send = next_other = 0
        end_limit = start + work.hours * 3600 + policy.horizon + 2 * 86400

        docs: list[dict] = []

        def next_happening() -> tuple[float, int] | None:
            """The earliest of: a status change, a message of other traffic, one of ours."""
            upcoming = [(events[0][0], 0)] if events else []
            upcoming += [(other_at[next_other], 1)] if next_other < len(other_at) else []
            upcoming += [(send_at[next_send], 2)] if next_send < len(send_at) else []
            return min(upcoming) if upcoming else None

        async def happen_until(target: float) -> None:
            """Everything due up to `target`, each at its own moment (RapidPro dates it then)."""
            nonlocal seq, next_other, next_send
            while (happening := next_happening()) is not None and happening[0] <= target:
                when, kind = happening
                clock.advance(max(0.0, when - clock()))
                if kind == 0:
                    _, _, bid, status = heapq.heappop(events)
                    fake.set_statuses_of(by_id[bid], status)
                elif kind == 1:
                    other_steps = timeline(rng, args.stuck)
                    b = fake.add_outgoing(f"tel:+2557{next_other:08d}", channel=channel_of(other_steps))
                    by_id[b.id] = b
                    for offset, status in other_steps:
                        seq += 1
                        heapq.heappush(events, (when + offset, seq, b.id, status))
                    next_other += 1
                else:
                    steps = [(when + offset, status) for offset, status in timeline(rng, args.stuck)]
                    channel = channel_of(steps)
                    fake.channel_for = lambda _urn, channel=channel: channel
                    to, message_uuid = f"+2547{next_send:08d}", str(uuid.uuid4())
                    # The worker's own send: a claim, the POST, the outcome (worker/outgoing/sender.py).
                    claim = await ledger.claim(message_uuid, f"msg-{next_send:06d}", f"tel:{to}")
                    assert claim is not None
                    sent = await client.send_broadcast(fake.url, DEFAULT_TOKEN, f"tel:{to}", "hi",
                                                       max_wait=0.0)
                    assert sent.id is not None
                    await ledger.record_sent(claim, sent.id, sent.uuid, sent.status)
                    by_id[sent.id] = fake.broadcasts[-1]
                    ours[sent.id] = (when, steps)
                    for at, status in steps:
                        seq += 1
                        heapq.heappush(events, (at, seq, sent.id, status))
                    docs.append({"_id": f"msg-{next_send:06d}", "type": "data_record", "tasks": [{
                        "state": "received-by-gateway", "state_details": "Queued", "gateway_ref": sent.id,
                        "messages": [{"uuid": message_uuid, "to": to, "message": "hi"}],
                        "state_history": [{"state": "pending", "timestamp": iso(when - 1)},
                                          {"state": "received-by-gateway", "state_details": "Queued",
                                           "timestamp": iso(when)}]}]})
                    next_send += 1
            clock.advance(max(0.0, target - clock()))
            budget.wake()

        now = start
        while now < end_limit:
            await happen_until(now)
            if docs:  # the sends since the last round, as CHT's docs show them
                await medic.bulk(docs)
                docs.clear()
            result = await tracker.run_round()
            if next_send == len(send_at) and not tracker.tracked() and result.finished:
                break
            step = interval
            checks = [i.next_check for i in tracker.tracked().values()]
            if not checks or min(checks) > now + interval:
                # Nothing due for a while: jump to the next event, send or check, on the grid.
                upcoming = checks
                upcoming += [send_at[next_send]] if next_send < len(send_at) else []
                upcoming += [other_at[next_other]] if next_other < len(other_at) else []
                upcoming += [events[0][0]] if events else []
                if upcoming:
                    step = max(interval, math.floor((min(upcoming) - now) / interval) * interval)
                    if result.retry_in is not None:
                        step = min(step, max(interval, math.ceil(result.retry_in / interval) * interval))
            now += step
        end = clock()

        for request in fake.requests:
            if request.method == "GET" and request.path in STATUS_PATHS:
                figures.calls += 1
                figures.calls_by_hour[int((request.time - start) // 3600)] += 1
        s = tracker.stats
        figures.sent, figures.final, figures.expired = len(ours), s.final, s.expired
        figures.budget_short, figures.throttled = s.budget_short, s.throttled
        figures.detail = (f"{s.syncs} syncs / {s.sync_pages} pages, {s.broadcast_queries} per-broadcast "
                          f"queries, {s.broadcast_lookups} broadcast lookups, {s.rounds} rounds")
        figures.simulated_days = (end - start) / 86400

        # What CHT showed when: the history timestamps of every task.
        shown: dict[int, list[float]] = {}
        rows = (await medic.all_docs(include_docs=True)).get("rows", [])
        for row in rows:
            doc = row.get("doc") or {}
            if not doc.get("_id", "").startswith("msg-"):
                continue
            task = doc["tasks"][0]
            times = [t for h in task["state_history"][2:]
                     if (t := parse_time(h.get("timestamp"))) is not None]
            shown[int(task["gateway_ref"])] = sorted(times)
        for bid, (sent, steps) in ours.items():
            final_at = next((t for t, status in steps if status in FINAL), None)
            times = shown.get(bid, [])
            for when, _status in steps:
                if final_at is not None and when > final_at:
                    break  # after the final state: neither CHT nor the worker follows it
                tier = tier_of(when - sent)
                index = bisect.bisect_left(times, when)
                if index < len(times):
                    figures.delays[tier].append(times[index] - when)
                else:
                    figures.never_shown[tier] += 1  # e.g. past the horizon
                polls = math.ceil((when - sent) / CHT_POLL)
                figures.cht_delays[tier].append(sent + polls * CHT_POLL - when)
            # CHT polls from a minute after sending until a poll sees the final state (or for ever).
            stop = sent + math.ceil((final_at - sent) / CHT_POLL) * CHT_POLL if final_at is not None else end
            polls_total = max(0, math.floor((min(stop, end) - sent) / CHT_POLL))
            figures.cht_calls += polls_total
            first_poll, last_poll = sent + CHT_POLL, sent + polls_total * CHT_POLL
            hour = int((first_poll - start) // 3600)
            while polls_total and start + hour * 3600 <= last_poll:
                lo = max(first_poll, start + hour * 3600)
                hi = min(last_poll, start + (hour + 1) * 3600 - 1e-9)
                if hi >= lo:
                    figures.cht_calls_by_hour[hour] += math.floor((hi - sent) / CHT_POLL) - \
                        math.ceil((lo - sent) / CHT_POLL) + 1
                hour += 1
    finally:
        await client.close()
        await fake.stop()
        await couch.close()
        for db in (db_url, f"{db_url}-rapidpro"):
            delete_db(db)
    figures.wall_s = time.perf_counter() - started_wall
    return figures


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def hourly(by_hour: Counter[int], first: int, last: int) -> tuple[float, int]:
    """Mean and peak calls per hour over hours first..last."""
    values = [by_hour.get(h, 0) for h in range(first, last + 1)]
    return (sum(values) / len(values), max(values)) if values else (0.0, 0)


def report(results: list[Figures], args: argparse.Namespace) -> None:
    interval = args.interval
    width = 30
    heads = [f.workload.name for f in results]
    print()
    print(f"{'':<34}" + "".join(f"{h:<{width}}" for h in heads) + "target")

    def line(label: str, cells: list[str], target: str = "") -> None:
        print(f"{label:<34}" + "".join(f"{c:<{width}}" for c in cells) + target)

    line("workload", [f"{f.workload.rate:g}/h for {f.workload.hours:g} h, other {f.workload.other}"
                      for f in results])
    line("simulated / wall time", [f"{f.simulated_days:.1f} days / {f.wall_s:.0f} s" for f in results])
    line("sent / final / left at horizon", [f"{f.sent} / {f.final} / {f.expired}" for f in results])
    targets = {"fresh": f"p99 <= {3 * interval:.0f} s (3 x interval)",
               "warm": f"p99 <= {6 * interval:.0f} s (6 x interval)", "old": "within an hour"}
    for tier in TIERS:
        cells = []
        for f in results:
            d = f.delays[tier]
            cells.append(f"{fmt(pct(d, 50))} / {fmt(pct(d, 90))} / {fmt(pct(d, 99))} (n={len(d)})")
        line(f"freshness {TIER_NAMES[tier]} p50/p90/p99", cells, targets[tier])
        line("   CHT (1 call/message/min)", [
            f"{fmt(pct(f.cht_delays[tier], 50))} / {fmt(pct(f.cht_delays[tier], 90))} / "
            f"{fmt(pct(f.cht_delays[tier], 99))}" for f in results])
    line("changes never shown (horizon)", [str(sum(f.never_shown.values())) for f in results])
    line("status calls per final message", [f"{f.calls / max(f.final, 1):.3f} ({f.calls} calls)"
                                            for f in results], "<= 3 at 1,000/h")
    line("   CHT", [f"{f.cht_calls / max(f.final, 1):.1f} ({f.cht_calls:.0f} calls)" for f in results])
    # The first hour after sending ends holds the fresh and up-to-an-hour tiers; the rest is the
    # hourly tier, which the messages that never report delivery keep busy until the horizon.
    early = [sum(f.calls_by_hour.get(h, 0) for h in range(math.ceil(f.workload.hours) + 1)) for f in results]
    line("   of which sending time + 1 h", [f"{e / max(f.final, 1):.3f} ({e} calls)"
                                            for f, e in zip(results, early, strict=True)])
    sending = [max(0, math.ceil(f.workload.hours) - 1) for f in results]

    def while_sending(by_hour: Counter[int], last: int) -> str:
        mean, peak = hourly(by_hour, 0, last)
        return f"mean {mean:.0f}, peak {peak} ({peak / args.calls_per_hour:.0%})"  # of the budget

    line("status calls/hour while sending", [while_sending(f.calls_by_hour, s)
                                             for f, s in zip(results, sending, strict=True)],
         "<= 40% of the budget at 1,000/h; <= 120/h at 20/h")
    line("   CHT", ["mean {:.0f}, peak {}".format(*hourly(f.cht_calls_by_hour, 0, s))
                   for f, s in zip(results, sending, strict=True)])
    line("status calls/hour after sending", [
        "mean {:.0f}, peak {}".format(*hourly(f.calls_by_hour, s + 1, s + 1 + int(args.horizon // 3600)))
        for f, s in zip(results, sending, strict=True)])
    line("   CHT", ["mean {:.0f}, peak {}".format(*hourly(f.cht_calls_by_hour, s + 1,
                                                          s + 1 + int(args.horizon // 3600)))
                   for f, s in zip(results, sending, strict=True)])
    line("rounds cut short (budget / 429)", [f"{f.budget_short} / {f.throttled}" for f in results])
    for f in results:
        print(f"{f.workload.name}: {f.detail}")


async def run(args: argparse.Namespace) -> None:
    configure_logging("error", "console")
    external = os.environ.get("TEST_COUCH_URL", "").strip().rstrip("/")
    server = None if external else CouchTestServer().start()
    server_url = external or server.url  # type: ignore[union-attr]
    workloads = [Workload("busy", 1000, 1, args.other, 3600.0),
                 Workload("quiet", 20, args.slow_hours, 0, 0.0)]
    if args.quick:
        workloads = [Workload("busy", 1000, 1, args.other // 10, 3600.0), Workload("quiet", 20, 24, 0, 0.0)]
    workloads = [w for w in workloads if w.name in args.workloads.split(",")]
    results = []
    try:
        for work in workloads:
            results.append(await simulate(work, args, server_url))
            print(f"{work.name}: done in {results[-1].wall_s:.0f} s wall", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    print(f"STATUS_POLL_INTERVAL={args.interval:g} s, horizon {args.horizon / 86400:g} days, "
          f"budget {args.calls_per_hour}/h (sends first), {args.stuck:.0%} never report delivery")
    report(results, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=60.0, help="STATUS_POLL_INTERVAL")
    parser.add_argument("--horizon", type=float, default=7 * 86400.0, help="STATUS_TRACKING_HORIZON")
    parser.add_argument("--other", type=int, default=20_000, help="other traffic in the busy workload")
    parser.add_argument("--slow-hours", type=float, default=192.0, help="hours of the quiet workload")
    parser.add_argument("--stuck", type=float, default=0.1, help="share never reporting delivery")
    parser.add_argument("--calls-per-hour", type=int, default=3600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smaller workloads, to try the script")
    parser.add_argument("--workloads", default="busy,quiet", help="which to run (comma-separated)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

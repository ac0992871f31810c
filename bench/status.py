"""Status tracking benchmark (run by hand, not in CI).

    .venv/bin/python bench/status.py [--messages 1000] [--send-over 3600] [--stuck 0.1] [--seed 1]

Simulated time: one FakeClock drives the tests' fake RapidPro, the shared rate budget and the
tracker, so a week passes in a minute or two. CouchDB is real (the local test server in memory,
or TEST_COUCH_URL).

`--messages` broadcasts are sent (real POSTs to the fake) spread over `--send-over` seconds, each
written to CouchDB as a CHT task in `received-by-gateway`. Each message then moves through
RapidPro statuses on its own timeline (queued → wired within a minute → sent within two →
delivered after minutes to hours; some fail, some go through `errored` and are retried, some are
read; `--stuck` never report delivery and stay `sent`, as on many channels). The tracker runs a
round every STATUS_POLL_INTERVAL (60 s) of simulated time until nothing is tracked any more
(final, or past the 7-day horizon).

Printed: RapidPro status calls (GET messages.json + GET broadcasts.json, counted by the fake)
per message brought to a final state — next to the same figure for CHT's way, one call per
non-final message per minute, counted in the same run on the same timelines (the calls CHT's
poller would make; making them for real would take ~10^6 requests).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.env import parse_couch_url
from config.settings import Settings
from tests.support.couch_fixtures import create_db, delete_db, seed_design_docs
from tests.support.couchserver import CouchTestServer
from tests.support.fake_rapidpro import DEFAULT_TOKEN, FakeClock, FakeRapidPro
from transitions.status import Policy, parse_time
from worker.couch import CouchServer
from worker.logs import configure_logging
from worker.rapidpro import RapidProClient
from worker.ratelimit import RateBudget
from worker.status import StatusTracker

TICK = 60.0
FINAL = {"delivered", "read", "failed"}


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


async def run(args: argparse.Namespace) -> None:
    configure_logging("warning", "console")
    rng = random.Random(args.seed)
    external = os.environ.get("TEST_COUCH_URL", "").strip().rstrip("/")
    server = None if external else CouchTestServer().start()
    server_url = external or server.url  # type: ignore[union-attr]
    name = f"bench-status-{uuid.uuid4().hex[:6]}"
    db_url = f"{server_url}/{name}"
    create_db(db_url)
    create_db(f"{db_url}-rapidpro")
    seed_design_docs(db_url)
    clock = FakeClock(start=time.time())
    fake = FakeRapidPro(clock=clock)
    fake.rate_limit = 10**9
    fake.advance_scripts_on_poll = False
    await fake.start()
    couch = CouchServer(parse_couch_url(db_url), timeout=30.0)
    medic = couch.db(name)
    budget = RateBudget(10**9, clock=clock)
    client = RapidProClient(budget, timeout=10.0)
    settings = Settings(outgoing_service="rapidpro", rapidpro_url=fake.url)
    policy = Policy(min_interval=args.min_interval, backoff_factor=args.factor,
                    max_interval=args.max_interval, slack=args.slack)
    tracker = StatusTracker(medic=medic, own_db=couch.db(f"{name}-rapidpro"), client=client,
                            token=StaticToken(), settings=lambda: settings, clock=clock, policy=policy,
                            max_wait=0.0)
    started_wall = time.perf_counter()
    try:
        start = clock()
        send_at = sorted(start + rng.uniform(0, args.send_over) for _ in range(args.messages))
        events: list[tuple[float, int, str]] = []  # (time, broadcast id, status)
        final_at: dict[int, float] = {}  # broadcast → when RapidPro reached a final status
        sent_at: dict[int, float] = {}
        ends_at: dict[int, float] = {}  # broadcast → when it will reach a final status (if ever)
        cht_calls = 0.0
        cht_calls_final_only = 0.0
        next_send = 0
        spent: list[tuple[float, int]] = []  # (seconds since start, calls) per round
        end_limit = start + args.send_over + policy.horizon + 2 * 86400

        now = start
        while now < end_limit:
            # 1. RapidPro moves messages on
            while events and events[0][0] <= now:
                _, bid, status = heapq.heappop(events)
                fake.set_status(bid, status)
                if status in FINAL:
                    final_at.setdefault(bid, now)
            # 2. CHT's sender sends what is due (real POSTs), written as CHT tasks
            docs = []
            while next_send < len(send_at) and send_at[next_send] <= now:
                b = await client.send_broadcast(fake.url, DEFAULT_TOKEN, f"tel:+2547{next_send:08d}", "hi")
                sent_at[b.id] = now
                for offset, status in timeline(rng, args.stuck):
                    heapq.heappush(events, (now + offset, b.id, status))
                    if status in FINAL:
                        ends_at.setdefault(b.id, now + offset)
                docs.append({"_id": f"msg-{next_send:05d}", "type": "data_record", "tasks": [{
                    "state": "received-by-gateway", "state_details": "Queued", "gateway_ref": b.id,
                    "messages": [{"uuid": str(uuid.uuid4()), "to": "+254700000000", "message": "hi"}],
                    "state_history": [{"state": "pending", "timestamp": iso(now - 1)},
                                      {"state": "received-by-gateway", "state_details": "Queued",
                                       "timestamp": iso(now)}]}]})
                next_send += 1
            if docs:
                await medic.bulk(docs)
            # 3. a status round
            result = await tracker.run_round()
            if result.calls:
                spent.append((now - start, result.calls))
            if next_send == len(send_at) and not tracker.tracked() and result.finished:
                break
            # 4. CHT's poller: one call per sent, non-final message per minute
            step = TICK
            if not events or events[0][0] > now + TICK:
                # Nothing happens for a while: jump to the next event or check, on the tick grid.
                upcoming = [events[0][0]] if events else []
                upcoming += [item.next_check for item in tracker.tracked().values()]
                if next_send < len(send_at):
                    upcoming.append(send_at[next_send])
                if upcoming:
                    step = max(TICK, math.ceil((min(upcoming) - now) / TICK) * TICK)
            in_flight = [bid for bid in sent_at if bid not in final_at]
            cht_calls += len(in_flight) * step / TICK
            cht_calls_final_only += sum(1 for bid in in_flight if bid in ends_at) * step / TICK
            now = clock.advance(step)
            budget.wake()

        status_calls = fake.call_count("GET", "/api/v2/messages.json") + \
            fake.call_count("GET", "/api/v2/broadcasts.json")
        final = tracker.stats.final
        rows = (await medic.all_docs(include_docs=True)).get("rows", [])
        latencies = []
        states: dict[str, int] = {}
        for row in rows:
            doc = row.get("doc") or {}
            if not doc.get("_id", "").startswith("msg-"):
                continue
            task = doc["tasks"][0]
            states[task["state"]] = states.get(task["state"], 0) + 1
            bid = task["gateway_ref"]
            if task["state"] in ("delivered", "failed") and bid in final_at:
                recorded = parse_time(task["state_history"][-1]["timestamp"])
                if recorded is not None:
                    latencies.append(recorded - final_at[bid])
        s = tracker.stats
        print(f"messages: {args.messages} sent over {args.send_over / 3600:.1f} h; "
              f"simulated {(clock() - start) / 86400:.2f} days in {time.perf_counter() - started_wall:.0f} s")
        print(f"task states at the end: {dict(sorted(states.items()))}")
        print(f"brought to a final state: {final}; left at the 7-day horizon: {s.expired}; "
              f"given up (unknown to RapidPro): {s.missing_gave_up}")
        print(f"worker: {status_calls} status calls = {status_calls / max(final, 1):.3f} per final message "
              f"({s.syncs} syncs / {s.sync_pages} pages, {s.broadcast_queries} per-broadcast queries, "
              f"{s.broadcast_lookups} broadcast lookups, {s.rounds} rounds)")
        print(f"CHT (1 call per non-final message per minute): {cht_calls:.0f} calls = "
              f"{cht_calls / max(final, 1):.1f} per final message; counting only messages that do "
              f"reach a final state: {cht_calls_final_only / max(final, 1):.1f} per final message")
        if args.verbose:
            buckets = [(0, 3600), (3600, 7200), (7200, 4 * 3600), (4 * 3600, 12 * 3600),
                       (12 * 3600, 86400), (86400, 3 * 86400), (3 * 86400, 30 * 86400)]
            for lo, hi in buckets:
                calls = [c for t, c in spent if lo <= t < hi]
                print(f"  calls {lo / 3600:>5.0f}-{hi / 3600:<4.0f} h: {sum(calls):4d} "
                      f"in {len(calls)} rounds")
        if latencies:
            ordered = sorted(latencies)
            pct = {p: ordered[int(p / 100 * (len(ordered) - 1))] / 60 for p in (90, 99)}
            print(f"worker delay from RapidPro's final status to the CHT task: median "
                  f"{statistics.median(latencies) / 60:.1f} min, p90 {pct[90]:.1f} min, p99 "
                  f"{pct[99]:.1f} min, max {ordered[-1] / 60:.1f} min (CHT: up to 1 min)")
    finally:
        await client.close()
        await fake.stop()
        await couch.close()
        for db in (db_url, f"{db_url}-rapidpro"):
            delete_db(db)
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--send-over", type=float, default=3600.0, help="seconds over which they are sent")
    parser.add_argument("--stuck", type=float, default=0.1, help="share never reporting delivery")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="calls per period")
    defaults = Policy()
    parser.add_argument("--min-interval", type=float, default=defaults.min_interval)
    parser.add_argument("--factor", type=float, default=defaults.backoff_factor)
    parser.add_argument("--max-interval", type=float, default=defaults.max_interval)
    parser.add_argument("--slack", type=float, default=defaults.slack)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

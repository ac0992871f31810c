"""Backlog drain benchmark (run by hand, not in CI): how fast a backlog of pending messages goes
out once RapidPro takes messages again, against the floor N ÷ the rate of the scope RapidPro
counts sends in, with status tracking running beside it.

    .venv/bin/python bench/backlog.py [--messages 3000] [--profile 2023 current] [--floor-seconds 150]

For each RapidPro version profile (playground/rapidpro_profiles.py; "2023": broadcasts in their
own scope at 36,000/h; "current": broadcasts share `v2` at 3,600/h) it starts the local
CouchDB-protocol test server (or uses TEST_COUCH_URL: the figures that count are Apache
CouchDB's), the fake RapidPro and the worker in this process; writes --messages pending docs
while RapidPro is down (500s), then brings it back and times the drain.

The state at the end of the outage is a window already full: the fake's sliding hour (DRF's
history) holds an hour of sends at the scope's rate, as after sending steadily before the
outage, and the worker's budget is given the same sends (what it rebuilds from its ledger at
start). Slots then free at exactly the rate, so N ÷ rate is the real floor. With an empty window
RapidPro would take the whole backlog at once and there would be no floor to compare with.

**Rates are scaled**: 3,000 messages at 3,600/h take 50 minutes. Every scope's rate is
multiplied by the same factor in the fake and in the worker (per-scope overrides), chosen so the
floor lasts --floor-seconds; the ratio drain ÷ floor is what is judged (target <= 1.2), not the
seconds. Status tracking polls messages.json in its own scope throughout: the bench reports its
calls during the drain and whether sending ever paused it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.env import load_config
from playground.fake_rapidpro import DEFAULT_TOKEN, MESSAGES_PATH, FakeRapidPro
from tests.support.couch_fixtures import couch_request, create_db, delete_db, put_settings, seed_design_docs
from tests.support.couchserver import CouchTestServer
from transitions.rapidpro import rate_scopes
from worker.app import Worker
from worker.logs import configure_logging
from worker.rapidpro.budget import HOUR

TARGET = 1.2
VERSIONS = {"2023": "before-2025", "current": "current"}


def pending_doc(doc_id: str) -> dict:
    return {"_id": doc_id, "type": "data_record",
            "tasks": [{"state": "pending", "messages": [
                {"uuid": str(uuid.uuid4()), "to": "+254700000001", "message": doc_id}]}]}


async def drain(profile: str, server_url: str, args: argparse.Namespace) -> dict[str, float]:
    table = rate_scopes.VERSIONS[VERSIONS[profile]]
    send_scope = table.broadcasts_scope
    real_rate = table.rate(send_scope)
    scale = args.messages * HOUR / real_rate / args.floor_seconds
    rates = {scope: round(table.rate(scope) * scale) for scope in rate_scopes.SCOPES}
    rate = rates[send_scope]
    floor = args.messages / (rate / HOUR)

    db_url = f"{server_url}/bench-backlog-{uuid.uuid4().hex[:6]}"
    create_db(db_url)
    seed_design_docs(db_url)  # CHT's views, which status tracking reads
    fake = FakeRapidPro(profile=profile)
    fake.rate_limits = {scope: rates[scope] for scope in fake.rate_limits}
    fake.outage = "error"
    await fake.start()
    put_settings(db_url, {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake.url}}})
    config = load_config({
        "COUCH_URL": db_url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "LOG_LEVEL": "warning",
        "RAPIDPRO_BROADCASTS_CALLS_PER_HOUR": str(rates[rate_scopes.BROADCASTS]),
        "RAPIDPRO_MESSAGES_CALLS_PER_HOUR": str(rates[rate_scopes.MESSAGES]),
        "RAPIDPRO_V2_CALLS_PER_HOUR": str(rates[rate_scopes.V2]),
        "STATUS_POLL_INTERVAL": "2", "CONCURRENCY": "8"})
    worker = Worker(config)
    task = asyncio.create_task(worker.run())
    try:
        await worker.ready.wait()
        worker.budget.set_version(VERSIONS[profile])
        docs = [pending_doc(f"backlog-{i:05d}") for i in range(args.messages)]
        for start in range(0, len(docs), 500):
            status, _ = couch_request("POST", f"{db_url}/_bulk_docs", {"docs": docs[start:start + 500]})
            assert status == 201
        # The outage: RapidPro answers 500 while the backlog builds up; the worker pauses sending.
        await fake.wait_for(lambda: worker.sender.gate.paused_until is not None, timeout=60)
        # A full hour at the rate, as after steady sending before the outage, on both sides.
        now_fake, now_worker = fake.clock(), time.monotonic()
        step = HOUR / rate
        history = [now_fake - HOUR + (i + 1) * step for i in range(rate)]
        fake.fill_window(send_scope, history)
        worker.budget.seed_sends([t - now_fake + now_worker for t in history])
        before_broadcasts = len(fake.broadcasts)
        status_calls_before = fake.calls[("GET", MESSAGES_PATH)]
        fake.outage = None
        t0 = time.monotonic()
        status_paused = 0.0
        while len(fake.broadcasts) < before_broadcasts + args.messages:
            await asyncio.sleep(0.5)
            # Status tracking asks about everything sent so far, now and again (a rescan asks at
            # once, whatever its schedule): its messages.json calls go on beside the sends.
            if int((time.monotonic() - t0) * 2) % 4 == 0:
                worker.status.trigger_rescan()
            status_paused = max(status_paused, worker.budget.scope(rate_scopes.MESSAGES).paused_for())
            if time.monotonic() - t0 > floor * 3 + 120:
                raise TimeoutError(f"{len(fake.broadcasts) - before_broadcasts} of {args.messages} sent")
        elapsed = time.monotonic() - t0
        first = min(b.time for b in fake.broadcasts[before_broadcasts:]) - t0
        if os.environ.get("BENCH_DEBUG"):
            print("   calls:", dict(fake.calls), "429s at:",
                  [round(r.time - t0, 2) for r in fake.requests if r.status == 429],
                  "window:", worker.budget.scope(send_scope).window_count(), "tokens:",
                  round(worker.budget.scope(send_scope).tokens(), 1))
        texts = [b.raw_text for b in fake.broadcasts]
        throttled = sum(1 for r in fake.requests if r.status == 429)
        return {"scale": scale, "rate": rate, "floor": floor, "elapsed": elapsed,
                "duplicates": len(texts) - len(set(texts)), "status_calls": fake.calls[("GET", MESSAGES_PATH)]
                - status_calls_before, "status_paused": status_paused, "429s": throttled,
                "real_rate": real_rate, "scope": send_scope, "first": first}
    finally:
        worker.stop()
        await task
        await fake.stop()
        delete_db(db_url)
        delete_db(db_url + "-rapidpro")


async def run(args: argparse.Namespace) -> None:
    external = os.environ.get("TEST_COUCH_URL", "").strip().rstrip("/")
    server = None if external else CouchTestServer().start()
    server_url = external or server.url  # type: ignore[union-attr]
    print(f"backlog of {args.messages} pending messages after an outage, window full at the rate; "
          f"CouchDB: {'Apache CouchDB (TEST_COUCH_URL)' if external else 'local test server'}")
    print(f"rates scaled so each floor lasts ~{args.floor_seconds:.0f} s: the ratio is what is judged")
    try:
        for profile in args.profile:
            r = await drain(profile, server_url, args)
            ratio = r["elapsed"] / r["floor"]
            verdict = "ok" if ratio <= TARGET and not r["duplicates"] and not r["status_paused"] else "MISSED"
            print(f"  {profile}: scope {r['scope']} {r['real_rate']:,}/h (scaled x{r['scale']:.2f} -> "
                  f"{r['rate']:,}/h); floor {r['floor']:.1f} s, drained in {r['elapsed']:.1f} s (first send "
                  f"{r['first']:.1f} s after RapidPro came back: the sending gate's probe), ratio "
                  f"{ratio:.3f} (target <= {TARGET}) {verdict}; duplicates {r['duplicates']}; "
                  f"429s {r['429s']}; "
                  f"status tracking: {r['status_calls']} messages.json calls during the drain, paused by "
                  f"sending {r['status_paused']:.1f} s")
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--profile", nargs="+", default=["2023", "current"], choices=sorted(VERSIONS))
    parser.add_argument("--floor-seconds", type=float, default=150.0)
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull:  # the worker's log lines would drown the figures
        configure_logging("warning", "json", stream=devnull)
        asyncio.run(run(args))


if __name__ == "__main__":
    main()

"""Outgoing dispatch benchmark (run by hand, not in CI).

    .venv/bin/python bench/outgoing.py [--rate 50] [--seconds 20] [--burst 2000]

Starts the local CouchDB-protocol test server (in memory; or uses TEST_COUCH_URL: the figures
that count are those of an Apache CouchDB 3, where every write is durable), the tests'
fake RapidPro, and the worker in this process, then measures:

1. steady load: docs with one pending message written at --rate per second; for each, the time
   from the start of the doc's PUT to (a) the broadcast reaching the fake RapidPro and (b) the
   task's `received-by-gateway` state being visible in CouchDB (claim, POST, outcome and task
   write included) — p50 / p99 / max;
2. throughput: --burst pending docs written at once, unlimited budget; sends per second.

The worker, the fake RapidPro and the load generator share one event loop and the machine's
cores with the CouchDB server, so the figures are an upper bound on what the worker costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import percentile
from config.env import load_config
from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from tests.support.couch_fixtures import couch_request, create_db, delete_db, put_settings
from tests.support.couchserver import CouchTestServer
from tests.support.waiting import eventually
from worker.app import Worker
from worker.logs import configure_logging


def pending_doc(doc_id: str, text: str) -> dict:
    return {"_id": doc_id, "type": "data_record",
            "tasks": [{"state": "pending", "messages": [
                {"uuid": str(uuid.uuid4()), "to": "+254700000001", "message": text}]}]}


async def watch_states(db_url: str, since: str, seen: dict[str, float], stop: asyncio.Event) -> None:
    """Follows _changes and notes when each doc's task first shows received-by-gateway."""
    from urllib.parse import urlsplit
    parts = urlsplit(db_url)
    auth = aiohttp.BasicAuth(parts.username or "", parts.password or "")
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
    async with aiohttp.ClientSession(auth=auth) as session:
        while not stop.is_set():
            params = {"feed": "longpoll", "since": since, "include_docs": "true", "timeout": "1000"}
            async with session.get(f"{base}/_changes", params=params) as response:
                body = json.loads(await response.read())
            now = time.monotonic()
            for row in body.get("results", []):
                tasks = (row.get("doc") or {}).get("tasks") or []
                if tasks and tasks[0].get("state") == "received-by-gateway":
                    seen.setdefault(row["id"], now)
            since = body["last_seq"]


async def run(args: argparse.Namespace) -> None:
    external = os.environ.get("TEST_COUCH_URL", "").strip().rstrip("/")
    server = None if external else CouchTestServer().start()
    server_url = external or server.url  # type: ignore[union-attr]
    db_url = f"{server_url}/bench-outgoing-{uuid.uuid4().hex[:6]}"
    create_db(db_url)
    fake = FakeRapidPro()
    fake.rate_limit = 10**9
    await fake.start()
    put_settings(db_url, {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake.url}}})
    worker = Worker(load_config({"COUCH_URL": db_url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN,
                                 "RAPIDPRO_CALLS_PER_HOUR": str(10**9), "LOG_LEVEL": "warning",
                                 "CONCURRENCY": str(args.concurrency)}))
    task = asyncio.create_task(worker.run())
    await worker.ready.wait()
    try:
        # --- 1. steady load
        started_at: dict[str, float] = {}
        state_seen: dict[str, float] = {}
        stop = asyncio.Event()
        since = (await worker.medic.changes("now", limit=1, include_docs=False)).last_seq
        watcher = asyncio.create_task(watch_states(db_url, since, state_seen, stop))
        total = int(args.rate * args.seconds)
        interval = 1 / args.rate
        begin = time.monotonic()
        async with aiohttp.ClientSession() as session:
            from urllib.parse import urlsplit
            parts = urlsplit(db_url)
            auth = aiohttp.BasicAuth(parts.username or "", parts.password or "")
            base = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"

            async def put_one(i: int) -> None:
                doc_id = f"steady-{i:05d}"
                started_at[doc_id] = time.monotonic()
                async with session.put(f"{base}/{doc_id}", json=pending_doc(doc_id, doc_id), auth=auth) as r:
                    assert r.status == 201, await r.text()

            puts = []
            for i in range(total):
                await asyncio.sleep(max(0.0, begin + i * interval - time.monotonic()))
                puts.append(asyncio.create_task(put_one(i)))
            await asyncio.gather(*puts)
        await fake.wait_for(lambda: len(fake.broadcasts) >= total, timeout=60)
        await eventually(lambda: len(state_seen) >= total, timeout=60)
        stop.set()
        await watcher
        to_broadcast = [(b.time - started_at[b.raw_text]) * 1000 for b in fake.broadcasts]
        to_state = [(state_seen[d] - started_at[d]) * 1000 for d in started_at if d in state_seen]
        dupes = total - len({b.raw_text for b in fake.broadcasts})
        print(f"steady {args.rate}/s for {args.seconds}s: {total} messages, "
              f"{len(fake.broadcasts)} broadcasts, {dupes} duplicates")
        for name, values, target in (
                ("pending -> broadcast at RapidPro", to_broadcast, "   target p50 <= 25 ms, p99 <= 150 ms"),
                ("pending -> task received-by-gateway", to_state, "")):
            print(f"  {name}: p50 {statistics.median(values):.1f} ms, p99 {percentile(values, 99):.1f} ms, "
                  f"max {max(values):.1f} ms (n={len(values)}){target}")

        # --- 2. throughput with an unlimited budget
        before = len(fake.broadcasts)
        docs = [pending_doc(f"burst-{i:05d}", f"burst-{i:05d}") for i in range(args.burst)]
        t0 = time.monotonic()
        for start in range(0, len(docs), 500):
            status, _ = couch_request("POST", f"{db_url}/_bulk_docs", {"docs": docs[start:start + 500]})
            assert status == 201
        await fake.wait_for(lambda: len(fake.broadcasts) >= before + args.burst, timeout=300)
        elapsed = time.monotonic() - t0
        burst_times = sorted(b.time for b in fake.broadcasts[before:])
        print(f"burst of {args.burst}: all sent in {elapsed:.2f} s -> {args.burst / elapsed:.0f} sends/s "
              f"(first to last broadcast {burst_times[-1] - burst_times[0]:.2f} s, "
              f"concurrency {args.concurrency})")
    finally:
        worker.stop()
        await task
        await fake.stop()
        delete_db(db_url)
        for suffix in ("-rapidpro",):
            delete_db(db_url + suffix)
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull:  # the worker's log lines would drown the figures
        configure_logging("warning", "json", stream=devnull)
        asyncio.run(run(args))


if __name__ == "__main__":
    main()

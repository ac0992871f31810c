"""Catch-up benchmark (run by hand, not in CI).

    .venv/bin/python bench/catchup.py [--changes 20000] [--batch-size 200] [--catchup-batch-size 2000]
                                      [--repeat 3] [--pad-kb 16]

Writes --changes docs into a fresh CHT-like `medic` database (CHT's design docs, settings that
put the worker in charge of sending, a RapidPro stand-in that is never called): mostly contacts
and reports no transition acts on, some reports whose messages were delivered long ago. Then:

1. the worker starts from a checkpoint just before those changes and catches up: the time from
   its feed starting to every change done (the checkpoint watermark at the end of the range), and
   the process's resident memory (current and peak);
2. the same range read raw: one `GET _changes?include_docs=true&since=…` with aiohttp, JSON parsed
   (and, for reference, the same range paged at the worker's batch size).

The figure that counts is raw time / worker time (1.0: catching up costs what reading costs).
Against the project's in-memory test server, or an Apache CouchDB 3 given as TEST_COUCH_URL.
The raw read runs after the worker's memory was measured, so its own memory is not counted;
with --repeat, each run is a process of its own, so no run's peak memory is another's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import medians_line
from config.env import load_config
from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from tests.support.couch_fixtures import (
    couch_request,
    create_db,
    delete_db,
    load_design_docs,
    put_settings,
    seed_design_docs,
)
from tests.support.couchserver import CouchTestServer
from worker.app import Worker
from worker.feed.checkpoint import CHECKPOINT_ID
from worker.logs import configure_logging

TARGET_RATIO = 0.8
TARGET_RSS_MB = 100


def cht_doc(i: int, pad_kb: int = 0) -> dict[str, Any]:
    """A doc shaped like most of a CHT feed: contacts and reports, a few with old, final messages."""
    parent = {"_id": f"hc-{i % 50}", "parent": {"_id": f"district-{i % 5}"}}
    kind = i % 10
    if kind < 4:
        return {"_id": f"person-{i:06d}", "type": "person", "name": f"Person {i}", "sex": "female",
                "date_of_birth": "1990-01-01", "phone": f"+2547{i:08d}", "parent": parent,
                "reported_date": 1_700_000_000_000 + i}
    doc: dict[str, Any] = {
        "_id": f"report-{i:06d}", "type": "data_record", "form": "pregnancy", "content_type": "xml",
        "contact": parent, "reported_date": 1_700_000_000_000 + i, "from": f"+2547{i:08d}",
        "fields": {"patient_id": f"{i:05d}", "lmp_date": "2024-01-01", "edd": "2024-10-07",
                   "danger_signs": "none", "visit": {"count": i % 7, "notes": "routine visit " * 4}}}
    if pad_kb:  # large reports (long free-text answers, attachments' metadata)
        doc["fields"]["notes"] = "x" * (pad_kb * 1024)
    if kind == 9:  # a report whose reminder went out long ago: matches the sender, nothing to send
        doc["tasks"] = [{"state": "delivered", "messages": [
            {"uuid": str(uuid.UUID(int=i)), "to": f"+2547{i:08d}", "message": "Reminder: visit due"}],
            "state_history": [{"state": "delivered", "timestamp": "2024-01-02T00:00:00.000Z"}]}]
    return doc


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, MB."""
    fields: dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


async def raw_read(db_url: str, since: Any, limit: int, page: int | None) -> tuple[float, int]:
    """Seconds to read (and parse) `limit` changes after `since`, in one request or in pages."""
    parts = urlsplit(db_url)
    auth = aiohttp.BasicAuth(parts.username or "", parts.password or "")
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
    rows = 0
    async with aiohttp.ClientSession(auth=auth, skip_auto_headers=("Accept-Encoding",)) as session:
        started = time.perf_counter()
        while rows < limit:
            params = {"since": since if isinstance(since, str) else json.dumps(since),
                      "include_docs": "true", "limit": str(min(page or limit, limit - rows))}
            async with session.get(f"{base}/_changes", params=params) as response:
                body = json.loads(await response.read())
            if not body["results"]:
                break
            rows += len(body["results"])
            since = body["last_seq"]
        return time.perf_counter() - started, rows


async def run(args: argparse.Namespace, server_url: str) -> dict[str, float]:
    db_url = f"{server_url}/bench-catchup-{uuid.uuid4().hex[:6]}"
    create_db(db_url)
    create_db(db_url + "-rapidpro")
    seed_design_docs(db_url)
    fake = FakeRapidPro()
    await fake.start()
    put_settings(db_url, {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake.url}}})
    status, body = couch_request("GET", f"{db_url}/_changes?since=now&limit=1")
    since = body["last_seq"]
    for start in range(0, args.changes, 1000):
        docs = [cht_doc(i, args.pad_kb) for i in range(start, min(args.changes, start + 1000))]
        status, _ = couch_request("POST", f"{db_url}/_bulk_docs", {"docs": docs}, timeout=120)
        assert status == 201, status
    # CouchDB 3 indexes design docs in the background after writes (ken), and CHT queries its
    # views itself: bring them up to date first, so neither reading nor the worker pays for it.
    for ddoc in load_design_docs():
        if ddoc.get("views"):
            view = next(iter(ddoc["views"]))
            couch_request("GET", f"{db_url}/{ddoc['_id']}/_view/{view}?limit=0", timeout=600)
    # The worker resumes from just before the docs, as after a stop of some hours.
    couch_request("PUT", f"{db_url}-rapidpro/_local/{CHECKPOINT_ID}", {"seq": since})
    rss_before, _ = rss_mb()

    worker = Worker(load_config({
        "COUCH_URL": db_url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "LOG_LEVEL": "warning",
        "CHANGES_BATCH_SIZE": str(args.batch_size),
        "CHANGES_CATCHUP_BATCH_SIZE": str(args.catchup_batch_size), "STATUS_POLL_INTERVAL": "3600"}))
    task = asyncio.create_task(worker.run())
    try:
        await worker.ready.wait()
        began = time.perf_counter()
        assert worker.dispatcher is not None
        stats = worker.dispatcher.stats
        while True:
            done = stats.processed + stats.skipped
            if done >= args.changes and len(worker.dispatcher.watermark) == 0:
                break
            await asyncio.sleep(0.01)
        worker_s = time.perf_counter() - began
        rss_now, rss_peak = rss_mb()
        processed, skipped = stats.processed, stats.skipped
    finally:
        worker.stop()
        await task
        await fake.stop()
    raw_s, raw_rows = await raw_read(db_url, since, args.changes, None)
    paged_s, _ = await raw_read(db_url, since, args.changes, args.batch_size)
    paged_catchup_s, _ = await raw_read(db_url, since, args.changes, args.catchup_batch_size)
    delete_db(db_url)
    delete_db(db_url + "-rapidpro")
    ratio = raw_s / worker_s
    print(f"catch-up of {args.changes} changes (batch {args.batch_size}, catch-up batch "
          f"{args.catchup_batch_size}): worker {worker_s:.2f} s "
          f"({args.changes / worker_s:.0f} changes/s; processed {processed}, skipped {skipped})")
    print(f"  raw _changes?include_docs=true read of the same range: {raw_s:.2f} s ({raw_rows} rows); "
          f"paged by {args.batch_size}: {paged_s:.2f} s; "
          f"by {args.catchup_batch_size}: {paged_catchup_s:.2f} s")
    print(f"  ratio raw/worker {ratio:.2f} (target >= {TARGET_RATIO})   "
          f"RSS {rss_now:.0f} MB now, peak {rss_peak:.0f} MB (before the worker {rss_before:.0f} MB; "
          f"target <= {TARGET_RSS_MB} MB)")
    return {"worker_s": worker_s, "raw_s": raw_s, "ratio": ratio, "rss_peak": rss_peak}


def repeat_in_processes(args: argparse.Namespace) -> None:
    """Each run in a process of its own (fresh memory figures); then the medians."""
    results = []
    for _ in range(args.repeat):
        command = [sys.executable, __file__, "--changes", str(args.changes), "--batch-size",
                   str(args.batch_size), "--catchup-batch-size", str(args.catchup_batch_size),
                   "--pad-kb", str(args.pad_kb), "--json"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        lines = output.strip().splitlines()
        print("\n".join(lines[:-1]), flush=True)
        results.append(json.loads(lines[-1]))
    print(medians_line(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--catchup-batch-size", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pad-kb", type=int, default=0, help="make each report this many KB larger")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one run, figures as JSON
    args = parser.parse_args()
    if args.repeat > 1:
        repeat_in_processes(args)
        return
    with open(os.devnull, "w") as devnull:  # the worker's log lines would drown the figures
        configure_logging("warning", "json", stream=devnull)
        external = os.environ.get("TEST_COUCH_URL", "").strip().rstrip("/")
        if external:
            result = asyncio.run(run(args, external))
        else:
            with CouchTestServer() as server:
                result = asyncio.run(run(args, server.url))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Benchmark of the incoming-SMS webhook (run by hand, not in CI).

    .venv/bin/python -m bench.incoming [-n 3000] [-c 32] [--data DIR] [--inprocess] [--repeat 3] [--floor]

Starts the project's CouchDB test server (tests/support/couchserver.py) and the webhook app on
127.0.0.1, posts N messages with unique ids from a separate client process (RapidPro is another
machine; `--inprocess` runs the client in the worker's event loop instead), then prints
messages/s and p50/p99 latency, the CPU each message cost the worker, the client and the rest of
the machine (CouchDB), and checks each id was stored exactly once; with --repeat, the medians.
Logging is on (to /dev/null), as in production. `--floor` replaces the webhook with the least a
durable webhook can do (no key, no repeat lookup, no CHT record, no log line: parse, one
`_bulk_docs` per group of waiting requests, answer), which shows what CouchDB and the machine
allow before any of the worker's work. Set TEST_COUCH_URL to bench against a real CouchDB instead.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.figures import medians_line  # noqa: E402
from config.env import parse_couch_url  # noqa: E402
from config.settings import parse_settings  # noqa: E402
from tests.support.couch_fixtures import (  # noqa: E402
    create_db,
    delete_db,
    load_example_settings,
    put_settings,
    seed_design_docs,
)
from tests.support.couchserver import CouchTestServer  # noqa: E402
from transitions.incoming.record import doc_id_for  # noqa: E402
from worker.couch.client import CouchServer  # noqa: E402
from worker.incoming.webhook import V2_PATH, IncomingWebhook  # noqa: E402
from worker.logs import configure_logging  # noqa: E402
from worker.rapidpro.credentials import Credential  # noqa: E402

KEY = "bench-incoming-key"


async def post_all(url: str, ids: list[str], concurrency: int) -> tuple[list[float], dict[int, int], float]:
    """POST one message per id with `concurrency` in flight; (latencies s, statuses, elapsed s)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(enumerate(ids))
    headers = {"Authorization": f"Token {KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            for i, message_id in queue:
                body = {"id": message_id, "from": f"+2547{i % 100_000_000:08d}", "content": f"hello {i}"}
                t0 = time.perf_counter()
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                latencies.append(time.perf_counter() - t0)
                statuses[response.status] = statuses.get(response.status, 0) + 1

        # warm the connections up so the first requests do not measure TCP set-up
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, statuses, elapsed


def _client_process(url: str, ids: list[str], concurrency: int, out: Any) -> None:
    cpu_before = time.process_time()
    result = asyncio.run(post_all(url, ids, concurrency))
    out.send((*result, time.process_time() - cpu_before))


def machine_busy_s() -> float:
    """CPU seconds all cores of this machine spent busy since boot (Linux /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class FloorStore:
    """The least a durable webhook does: group commit of minimal records, one batch at a time."""

    def __init__(self, medic: Any) -> None:
        self._medic = medic
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._busy = False
        self._task: asyncio.Task[None] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        doc = {"_id": doc_id_for(body["id"]), "type": "data_record", "from": body["from"],
               "sms_message": {"gateway_ref": body["id"], "message": body["content"], "from": body["from"]}}
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((doc, future))
        if not self._busy:
            self._busy = True
            self._task = asyncio.ensure_future(self._commit())
        await future
        return web.json_response({"saved": 1})

    async def _commit(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._medic.bulk_docs([doc for doc, _ in batch], timeout=10)
                for _, future in batch:
                    future.set_result(None)
        finally:
            self._busy = False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, server_url: str) -> dict[str, float]:
    db_name = f"medic-bench{uuid.uuid4().hex[:6]}"
    db_url = f"{server_url}/{db_name}"
    create_db(db_url)
    seed_design_docs(db_url)
    settings_doc = {"settings": load_example_settings()}
    put_settings(db_url, settings_doc["settings"])
    settings = parse_settings(settings_doc)
    connection = parse_couch_url(db_url)
    couch = CouchServer(connection, timeout=10.0)
    medic = couch.db(connection.db_name)
    webhook = IncomingWebhook(medic, Credential(None, "rapidpro:incoming", value=KEY), lambda: settings)
    app = web.Application()
    if args.floor:
        app.router.add_post(V2_PATH, FloorStore(medic).handle)
    else:
        webhook.register(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}{V2_PATH}"
    try:
        # a short warm-up builds the view index and opens connections (not measured)
        await post_all(url, [f"warmup-{uuid.uuid4()}" for _ in range(50)], 8)
        ids = [f"bench-{uuid.uuid4()}" for _ in range(args.n)]
        busy_before, worker_cpu_before = machine_busy_s(), time.process_time()
        client_cpu = 0.0
        if args.inprocess:
            latencies, statuses, elapsed = await post_all(url, ids, args.c)
        else:
            ctx = multiprocessing.get_context("spawn")
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_client_process, args=(url, ids, args.c, send))
            proc.start()
            latencies, statuses, elapsed, client_cpu = await asyncio.to_thread(receive.recv)
            await asyncio.to_thread(proc.join)
        busy = machine_busy_s() - busy_before
        worker_cpu = time.process_time() - worker_cpu_before

        # Exactly once: one incoming row per id in CHT's view, and the doc under the derived id.
        counts: dict[str, int] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            result = await couch.request_json(
                "POST", f"{db_name}/_design/medic-sms/_view/messages_by_gateway_ref",
                body={"keys": chunk}, timeout=60)
            for row in result["rows"]:
                counts[row["key"]] = counts.get(row["key"], 0) + 1
                if row["id"] != doc_id_for(row["key"]):
                    counts[row["key"]] = -1_000_000
        stored_once = sum(1 for i in ids if counts.get(i) == 1)
        rate = len(ids) / elapsed
        p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
        print(f"messages: {len(ids)}  concurrency: {args.c}  client: "
              f"{'in-process' if args.inprocess else 'separate process'}  storage: "
              f"{'external' if args.external else ('leveldb' if args.data else 'memory')}")
        print(f"throughput: {rate:.0f} messages/s  ({elapsed:.2f} s)   target >= 500 messages/s")
        print(f"latency: p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {max(latencies) * 1000:.1f} ms  "
              f"mean {statistics.fmean(latencies) * 1000:.1f} ms   target p99 <= 50 ms")
        per_msg = 1000 / len(ids)
        print(f"CPU per message: worker {worker_cpu * per_msg:.2f} ms, client {client_cpu * per_msg:.2f} ms, "
              f"everything else (CouchDB, ...) {max(0.0, busy - worker_cpu - client_cpu) * per_msg:.2f} ms; "
              f"machine {busy / elapsed / (os.cpu_count() or 1) * 100:.0f}% busy over {os.cpu_count()} cores")
        print(f"statuses: {statuses}  counters: "
              f"{ {k: v for k, v in webhook.counters.items() if v} }")
        print(f"stored exactly once: {stored_once}/{len(ids)}")
        ok = stored_once == len(ids) and statuses == {200: len(ids)}
        print("OK" if ok else "FAILED", flush=True)
        return {"ok": float(ok), "msg_per_s": rate, "p50_ms": p50, "p99_ms": p99,
                "couchdb_cpu_ms_per_msg": max(0.0, busy - worker_cpu - client_cpu) * per_msg}
    finally:
        await runner.cleanup()
        await couch.close()
        delete_db(db_url)


async def run_all(args: argparse.Namespace, server_url: str) -> int:
    results = [await run(args, server_url) for _ in range(args.repeat)]
    if args.repeat > 1:
        print(medians_line(results, skip=("ok",)))
    return 0 if all(r["ok"] for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3000, help="messages to post (default 3000)")
    parser.add_argument("-c", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--data", type=Path, help="LevelDB dir for the test server (default: in memory)")
    parser.add_argument("--inprocess", action="store_true", help="run the client in the worker's loop")
    parser.add_argument("--repeat", type=int, default=1, help="runs (each on a fresh database)")
    parser.add_argument("--floor", action="store_true", help="the least a durable webhook does (a reference)")
    args = parser.parse_args()
    devnull = open(os.devnull, "w")  # for the life of the process
    configure_logging("info", "json", stream=devnull)
    external = os.environ.get("TEST_COUCH_URL", "").strip().rstrip("/")
    args.external = bool(external)
    if external:
        return asyncio.run(run_all(args, external))
    with CouchTestServer(data_dir=args.data) as server:
        return asyncio.run(run_all(args, server.url))


if __name__ == "__main__":
    sys.exit(main())

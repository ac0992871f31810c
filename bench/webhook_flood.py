"""Benchmark: good webhook requests while the public door is flooded with wrong keys (run by hand).

    .venv/bin/python -m bench.webhook_flood [-n 200] [--flood 20000] [-c 32]

Starts the project's CouchDB test server (or uses TEST_COUCH_URL), a worker with the public door
and the key in CHT's vault (the costly case), and a counting proxy between the worker and
CouchDB. Measures good requests one at a time from a separate process, first idle, then while
another process sends wrong-key requests as fast as it can with `-c` in flight (one client
address, so the per-client limit applies: set WEBHOOK_CLIENT_CONCURRENCY to compare; the good
requests count as another client). Prints
p50/p99 latency of both, the flood's rate and statuses, and the CouchDB requests other than the
changes feed made during the flood (expected: only the good requests' own writes).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.credentials import encrypt_credential  # noqa: E402
from config.env import load_config  # noqa: E402
from tests.support.couch_fixtures import (  # noqa: E402
    create_db,
    delete_db,
    load_example_settings,
    put_settings,
    put_vault_credential,
    seed_design_docs,
)
from tests.support.couchserver import CouchTestServer  # noqa: E402
from tests.support.http_proxy import CountingProxy  # noqa: E402
from worker.app import Worker  # noqa: E402
from worker.incoming.webhook import V2_PATH  # noqa: E402
from worker.logs import configure_logging  # noqa: E402

KEY = "bench-flood-key"
SECRET = "bench-flood-secret"


async def good_requests(url: str, n: int, tag: str) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            body = {"id": f"{tag}-{i}-{uuid.uuid4().hex[:6]}", "from": "+254700000001", "content": "hi"}
            started = time.perf_counter()
            # Another client than the flood's (as RapidPro would be): loopback peers may say so.
            headers = {"Authorization": f"Token {KEY}", "X-Real-IP": "192.0.2.10"}
            async with session.post(url, json=body, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append(time.perf_counter() - started)
    return latencies


async def flood(url: str, total: int, concurrency: int) -> tuple[dict[int, int], float]:
    statuses: dict[int, int] = {}
    left = iter(range(total))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def client() -> None:
            for i in left:
                try:
                    async with session.post(url, json={"id": f"w{i}", "from": "+1", "content": "x"},
                                            headers={"Authorization": f"Token wrong-{i}"}) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                except aiohttp.ClientError:
                    statuses[0] = statuses.get(0, 0) + 1
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return statuses, time.perf_counter() - started


def _good_process(url: str, n: int, tag: str, out: Any) -> None:
    out.send(asyncio.run(good_requests(url, n, tag)))


def _flood_process(url: str, total: int, concurrency: int, out: Any) -> None:
    out.send(asyncio.run(flood(url, total, concurrency)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(args: argparse.Namespace, server_url: str) -> int:
    db = f"medic-flood{uuid.uuid4().hex[:6]}"
    create_db(f"{server_url}/{db}")
    seed_design_docs(f"{server_url}/{db}")
    put_settings(f"{server_url}/{db}", load_example_settings())
    create_db(f"{server_url}/{db}-vault")
    put_vault_credential(f"{server_url}/{db}-vault", "rapidpro:incoming", encrypt_credential(KEY, SECRET))
    proxy = CountingProxy(server_url)
    await proxy.start()
    user, password = server_url.split("//", 1)[1].split("@", 1)[0].split(":", 1)
    worker = Worker(load_config({
        "COUCH_URL": proxy.url(user, password, db), "LISTEN_PORT": "0", "WEBHOOK_LISTEN_HOST": "127.0.0.1",
        "WEBHOOK_LISTEN_PORT": "0", "COUCH_SECRET": SECRET, "STATUS_POLL_INTERVAL": "3600",
        "SWEEP_INTERVAL": "3600", "CHECKPOINT_INTERVAL": "3600",
        "WEBHOOK_CLIENT_CONCURRENCY": os.environ.get("WEBHOOK_CLIENT_CONCURRENCY", "32")}))
    task = asyncio.create_task(worker.run())
    ctx = multiprocessing.get_context("spawn")
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        assert worker.public_http is not None
        url = f"http://127.0.0.1:{worker.public_http.port}{V2_PATH}"
        await good_requests(url, 20, "warm")  # builds the view index, reads the key (not measured)

        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_good_process, args=(url, args.n, "idle", send))
        proc.start()
        idle = await asyncio.to_thread(receive.recv)
        await asyncio.to_thread(proc.join)

        before = len(proxy.requests)
        flood_in, flood_out = ctx.Pipe(duplex=False)
        flooder = ctx.Process(target=_flood_process, args=(url, args.flood, args.c, flood_out))
        flooder.start()
        await asyncio.sleep(1.0)  # let the flood get going
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_good_process, args=(url, args.n, "flood", send))
        proc.start()
        flooded = await asyncio.to_thread(receive.recv)
        await asyncio.to_thread(proc.join)
        statuses, elapsed = await asyncio.to_thread(flood_in.recv)
        await asyncio.to_thread(flooder.join)
        couch = [r for r in proxy.requests[before:] if not r[1].endswith("/_changes")]
        writes = sum(1 for r in couch if r[1].endswith("/_bulk_docs"))
        print(f"good requests, idle:    p50 {percentile(idle, .5):.1f} ms  "
              f"p99 {percentile(idle, .99):.1f} ms  max {max(idle) * 1000:.1f} ms")
        print(f"good requests, flooded: p50 {percentile(flooded, .5):.1f} ms  "
              f"p99 {percentile(flooded, .99):.1f} ms  max {max(flooded) * 1000:.1f} ms")
        print(f"flood: {sum(statuses.values())} wrong-key requests in {elapsed:.1f} s "
              f"({sum(statuses.values()) / elapsed:.0f}/s, {args.c} in flight), statuses {statuses}")
        print(f"CouchDB requests during the flood besides the feed: {len(couch)} "
              f"({writes} _bulk_docs, the rest view look-ups: all for the {args.n} good requests)")
        return 0
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await proxy.stop()
        delete_db(f"{server_url}/{db}")
        delete_db(f"{server_url}/{db}-vault")
        delete_db(f"{server_url}/{db}-rapidpro")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="good requests measured each time (default 200)")
    parser.add_argument("--flood", type=int, default=20000, help="wrong-key requests (default 20000)")
    parser.add_argument("-c", type=int, default=32, help="flood requests in flight (default 32)")
    args = parser.parse_args()
    configure_logging("warning", "json", stream=open(os.devnull, "w"))  # for the life of the process
    external = os.environ.get("TEST_COUCH_URL", "").strip().rstrip("/")
    if external:
        return asyncio.run(run(args, external))
    with CouchTestServer() as server:
        return asyncio.run(run(args, server.url))


if __name__ == "__main__":
    sys.exit(main())

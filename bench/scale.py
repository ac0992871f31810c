"""National-scale status tracking benchmark (run by hand, not in CI).

    TEST_COUCH_URL=http://admin:pass@127.0.0.1:5985 .venv/bin/python bench/scale.py --tracked 100000
        [--pending 0] [--steady 150] [--couch-pid PID]

Seeds, in a fresh CHT-like `medic` database (CHT's design docs), `--tracked` reports each holding
one task `sent` with a `gateway_ref`, sent at a moment drawn over the last 6 days, plus the
worker's own ledger entry for it (the worker sent them), and the same broadcasts in the fake
RapidPro (status `sent`: nothing changes while measuring); optionally `--pending` reports whose
task is `pending` with a due date far ahead (the start-up sweep reads past them). All in
`_bulk_docs` batches; every view is brought up to date before the worker starts, as on a running
CHT. Then, in the same run:

1. the raw read of CHT's view `medic-sms/gateway_messages_by_state` (every tracked row, one
   request, JSON parsed): what reading costs;
2. an idle worker (an empty database pair) for its peak RSS;
3. the worker (daemon subprocess, fake RapidPro at 3,600 calls an hour, STATUS_POLL_INTERVAL 60)
   on the seeded databases: time from its start to `status_tracking_loaded` and to the first
   status round, its peak RSS, /healthz latency (polled every 50 ms from start to the end), and
   once loaded, `--steady` seconds with nothing changing: CouchDB's CPU seconds per minute, from
   /proc/<beam pid>/stat (the Erlang VM serving the URL's port; or --couch-pid).

Each figure is printed beside the target of issue 35. Needs an Apache CouchDB (TEST_COUCH_URL):
the project's in-memory test server does not stand for CouchDB's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from tests.support.couch_fixtures import (
    couch_request,
    create_db,
    delete_db,
    load_design_docs,
    put_settings,
    seed_design_docs,
)
from tests.support.daemon import Daemon
from worker.outgoing import ledger as ledger_module
from worker.outgoing.ledger import DESIGN_DOC, LEDGER_PREFIX, LEDGER_VIEWS

HORIZON_DAYS = 6
BATCH = 2000
TARGET_LOAD_RATIO = 3.0
TARGET_FIRST_ROUND_S = 10.0
TARGET_IDLE_MB, TARGET_BYTES_PER_MSG = 76.0, 400.0
TARGET_HEALTHZ_P99_MS = 100.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


# ---------------------------------------------------------------------------- seeding

def tracked_doc(i: int, message_uuid: str, broadcast_id: int, sent_at: float, phone: str) -> dict[str, Any]:
    return {
        "_id": f"report-{message_uuid}", "type": "data_record", "form": "visit", "content_type": "xml",
        "reported_date": int(sent_at * 1000) - 5000, "from": phone,
        "contact": {"_id": f"chw-{i % 5000}", "parent": {"_id": f"hc-{i % 200}"}},
        "fields": {"patient_id": f"{i:07d}", "visit": "routine"},
        "tasks": [{
            "messages": [{"uuid": message_uuid, "to": phone, "message": f"Reminder {i}: visit due"}],
            "state": "sent", "state_details": "Sent", "gateway_ref": broadcast_id,
            "state_history": [
                {"state": "pending", "timestamp": iso(sent_at - 5)},
                {"state": "received-by-gateway", "timestamp": iso(sent_at)},
                {"state": "sent", "timestamp": iso(sent_at + 60)}],
        }],
    }


def ledger_entry(message_uuid: str, doc_id: str, phone: str, broadcast_id: int, broadcast_uuid: str,
                 sent_at: float) -> dict[str, Any]:
    return {
        "_id": LEDGER_PREFIX + message_uuid, "type": "dispatch", "uuid": message_uuid, "doc_id": doc_id,
        "urn": f"tel:{phone}", "state": "sent", "claimed_at": iso(sent_at - 1),
        "claimed_at_epoch": sent_at - 1,
        "owner": "bench:1", "attempts": 1, "writer": {"instance": "bench:1", "nonce": uuid.uuid4().hex},
        "broadcast_id": broadcast_id, "broadcast_uuid": broadcast_uuid, "broadcast_status": "queued",
        "outcome_at": iso(sent_at), "error": None,
        # status tracking saw it `sent` (what it writes on its own entries)
        "task_state": "sent", "task_state_details": "Sent", "task_state_at": iso(sent_at + 60),
    }


def pending_doc(i: int, now: float) -> dict[str, Any]:
    phone = f"+2547{i % 10**8:08d}"
    due = iso(now + 30 * 86400)  # scheduled far ahead: the sweep reads past it, nothing is sent
    return {
        "_id": f"pending-{i:07d}", "type": "data_record", "form": "visit", "reported_date": int(now * 1000),
        "scheduled_tasks": [{"messages": [{"uuid": str(uuid.uuid4()), "to": phone, "message": "Later"}],
                             "state": "scheduled", "due": due,
                             "state_history": [{"state": "scheduled", "timestamp": iso(now)}]}],
    }


def post_batches(db_url: str, docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), BATCH):
        status, body = couch_request("POST", f"{db_url}/_bulk_docs", {"docs": docs[start:start + BATCH]},
                                     timeout=300)
        assert status == 201, (status, str(body)[:300])


def seed(db_url: str, fake: FakeRapidPro, tracked: int, pending: int, rng: random.Random) -> None:
    now = time.time()
    docs: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for i in range(tracked):
        sent_at = now - rng.uniform(120, HORIZON_DAYS * 86400)
        phone = f"+2547{i % 10**8:08d}"
        broadcast = fake.add_outgoing(f"tel:{phone}", f"Reminder {i}: visit due")
        created = datetime.fromtimestamp(sent_at + 2, UTC)
        for message in broadcast.messages:
            message.status = "sent"
            message.created_on = message.modified_on = message.sent_on = created
            message.visible_at = 0.0
        broadcast.created_on = created
        message_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        doc = tracked_doc(i, message_uuid, broadcast.id, sent_at, phone)
        docs.append(doc)
        entries.append(ledger_entry(message_uuid, doc["_id"], phone, broadcast.id, broadcast.uuid, sent_at))
        if len(docs) >= BATCH:
            post_batches(db_url, docs)
            post_batches(db_url + "-rapidpro", entries)
            docs, entries = [], []
    docs.extend(pending_doc(i, now) for i in range(pending))
    post_batches(db_url, docs)
    post_batches(db_url + "-rapidpro", entries)
    fake.messages.sort(key=lambda m: m.created_on)


def warm_views(db_url: str) -> None:
    """CouchDB indexes lazily; CHT and a running worker keep these views up to date."""
    # The worker's design docs, as the code under test defines them (it creates them at start).
    for ddoc, views in getattr(ledger_module, "DESIGN_DOCS", {DESIGN_DOC: LEDGER_VIEWS}).items():
        status, _ = couch_request("PUT", f"{db_url}-rapidpro/_design/{ddoc}",
                                  {"language": "javascript", "views": views})
        assert status in (201, 202), status
        for name in views:
            couch_request("GET", f"{db_url}-rapidpro/_design/{ddoc}/_view/{name}?limit=0", timeout=1800)
    for ddoc in load_design_docs():
        for name in ddoc.get("views") or {}:
            couch_request("GET", f"{db_url}/{ddoc['_id']}/_view/{name}?limit=0", timeout=1800)
            break  # one view builds the whole design doc's index


async def raw_view_read(db_url: str) -> tuple[float, int]:
    """Seconds to read (and parse) every tracked row of the view in one request."""
    parts = urlsplit(db_url)
    token = base64.b64encode(f"{parts.username or ''}:{parts.password or ''}".encode()).decode()
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
    rows = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as session:
        started = time.perf_counter()
        for key in ("forwarded-by-gateway", "received-by-gateway", "sent"):
            async with session.get(f"{base}/_design/medic-sms/_view/gateway_messages_by_state",
                                   params={"key": json.dumps(key)},
                                   timeout=aiohttp.ClientTimeout(total=600)) as response:
                rows += len(json.loads(await response.read())["rows"])
        return time.perf_counter() - started, rows


# ---------------------------------------------------------------------------- measuring

def beam_pid(port: int) -> int | None:
    """The Erlang VM of the CouchDB listening on `port` (its node is named after the port)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"beam.smp") and f"couchdb{port}@".encode() in b" ".join(cmdline):
            return int(entry)
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of `pid`, kB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found.get("VmRSS", 0), found.get("VmHWM", 0)


POLLER = """
import sys, time, urllib.request
url, out = sys.argv[1], []
while True:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
    except OSError:
        pass  # a 503 while starting is an answer too
    out.append((time.perf_counter() - started) * 1000)
    try:
        open(sys.argv[2] + ".stop").close()
        break
    except OSError:
        time.sleep(0.05)
open(sys.argv[2], "w").write(" ".join(f"{v:.2f}" for v in out))
"""


class HealthPoller:
    """GET /healthz every 50 ms from a process of its own (the fake RapidPro in this one would
    hold the GIL); latencies in ms (a timeout counts as its 5 s)."""

    def __init__(self, port: int) -> None:
        self.path = f"/tmp/bench-scale-healthz-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.process = subprocess.Popen([sys.executable, "-c", POLLER, f"http://127.0.0.1:{port}/healthz",
                                         self.path])
        self.latencies: list[float] = []

    def finish(self) -> None:
        Path(self.path + ".stop").touch()
        self.process.wait(30)
        self.latencies = [float(v) for v in Path(self.path).read_text().split()]
        for path in (self.path, self.path + ".stop"):
            Path(path).unlink(missing_ok=True)


def worker_env(db_url: str, fake: FakeRapidPro) -> dict[str, str]:
    return {"COUCH_URL": db_url, "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "STATUS_POLL_INTERVAL": "60",
            "LOG_LEVEL": "info", "LOG_FORMAT": "json", "CHECKPOINT_INTERVAL": "5"}


def first_event(daemon: Daemon, name: str) -> dict[str, Any] | None:
    return next((e for e in list(daemon.events) if e.get("event") == name), None)


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


@contextlib.contextmanager
def bench_db(server_url: str, prefix: str, fake: FakeRapidPro, *, keep: bool = False) -> Iterator[str]:
    """A medic database seeded like a CHT (design docs, settings naming the fake RapidPro) and
    the worker's own beside it; both deleted afterwards unless `keep`."""
    db_url = f"{server_url}/{prefix}-{uuid.uuid4().hex[:6]}"
    create_db(db_url)
    create_db(db_url + "-rapidpro")
    try:
        seed_design_docs(db_url)
        put_settings(db_url, {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake.url}}})
        yield db_url
    finally:
        if not keep:
            delete_db(db_url)
            delete_db(db_url + "-rapidpro")


async def idle_rss(server_url: str, fake: FakeRapidPro) -> float:
    """Peak RSS (MB) of a worker tracking nothing, 20 s after its start."""
    with bench_db(server_url, "bench-scale-idle", fake) as db_url:
        daemon = Daemon(worker_env(db_url, fake)).start()
        try:
            assert daemon.process is not None
            await wait_until(lambda: first_event(daemon, "status_tracking_loaded") is not None, 60)
            await asyncio.sleep(20)
            return rss_kb(daemon.process.pid)[1] / 1024
        finally:
            daemon.terminate_and_wait()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_url = args.couch_url.rstrip("/")
    port = urlsplit(server_url).port or 5984
    couch_pid = args.couch_pid or beam_pid(port)
    if couch_pid is None:
        raise SystemExit(f"no CouchDB VM found for port {port}: give --couch-pid")
    fake = FakeRapidPro()
    fake.rate_limit = 3600
    await fake.start()
    try:
        with bench_db(server_url, "bench-scale", fake, keep=args.keep) as db_url:
            return await measure(args, server_url, couch_pid, fake, db_url)
    finally:
        await fake.stop()


async def measure(args: argparse.Namespace, server_url: str, couch_pid: int, fake: FakeRapidPro,
                  db_url: str) -> dict[str, Any]:
    """Seeds `db_url`, then runs the worker on it and reads every figure beside its target."""
    began = time.perf_counter()
    seed(db_url, fake, args.tracked, args.pending, random.Random(args.seed))
    warm_views(db_url)
    print(f"seeded {args.tracked} tracked + {args.pending} pending, views warm: "
          f"{time.perf_counter() - began:.0f} s", flush=True)
    raw_s, raw_rows = await raw_view_read(db_url)
    idle_mb = await idle_rss(server_url, fake)

    daemon = Daemon(worker_env(db_url, fake))
    started = time.monotonic()
    daemon.start()
    assert daemon.process is not None
    pid = daemon.process.pid
    poller: HealthPoller | None = None
    try:
        await wait_until(lambda: first_event(daemon, "http_listening") is not None, 60)
        listening = first_event(daemon, "http_listening")
        if listening is not None:
            poller = HealthPoller(int(listening["port"]))
        loaded_at = round_at = None
        deadline = time.monotonic() + args.load_timeout
        while time.monotonic() < deadline and (loaded_at is None or round_at is None):
            if loaded_at is None and first_event(daemon, "status_tracking_loaded"):
                loaded_at = time.monotonic() - started
            if round_at is None and first_event(daemon, "status_round"):
                round_at = time.monotonic() - started
            if daemon.process.poll() is not None:
                raise SystemExit("the worker exited:\n" + "\n".join(map(json.dumps, daemon.events[-10:])))
            await asyncio.sleep(0.05)
        # Steady: nothing changes; rounds run every minute.
        await asyncio.sleep(5)
        cpu_before, t_before = cpu_seconds(couch_pid), time.monotonic()
        await asyncio.sleep(args.steady)
        cpu_per_min = (cpu_seconds(couch_pid) - cpu_before) / (time.monotonic() - t_before) * 60
        peak_mb = rss_kb(pid)[1] / 1024
        loaded = first_event(daemon, "status_tracking_loaded") or {}
    finally:
        if poller is not None:
            poller.finish()
        daemon.terminate_and_wait(60)
    latencies = poller.latencies if poller else []
    tracked = int(loaded.get("tracked") or 0)
    rss_target = TARGET_IDLE_MB + TARGET_BYTES_PER_MSG * args.tracked / 1e6
    per_msg = (peak_mb - idle_mb) * 1e6 / args.tracked if args.tracked else 0.0
    figures = {"tracked": args.tracked, "loaded_tracked": tracked, "raw_s": raw_s, "raw_rows": raw_rows,
               "loaded_s": loaded_at, "first_round_s": round_at, "idle_mb": idle_mb, "peak_mb": peak_mb,
               "bytes_per_msg": per_msg, "couch_cpu_s_per_min": cpu_per_min,
               "healthz_p50_ms": pct(latencies, 50), "healthz_p99_ms": pct(latencies, 99),
               "healthz_max_ms": max(latencies, default=float("nan")), "healthz_n": len(latencies)}
    ratio = loaded_at / raw_s if loaded_at is not None and raw_s else float("nan")
    print(f"tracked {args.tracked} (worker loaded {tracked}), pending {args.pending}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  raw view read:        {raw_s:8.2f} s ({raw_rows} rows)")
    print(f"  status_tracking_loaded {_s(loaded_at)}  ratio {ratio:.1f}x   "
          f"target <= {TARGET_LOAD_RATIO:g}x")
    print(f"  first status round     {_s(round_at)}                 target <= {TARGET_FIRST_ROUND_S:g} s")
    print(f"  peak RSS {peak_mb:7.1f} MB (idle worker {idle_mb:.1f} MB; {per_msg:.0f} B/msg above it)"
          f"   target <= {rss_target:.0f} MB ({TARGET_IDLE_MB:g} MB + {TARGET_BYTES_PER_MSG:g} B/msg)")
    print(f"  CouchDB CPU once loaded, nothing changing: {cpu_per_min:.2f} s/min over {args.steady:g} s"
          f"   target at 4e5 <= 2x that at 1e4")
    print(f"  /healthz p50 {figures['healthz_p50_ms']:.0f} ms, p99 {figures['healthz_p99_ms']:.0f} ms, "
          f"max {figures['healthz_max_ms']:.0f} ms ({len(latencies)} polls)   target p99 <= "
          f"{TARGET_HEALTHZ_P99_MS:g} ms", flush=True)
    return figures


def _s(value: float | None) -> str:
    return f"{value:8.2f} s" if value is not None else "   (none)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracked", type=int, default=10_000)
    parser.add_argument("--pending", type=int, default=0)
    parser.add_argument("--steady", type=float, default=150.0,
                        help="seconds of CouchDB CPU sampling once loaded")
    parser.add_argument("--load-timeout", type=float, default=900.0)
    parser.add_argument("--couch-url", default=os.environ.get("TEST_COUCH_URL", ""))
    parser.add_argument("--couch-pid", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    if not args.couch_url:
        raise SystemExit("set TEST_COUCH_URL (or --couch-url) to an Apache CouchDB 3 admin URL")
    figures = asyncio.run(run(args))
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

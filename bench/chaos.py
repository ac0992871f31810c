"""Chaos run of the worker (run by hand, not in CI): the hard promises under random faults.

    .venv/bin/python bench/chaos.py [--duration 180] [--workers 1] [--out-rate 2] [--in-rate 2]
                                    [--seed N] [--log-dir DIR] [--lease-ttl 15]
                                    [--status-interval 5] [--no-final-throttle]
                                    [--couch-restart-cmd 'CMD'] [--cluster]

Everything stays on 127.0.0.1. It starts the CouchDB-protocol test server (or uses the Apache
CouchDB given by TEST_COUCH_URL, in a database of its own that it deletes at the end), the tests'
fake RapidPro in this process, and the worker(s) as subprocesses (`python -m worker run`, as
operators run it). For `--duration` seconds it keeps a steady load — pending outgoing messages
written to CouchDB at `--out-rate`/s, incoming SMS posted to the webhook at `--in-rate`/s — while
at random moments it:

- kills a worker with SIGKILL, or stops it with SIGTERM (timing the exit), and restarts it
  (with several workers, the lease holder half of the time);
- makes RapidPro answer 500, hang, or 429 (half the time with Retry-After, half without) to
  every call for a few seconds; and, unless `--no-final-throttle`, one more 429 window in the
  last seconds of the load, so the run ends right after RapidPro throttled;
- with `--couch-restart-cmd`, restarts CouchDB by running that shell command (for instance one
  that stops and starts the Apache CouchDB behind TEST_COUCH_URL; the data must survive it);
- with `--cluster`, on the 3-node CouchDB cluster given by TEST_COUCH_CLUSTER_URLS and
  TEST_COUCH_CLUSTER_CTL (tests/support/cluster.py): worker i connects to node i, the load is written
  through every node in turn, and the faults include pausing a node (10-30 s) and cutting one off
  from the other two (20-60 s), the active worker's node half of the time. The report adds the
  conflicted docs left in the worker's database.

RapidPro's messages move queued -> wired -> sent -> delivered, a step per status query, so
status tracking (every `--status-interval` s) has something to learn throughout.

Then the faults stop, the load stops, the run settles (bounded by `--settle`), the workers get
SIGTERM and it prints:

- settled: whether every send was final or resolved (in doubt = 0) within `IN_DOUBT_CHECK_AFTER`
  + 60 s of the faults stopping, and every task `delivered` within 6 status intervals of the
  last broadcast (the statuses a stalled status tracking would leave behind);
- outgoing: sent once / double / lost / in doubt (each message's broadcasts at the fake RapidPro
  and its CHT task state; a claim cut off by a kill is in doubt until in-doubt resolution, run
  here `IN_DOUBT_CHECK_AFTER` = 10 s after the claim, settles it);
- incoming: stored once / twice / missing (docs per RapidPro id in CHT's
  `medic-sms/messages_by_gateway_ref` view). The load generator re-posts a message until it
  gets a 200, standing in for RapidPro's Failure branch + the incoming reconciliation;
- send latency (doc written -> broadcast at RapidPro) p50 / p99 / max;
- the longest pause after a RapidPro fault ended (fault end -> next broadcast accepted), over
  faults with no worker restart in between;
- SIGTERM exit times, and the workers' error-level log events by name;
- the lease: take-overs, the longest gap without an active worker (from the workers' own
  `lease_acquired` / `lease_lost` log events, a kill -9 ending its victim's activity), and any
  time two workers believed they were active at once.

The exit status is 1 when a hard promise broke (a double send, a lost message, an incoming SMS
missing or stored twice) or the run did not settle. Wall-clock figures depend on the machine:
say how busy it was.

The pieces (`CouchTarget`, `WorkerProcess`, `Workers`, `OutgoingLoad`, `IncomingLoad`,
`FaultInjector`, `report`) are meant to be reused, e.g. with several workers on one CHT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import percentile  # noqa: E402
from playground.fake_rapidpro import BROADCASTS_PATH, DEFAULT_TOKEN, FakeRapidPro  # noqa: E402
from tests.support.cluster import Cluster, conflicted_docs  # noqa: E402
from tests.support.couch_fixtures import (  # noqa: E402
    couch_request,
    create_db,
    delete_db,
    put_settings,
    seed_design_docs,
)
from tests.support.couchserver import CouchTestServer  # noqa: E402
from transitions.outgoing.dispatch import IN_DOUBT_DETAILS  # noqa: E402
from worker.incoming.webhook import V2_PATH  # noqa: E402

INCOMING_KEY = "chaos-incoming-key"
SHUTDOWN_TIMEOUT = 3.0
IN_DOUBT_CHECK_AFTER = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------- CouchDB


class CouchTarget:
    """A fresh medic database (CHT's design docs, settings pointing at the fake RapidPro); on a
    cluster, `node_db_urls` reach it through each node."""

    def __init__(self, cluster: Cluster | None = None) -> None:
        external = os.environ.get("TEST_COUCH_URL", "").strip().rstrip("/")
        if cluster is not None:
            external = cluster.urls[0]
        self.server = None if external else CouchTestServer().start()
        self.server_url = external or self.server.url  # type: ignore[union-attr]
        self.kind = ("a 3-node CouchDB cluster" if cluster else
                     "CouchDB at TEST_COUCH_URL" if external else "the CouchDB-protocol test server")
        name = f"chaos-{uuid.uuid4().hex[:8]}"
        self.db_url = f"{self.server_url}/{name}"
        self.node_db_urls = [f"{url}/{name}" for url in cluster.urls] if cluster else [self.db_url]

    def setup(self, rapidpro_url: str) -> None:
        create_db(self.db_url)
        seed_design_docs(self.db_url)
        put_settings(self.db_url, {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": rapidpro_url}},
                                   "default_country_code": 254})

    def close(self) -> None:
        for suffix in ("", "-rapidpro", "-vault"):
            try:
                delete_db(self.db_url + suffix)
            except Exception as exc:  # cleanup must not hide the figures
                log(f"could not delete {suffix or 'medic'} db: {exc}")
        if self.server is not None:
            self.server.stop()

    def bulk_get(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        docs: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            status, body = couch_request("POST", f"{self.db_url}/_all_docs?include_docs=true",
                                         {"keys": ids[start:start + 500]})
            assert status == 200, body
            docs.update({row["id"]: row["doc"] for row in body["rows"] if row.get("doc")})
        return docs

    def incoming_counts(self, message_ids: list[str]) -> Counter[str]:
        """Docs holding each RapidPro id as an incoming message (index brought up to date)."""
        counts: Counter[str] = Counter()
        view = f"{self.db_url}/_design/medic-sms/_view/messages_by_gateway_ref"
        for start in range(0, len(message_ids), 500):
            status, body = couch_request("POST", view, {"keys": message_ids[start:start + 500]}, timeout=120)
            assert status == 200, body
            counts.update(row["key"] for row in body["rows"] if row.get("value") is None)
        return counts


# ---------------------------------------------------------------------------- workers


@dataclass
class Lifecycle:
    """What happened to the workers, for the report (times: time.monotonic())."""

    restarts: list[float] = field(default_factory=list)  # every stop or kill
    window: tuple[float, float] = (0.0, 0.0)  # the load's time.time() span, for the lease gaps
    sigterm_exits: list[float] = field(default_factory=list)  # seconds from SIGTERM to exit
    sigterm_codes: Counter[int] = field(default_factory=Counter)
    kills: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # error-level events by name
    stray_lines: int = 0
    # The lease: (worker, began, ended) of each time a worker was active (times: time.time(),
    # from the workers' log timestamps); `active_since` for those active now.
    active: list[tuple[str, float, float]] = field(default_factory=list)
    active_since: dict[str, float] = field(default_factory=dict)
    takeovers: int = 0

    def became_active(self, name: str, at: float) -> None:
        self.became_standby(name, at)
        self.active_since[name] = at
        self.takeovers += 1

    def became_standby(self, name: str, at: float) -> None:
        began = self.active_since.pop(name, None)
        if began is not None:
            self.active.append((name, began, at))

    def close(self, at: float) -> None:
        for name in list(self.active_since):
            self.became_standby(name, at)


def _event_time(event: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return time.time()


class WorkerProcess:
    """One worker daemon, restartable, on a fixed port so the webhook URL stays the same."""

    def __init__(self, name: str, env: dict[str, str], log_file: TextIO, lifecycle: Lifecycle) -> None:
        self.name = name
        self.port = free_port()
        self.env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
                    "LISTEN_HOST": "127.0.0.1", "LISTEN_PORT": str(self.port), **env}
        self.log_file = log_file
        self.lifecycle = lifecycle
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.started.clear()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read(self.process))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            self.log_file.write(f"{self.name} {line}")
            try:
                event = json.loads(line)
            except ValueError:
                self.lifecycle.stray_lines += 1
                continue
            if event.get("event") == "worker_started":
                self.started.set()
            if event.get("event") in ("lease_acquired", "lease_lost"):
                at = _event_time(event)
                if event["event"] == "lease_acquired":
                    self.lifecycle.became_active(self.name, at)
                else:
                    self.lifecycle.became_standby(self.name, at)
            if event.get("level") in ("error", "critical"):
                self.lifecycle.errors[str(event.get("event"))] += 1

    async def wait_started(self, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            await self.started.wait()

    async def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            killed_at = time.time()
            self.lifecycle.kills += 1
            self.lifecycle.restarts.append(time.monotonic())
            await self._reap()
            self.lifecycle.became_standby(self.name, killed_at)  # nothing of it acts any more
        await self._reap()

    async def terminate(self, timeout: float = 60) -> float | None:
        """SIGTERM; seconds until it exited (None if it was not running)."""
        if not self.running:
            return None
        assert self.process is not None
        began = time.monotonic()
        self.lifecycle.restarts.append(began)
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
        except TimeoutError:
            log(f"{self.name} did not exit {timeout} s after SIGTERM: killing it")
            await self.kill()
            return None
        took = time.monotonic() - began
        self.lifecycle.sigterm_exits.append(took)
        self.lifecycle.sigterm_codes[code] += 1
        await self._reap()
        return took

    async def _reap(self) -> None:
        # Waiting reaps the child: a zombie would look alive to the ledger's dead-owner check.
        if self.process is not None:
            await self.process.wait()
        if self._reader is not None:
            await self._reader


class Workers:
    """The worker processes of one CHT (one today; several for HA)."""

    def __init__(self, count: int, env: dict[str, str], log_dir: Path,
                 couch_urls: list[str] | None = None) -> None:
        """`couch_urls`: worker i connects to couch_urls[i % len] (a cluster's nodes)."""
        self.lifecycle = Lifecycle()
        self._log = open(log_dir / "workers.log", "a")  # closed in close()
        urls = couch_urls or [env["COUCH_URL"]]
        self.all = [WorkerProcess(f"w{i}", {**env, "INSTANCE_ID": f"w{i}", "COUCH_URL": urls[i % len(urls)]},
                                  self._log, self.lifecycle)
                    for i in range(count)]

    async def start_all(self) -> None:
        for worker in self.all:
            await worker.start()
        for worker in self.all:
            await worker.wait_started()

    def live_ports(self) -> list[int]:
        return [w.port for w in self.all if w.running and w.started.is_set()]

    async def stop_all(self) -> None:
        await asyncio.gather(*(w.terminate() for w in self.all))

    async def kill_all(self) -> None:
        await asyncio.gather(*(w.kill() for w in self.all))

    def close(self) -> None:
        self._log.close()


# ---------------------------------------------------------------------------- load


class OutgoingLoad:
    """Pending outgoing messages written to CouchDB at a steady rate; one doc per message, through
    each of `db_urls` in turn (a cluster's nodes)."""

    def __init__(self, db_urls: list[str], rate: float) -> None:
        self.db_urls = db_urls
        self.rate = rate
        self.written: dict[str, float] = {}  # doc id (= message text) -> when its PUT began

    async def run(self, stop: asyncio.Event) -> None:
        interval = 1 / self.rate
        begin = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, begin + i * interval - time.monotonic()))
            doc_id = f"out-{i:06d}"
            doc = {"_id": doc_id, "type": "data_record", "reported_date": int(time.time() * 1000),
                   "tasks": [{"state": "pending", "messages": [
                       {"uuid": str(uuid.uuid4()), "to": f"+2547{i % 100_000_000:08d}", "message": doc_id}]}]}
            self.written[doc_id] = time.monotonic()
            task = asyncio.create_task(self._put(doc, self.db_urls[i % len(self.db_urls)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)

    async def _put(self, doc: dict[str, Any], db_url: str) -> None:
        # Retried through CouchDB restarts (a 409 after a lost answer means it was written).
        status: Any = None
        body: Any = None
        for _ in range(600):
            try:
                status, body = await asyncio.to_thread(couch_request, "PUT", f"{db_url}/{doc['_id']}",
                                                       doc, 10.0)
            except OSError as exc:
                status, body = type(exc).__name__, str(exc)
            if status in (201, 202, 409):
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"could not write {doc['_id']}: {status} {body}")


class IncomingLoad:
    """Incoming SMS posted to the workers' webhook at a steady rate; each re-posted until a 200."""

    def __init__(self, workers: Workers, rate: float, rng: random.Random) -> None:
        self.workers = workers
        self.rate = rate
        self.rng = rng
        self.ids: list[str] = []
        self.answered: set[str] = set()  # got a 200
        self.attempts = 0
        self.statuses: Counter[str] = Counter()
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event, give_up: asyncio.Event) -> None:
        interval = 1 / self.rate
        begin = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=15)  # RapidPro's webhook timeout
        async with aiohttp.ClientSession(timeout=timeout) as session:
            i = 0
            while not stop.is_set():
                await asyncio.sleep(max(0.0, begin + i * interval - time.monotonic()))
                message_id = str(uuid.uuid4())
                self.ids.append(message_id)
                task = asyncio.create_task(self._deliver(session, message_id, i, give_up))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
                i += 1
            await asyncio.gather(*self._pending)

    async def _deliver(self, session: aiohttp.ClientSession, message_id: str, i: int,
                       give_up: asyncio.Event) -> None:
        body = {"id": message_id, "from": f"+2547{i % 100_000_000:08d}", "content": f"incoming {i}"}
        headers = {"Authorization": f"Token {INCOMING_KEY}"}
        while not give_up.is_set():
            ports = self.workers.live_ports()
            if ports:
                self.attempts += 1
                url = f"http://127.0.0.1:{self.rng.choice(ports)}{V2_PATH}"
                try:
                    async with session.post(url, json=body, headers=headers) as response:
                        await response.read()
                        self.statuses[str(response.status)] += 1
                        if response.status == 200:
                            self.answered.add(message_id)
                            return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.statuses[type(exc).__name__] += 1
            await asyncio.sleep(0.5 + self.rng.random())

    @property
    def in_flight(self) -> int:
        return len(self._pending)


# ---------------------------------------------------------------------------- faults


@dataclass
class FaultWindow:
    kind: str  # "error" | "hang" | "throttle" | "throttle without Retry-After"
    began: float
    ended: float


class FaultInjector:
    """Random worker restarts and RapidPro outages, one at a time, at random intervals."""

    ACTIONS = (("kill9", 2), ("sigterm", 2), ("error", 3), ("hang", 2), ("throttle", 2))

    def __init__(self, fake: FakeRapidPro, workers: Workers, rng: random.Random,
                 gap: tuple[float, float] = (4.0, 12.0), couch_restart_cmd: str | None = None,
                 cluster: Cluster | None = None) -> None:
        self.fake = fake
        self.cluster = cluster
        self.workers = workers
        self.rng = rng
        self.gap = gap
        self.couch_restart_cmd = couch_restart_cmd
        self.couch_restarts: list[float] = []  # seconds each restart command took
        self.windows: list[FaultWindow] = []
        self.counts: Counter[str] = Counter()
        self._one_at_a_time = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        actions = list(self.ACTIONS) + ([("couch_restart", 2)] if self.couch_restart_cmd else [])
        if self.cluster is not None:
            actions += [("pause_node", 2), ("partition_node", 2)]
        names = [name for name, _ in actions]
        weights = [weight for _, weight in actions]
        while not stop.is_set():
            try:
                async with asyncio.timeout(self.rng.uniform(*self.gap)):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            action = self.rng.choices(names, weights)[0]
            async with self._one_at_a_time:
                if stop.is_set():
                    return
                self.counts[action] += 1
                if action in ("kill9", "sigterm"):
                    await self._restart(action)
                elif action == "couch_restart":
                    await self._restart_couch()
                elif action in ("pause_node", "partition_node"):
                    await self._node_fault(action)
                else:
                    await self._outage(action)

    async def final_throttle(self, at: float) -> None:
        """A 429 window in the last seconds of the load (at `at`, time.monotonic()), with or
        without Retry-After as the seed says: the run ends right after RapidPro throttled."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        async with self._one_at_a_time:
            self.counts["final throttle"] += 1
            await self._outage("throttle")

    async def _restart(self, how: str) -> None:
        candidates = [w for w in self.workers.all if w.running]
        if not candidates:
            return
        holders = [w for w in candidates if w.name in self.workers.lifecycle.active_since]
        # With several workers, the holder half of the time: that is where a take-over happens.
        worker = self.rng.choice(holders if holders and self.rng.random() < 0.5 else candidates)
        if how == "kill9":
            await worker.kill()
            log(f"{worker.name}: kill -9")
        else:
            took = await worker.terminate()
            log(f"{worker.name}: SIGTERM, exited in {took:.2f} s" if took is not None else
                f"{worker.name}: SIGTERM, killed")
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        await worker.start()
        await worker.wait_started()

    async def _restart_couch(self) -> None:
        assert self.couch_restart_cmd is not None
        began = time.monotonic()
        log("CouchDB: restarting")
        process = await asyncio.create_subprocess_shell(
            self.couch_restart_cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        took = time.monotonic() - began
        self.couch_restarts.append(took)
        log(f"CouchDB: restarted in {took:.1f} s (exit {process.returncode}"
            f"{': ' + err.decode(errors='replace').strip()[:200] if process.returncode else ''})")

    async def _node_fault(self, kind: str) -> None:
        """One node paused (10-30 s) or cut off from the other two (20-60 s): the active worker's
        node half of the time."""
        assert self.cluster is not None
        holders = [w for w in self.workers.all if w.name in self.workers.lifecycle.active_since]
        if holders and self.rng.random() < 0.5:
            node = self.cluster.node_of(holders[0].env["COUCH_URL"])
        else:
            node = self.rng.randint(1, len(self.cluster.urls))
        length = self.rng.uniform(10.0, 30.0) if kind == "pause_node" else self.rng.uniform(20.0, 60.0)
        began = time.monotonic()
        log(f"CouchDB node {node}: {'paused' if kind == 'pause_node' else 'cut off'} for {length:.0f} s")
        if kind == "pause_node":
            await asyncio.to_thread(self.cluster.pause, node)
            await asyncio.sleep(length)
            await asyncio.to_thread(self.cluster.resume, node)
        else:
            await asyncio.to_thread(self.cluster.partition, node)
            await asyncio.sleep(length)
            await asyncio.to_thread(self.cluster.heal)
        log(f"CouchDB node {node}: back after {time.monotonic() - began:.0f} s")

    async def _outage(self, kind: str) -> None:
        length = self.rng.uniform(1.0, 5.0)
        self.fake.outage_retry_after = self.rng.randint(1, 3)
        # RapidPro sometimes throttles without a Retry-After header: the worker backs off alone.
        self.fake.retry_after_header = kind != "throttle" or self.rng.random() < 0.5
        label = kind if self.fake.retry_after_header else f"{kind} without Retry-After"
        self.fake.outage = kind
        began = time.monotonic()
        log(f"RapidPro: {label} for {length:.1f} s")
        await asyncio.sleep(length)
        self.fake.outage = None
        self.fake.retry_after_header = True
        self.windows.append(FaultWindow(label, began, time.monotonic()))


# ---------------------------------------------------------------------------- report


def classify_outgoing(docs: dict[str, dict[str, Any]], sent: Counter[str], ids: Iterable[str]
                      ) -> tuple[Counter[str], list[str], Counter[str]]:
    """(counts by outcome, ids of broken promises, task states) for the outgoing messages."""
    outcome: Counter[str] = Counter()
    broken: list[str] = []
    states: Counter[str] = Counter()
    for doc_id in ids:
        task = (docs.get(doc_id) or {}).get("tasks", [{}])[0]
        states[str(task.get("state"))] += 1
        in_doubt = (task.get("state") == "forwarded-to-gateway"
                    and task.get("state_details") == IN_DOUBT_DETAILS)
        count = sent[doc_id]
        if count > 1:
            outcome["double"] += 1
            broken.append(doc_id)
        elif in_doubt:
            outcome["in doubt, reached RapidPro" if count else "in doubt, never reached RapidPro"] += 1
        elif count == 1:
            outcome["once"] += 1
        else:
            outcome["lost"] += 1
            broken.append(doc_id)
    return outcome, broken, states


def pauses_after_faults(windows: list[FaultWindow], accepted: list[float], restarts: list[float]
                        ) -> list[tuple[float, FaultWindow]]:
    """(fault end -> next accepted broadcast) for faults with no worker restart in between."""
    gaps = []
    accepted = sorted(accepted)
    for window in windows:
        following = [t for t in accepted if t >= window.ended]
        if not following:
            continue
        if any(window.began <= r <= following[0] for r in restarts):
            continue
        gaps.append((following[0] - window.ended, window))
    return gaps


def lease_gaps(active: list[tuple[str, float, float]], window: tuple[float, float]) -> tuple[float, float]:
    """(longest time in `window` with no worker active, total time with two or more active)."""
    begin, end = window
    points = sorted([(b, 1) for _, b, _ in active] + [(e, -1) for _, _, e in active])
    longest = overlap = 0.0
    level, last = 0, begin
    for at, step in points:
        at = min(max(at, begin), end)
        if level == 0:
            longest = max(longest, at - last)
        elif level >= 2:
            overlap += at - last
        level += step
        last = at
    if level == 0:
        longest = max(longest, end - last)
    return longest, overlap


def report(couch: CouchTarget, fake: FakeRapidPro, outgoing: OutgoingLoad, incoming: IncomingLoad,
           faults: FaultInjector, lifecycle: Lifecycle, args: argparse.Namespace, settling: Settling) -> bool:
    """Prints the figures; True when every hard promise held."""
    ids = sorted(outgoing.written)
    docs = couch.bulk_get(ids)
    sent = Counter(b.raw_text for b in fake.broadcasts if isinstance(b.raw_text, str))
    outcome, broken, states = classify_outgoing(docs, sent, ids)
    in_doubt = outcome["in doubt, reached RapidPro"] + outcome["in doubt, never reached RapidPro"]
    print()
    print(f"chaos run: {args.duration:.0f} s on {couch.kind}, {len(faults.workers.all)} worker(s), "
          f"seed {args.seed}; faults: {dict(faults.counts)}")
    print(f"outgoing: {len(ids)} messages: sent once {outcome['once']}, double {outcome['double']}, "
          f"lost {outcome['lost']}, in doubt {in_doubt} "
          f"({outcome['in doubt, reached RapidPro']} reached RapidPro, "
          f"{outcome['in doubt, never reached RapidPro']} did not)")
    print(f"  task states: {dict(states)}")

    counts = couch.incoming_counts(incoming.ids)
    once = sum(1 for i in incoming.ids if counts[i] == 1)
    twice = sum(1 for i in incoming.ids if counts[i] > 1)
    # Missing although a worker answered 200: a broken promise. Never answered 200 (the settle
    # ran out): the message stays with RapidPro, which is not a loss by the worker.
    missing = [i for i in incoming.ids if counts[i] == 0 and i in incoming.answered]
    unanswered = sum(1 for i in incoming.ids if counts[i] == 0 and i not in incoming.answered)
    print(f"incoming: {len(incoming.ids)} messages: stored once {once}, twice {twice}, missing {len(missing)}"
          f"{f', never answered 200 {unanswered}' if unanswered else ''} "
          f"({incoming.attempts} posts: {dict(incoming.statuses)})")

    first_broadcast: dict[str, float] = {}
    for b in fake.broadcasts:
        if isinstance(b.raw_text, str):
            first_broadcast.setdefault(b.raw_text, b.time)
    latencies = [first_broadcast[i] - outgoing.written[i] for i in ids if i in first_broadcast]
    if latencies:
        print(f"send latency (written -> broadcast at RapidPro): p50 {statistics.median(latencies):.2f} s, "
              f"p99 {percentile(latencies, 99):.2f} s, max {max(latencies):.2f} s (n={len(latencies)})")
    accepted = [r.time for r in fake.requests_to(BROADCASTS_PATH, "POST") if r.status == 201]
    gaps = pauses_after_faults(faults.windows, accepted, lifecycle.restarts)
    if gaps:
        longest, window = max(gaps, key=lambda g: g[0])
        print(f"longest pause after a RapidPro fault ended: {longest:.2f} s (after {window.kind} of "
              f"{window.ended - window.began:.1f} s; {len(gaps)} faults without a restart in between, "
              f"median {statistics.median(g for g, _ in gaps):.2f} s)")
    if lifecycle.sigterm_exits:
        print(f"SIGTERM: {len(lifecycle.sigterm_exits)} stops, exit codes {dict(lifecycle.sigterm_codes)}, "
              f"longest {max(lifecycle.sigterm_exits):.2f} s (SHUTDOWN_TIMEOUT {SHUTDOWN_TIMEOUT:.0f} s); "
              f"kill -9: {lifecycle.kills}")
    if len(faults.workers.all) > 1 or lifecycle.active:
        gap, overlap = lease_gaps(lifecycle.active, lifecycle.window)
        print(f"lease: {lifecycle.takeovers} acquisitions; longest gap without an active worker "
              f"{gap:.2f} s; two workers active at once for {overlap:.2f} s in all")
    if faults.couch_restarts:
        print(f"CouchDB restarts: {len(faults.couch_restarts)}, each took "
              f"{min(faults.couch_restarts):.1f}-{max(faults.couch_restarts):.1f} s")
    print(f"worker error-level events: {dict(lifecycle.errors) or 'none'}"
          f"{f'; {lifecycle.stray_lines} non-JSON lines' if lifecycle.stray_lines else ''}")
    settled = report_settling(settling, fake, in_doubt, args)
    conflicts = 0
    if args.cluster:
        left = conflicted_docs(f"{couch.db_url}-rapidpro", couch_request)
        conflicts = len(left)
        print(f"conflicted docs left in the worker's database: {conflicts}{f' {left[:10]}' if left else ''}")
    ok = not broken and not twice and not missing and settled and not conflicts
    if broken:
        print(f"BROKEN outgoing: {broken[:20]}")
    if missing:
        print(f"MISSING incoming: {missing[:20]}")
    return ok


def report_settling(settling: Settling, fake: FakeRapidPro, in_doubt: int, args: argparse.Namespace) -> bool:
    """The settle line; True when sends and statuses settled within their targets."""
    sends_target = IN_DOUBT_CHECK_AFTER + 60.0
    last_broadcast = max((b.time for b in fake.broadcasts), default=settling.faults_stopped)
    statuses_target = 6 * args.status_interval
    sends_s = None if settling.sends_final_at is None else settling.sends_final_at - settling.faults_stopped
    statuses_s = None if settling.statuses_final_at is None else \
        max(0.0, settling.statuses_final_at - max(last_broadcast, settling.faults_stopped))
    unsettled = sum(settling.unsettled.values())

    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} s"

    sends_ok = sends_s is not None and sends_s <= sends_target and in_doubt == 0
    statuses_ok = statuses_s is not None and statuses_s <= statuses_target and unsettled == 0
    print(f"settled: in_doubt={in_doubt} unsettled={unsettled}"
          f"{f' {dict(settling.unsettled)}' if unsettled else ''}; sends final "
          f"{seconds(sends_s)} after the faults stopped (target <= {sends_target:.0f} s: "
          f"{'met' if sends_ok else 'NOT MET'}); every status delivered {seconds(statuses_s)} after the "
          f"last broadcast (target <= {statuses_target:.0f} s, 6 status intervals: "
          f"{'met' if statuses_ok else 'NOT MET'})")
    return sends_ok and statuses_ok


# ---------------------------------------------------------------------------- the run


@dataclass
class Settling:
    """When, after the faults stopped (time.monotonic()), each part of the run was settled."""

    faults_stopped: float
    sends_final_at: float | None = None  # nothing pending or in doubt
    statuses_final_at: float | None = None  # every task delivered
    unsettled: Counter[str] = field(default_factory=Counter)  # task states left at the end


async def settle(couch: CouchTarget, outgoing: OutgoingLoad, incoming: IncomingLoad, timeout: float,
                 faults_stopped: float) -> Settling:
    """Until every send is final and delivered and every incoming SMS was answered 200, or timeout."""
    result = Settling(faults_stopped)
    deadline = time.monotonic() + timeout
    while True:
        docs = await asyncio.to_thread(couch.bulk_get, sorted(outgoing.written))
        states = Counter(str(d["tasks"][0].get("state")) for d in docs.values())
        now = time.monotonic()
        # Pending, or in doubt (in-doubt resolution settles those within IN_DOUBT_CHECK_AFTER + 60 s).
        pending = states["pending"] + states["forwarded-to-gateway"]
        if not pending and result.sends_final_at is None:
            result.sends_final_at = now
        not_delivered = sum(count for state, count in states.items() if state != "delivered")
        if not not_delivered and result.statuses_final_at is None:
            result.statuses_final_at = now
        unanswered = len(incoming.ids) - len(incoming.answered)
        result.unsettled = Counter({s: c for s, c in states.items() if s != "delivered"})
        if not not_delivered and not unanswered:
            return result
        if now >= deadline:
            log("settle timeout reached")
            return result
        log(f"settling: {pending} outgoing pending or in doubt, {not_delivered} not yet delivered, "
            f"{unanswered} incoming not yet answered")
        await asyncio.sleep(2)


async def run(args: argparse.Namespace) -> bool:
    rng = random.Random(args.seed)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="chaos-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster.from_environment() if args.cluster else None
    if args.cluster and cluster is None:
        raise SystemExit("--cluster needs TEST_COUCH_CLUSTER_URLS and TEST_COUCH_CLUSTER_CTL "
                         "(tests/support/cluster.py)")
    couch = CouchTarget(cluster)
    fake = FakeRapidPro()
    fake.rate_limit = args.calls_per_hour
    # A step per status query, so status tracking has something to learn all along.
    fake.default_status_script = ["wired", "sent", "delivered"]
    await fake.start()
    workers: Workers | None = None
    try:
        await asyncio.to_thread(couch.setup, fake.url)
        env = {"COUCH_URL": couch.db_url, "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN,
               "RAPIDPRO_INCOMING_KEY": INCOMING_KEY, "LOG_LEVEL": "info",
               "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT), "RAPIDPRO_TIMEOUT": "5", "COUCH_TIMEOUT": "5",
               "SWEEP_INTERVAL": "10", "CHECKPOINT_INTERVAL": "1",
               "IN_DOUBT_CHECK_AFTER": str(IN_DOUBT_CHECK_AFTER), "CONCURRENCY": str(args.concurrency),
               "STATUS_POLL_INTERVAL": str(args.status_interval),
               "RAPIDPRO_CALLS_PER_HOUR": str(args.calls_per_hour), "LEASE_TTL": str(args.lease_ttl)}
        workers = Workers(args.workers, env, log_dir, couch.node_db_urls)
        await workers.start_all()
        log(f"{args.workers} worker(s) up on {couch.kind}; fake RapidPro at {fake.url}; logs in {log_dir}")

        outgoing = OutgoingLoad(couch.node_db_urls, args.out_rate)
        # Separate generators: the sequence of faults depends on the seed only, not on how many
        # webhook posts happened to be retried in between.
        incoming = IncomingLoad(workers, args.in_rate, random.Random(rng.random()))
        faults = FaultInjector(fake, workers, random.Random(rng.random()),
                               couch_restart_cmd=args.couch_restart_cmd, cluster=cluster)
        load_began = time.time()
        stop_load, give_up = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(outgoing.run(stop_load)),
                 asyncio.create_task(incoming.run(stop_load, give_up)),
                 asyncio.create_task(faults.run(stop_load))]
        if args.final_throttle:
            # Begins 2-6 s before the load ends (the window lasts 1-5 s).
            final_at = time.monotonic() + args.duration - faults.rng.uniform(2.0, 6.0)
            tasks.append(asyncio.create_task(faults.final_throttle(final_at)))
        await asyncio.sleep(args.duration)
        workers.lifecycle.window = (load_began, time.time())
        stop_load.set()
        await asyncio.gather(*tasks[2:])  # a restart or the final 429 window in progress completes
        fake.outage = None
        if cluster is not None:
            await asyncio.to_thread(cluster.restore)
        for worker in workers.all:
            if not worker.running:
                await worker.start()
                await worker.wait_started()
        log("load and faults stopped; settling")
        settling = await settle(couch, outgoing, incoming, args.settle, time.monotonic())
        give_up.set()
        await asyncio.gather(*tasks)
        await workers.stop_all()
        return report(couch, fake, outgoing, incoming, faults, workers.lifecycle, args, settling)
    finally:
        if workers is not None:
            await workers.kill_all()
            workers.close()
        if cluster is not None:
            await asyncio.to_thread(cluster.restore)
        await fake.stop()
        await asyncio.to_thread(couch.close)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load and faults")
    parser.add_argument("--settle", type=float, default=180.0, help="at most this long to settle after")
    parser.add_argument("--status-interval", type=float, default=5.0,
                        help="the workers' STATUS_POLL_INTERVAL")
    parser.add_argument("--no-final-throttle", dest="final_throttle", action="store_false",
                        help="no 429 window in the last seconds of the load")
    parser.add_argument("--workers", type=int, default=None, help="default 1; 3 with --cluster")
    parser.add_argument("--out-rate", type=float, default=2.0, help="outgoing messages per second")
    parser.add_argument("--in-rate", type=float, default=2.0, help="incoming SMS per second")
    parser.add_argument("--concurrency", type=int, default=8, help="the workers' CONCURRENCY")
    # After a 429 the worker's budget refills at this rate only (calls/h / 3600 per second): the
    # default leaves room for the load; at 3600 (RapidPro's default) the load above 1/s outruns it.
    parser.add_argument("--calls-per-hour", type=int, default=36000,
                        help="the workspace's RapidPro API budget (worker and fake)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log-dir", default=None, help="where the workers' logs go (default: a temp dir)")
    parser.add_argument("--lease-ttl", type=float, default=15.0, help="the workers' LEASE_TTL")
    parser.add_argument("--cluster", action="store_true",
                        help="run on the 3-node cluster of TEST_COUCH_CLUSTER_URLS / TEST_COUCH_CLUSTER_CTL, "
                             "with node pauses and partitions among the faults (default workers: 3)")
    parser.add_argument("--couch-restart-cmd", default=None,
                        help="a shell command that restarts CouchDB (keeping its data); adds CouchDB "
                             "restarts to the faults")
    args = parser.parse_args()
    if args.workers is None:
        args.workers = 3 if args.cluster else 1
    if args.seed is None:
        args.seed = random.randrange(10**6)
    ok = asyncio.run(run(args))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""The alert rules in a real Prometheus (Debian's `prometheus` package) scraping a running worker:
a fault is planted, the matching alert goes `firing` (Prometheus' /api/v1/alerts), and it resolves
when the fault ends.

Prometheus runs on loopback on a free port, scrapes every second and evaluates every second; the
rules are deploy/prometheus/alerts.yml with every `for:` cut to one second
(deploy/watchdog/generate_alerts.py `with_short_holds`): the expressions are the shipped ones. The
worker runs in-process behind two TCP proxies, one in front of its HTTP door (the worker "down")
and one in front of CouchDB (the lease lost); RapidPro is the fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from deploy.watchdog import generate_alerts
from playground.fake_rapidpro import BROADCASTS_PATH, DEFAULT_TOKEN
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import put_settings
from tests.support.in_doubt import cli, doc_with_stale_claim
from tests.support.outgoing import put_doc, rapidpro_settings, task
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually
from tests.support.workers import InProcessWorkers
from worker.app import Worker

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus not found: install Debian's `prometheus` package "
        "(apt-get install prometheus) or put the prometheus binary on PATH"),
]

JOB = "cht-rapidpro-worker"
LEASE_TTL = 3.0
FIRING_TIMEOUT = 60.0
RESOLVED_TIMEOUT = 120.0  # sending resumes at the end of a backed-off pause (up to a minute)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Rig:
    worker: Worker
    door: TcpProxy  # in front of the worker's HTTP door: what Prometheus scrapes
    couch: TcpProxy  # in front of CouchDB: what the worker talks to
    prometheus_url: str
    http: aiohttp.ClientSession

    async def alerts(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.prometheus_url}/api/v1/alerts") as response:
            assert response.status == 200
            return (await response.json())["data"]["alerts"]

    async def state(self, name: str) -> str | None:
        """`firing`, `pending` or None (inactive: Prometheus lists no such alert)."""
        states = {alert["state"] for alert in await self.alerts() if alert["labels"]["alertname"] == name}
        return "firing" if "firing" in states else ("pending" if states else None)

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.prometheus_url}/api/v1/query", params={"query": promql}) as response:
            assert response.status == 200
            return (await response.json())["data"]["result"]

    async def wait_firing(self, name: str) -> dict[str, Any]:
        async def firing() -> dict[str, Any] | None:
            return next((a for a in await self.alerts()
                         if a["labels"]["alertname"] == name and a["state"] == "firing"), None)
        try:
            return await eventually(firing, timeout=FIRING_TIMEOUT, interval=0.25)
        except TimeoutError:
            raise AssertionError(f"{name} not firing; alerts: {await self.alerts()}") from None

    async def wait_resolved(self, name: str) -> None:
        async def inactive() -> bool:
            return await self.state(name) is None
        try:
            await eventually(inactive, timeout=RESOLVED_TIMEOUT, interval=0.25)
        except TimeoutError:
            raise AssertionError(f"{name} still active; alerts: {await self.alerts()}") from None

    async def wait_quiet(self) -> None:
        """Prometheus has scraped the worker, which holds the lease, and no alert is pending or firing."""
        async def quiet() -> bool:
            scraped = await self.query(f'cht_rapidpro_lease_active{{job="{JOB}"}} == 1')
            return bool(scraped) and not await self.alerts()
        try:
            await eventually(quiet, timeout=FIRING_TIMEOUT, interval=0.25)
        except TimeoutError:
            raise AssertionError(f"not quiet before the fault; alerts: {await self.alerts()}") from None


def prometheus_config(directory: Path, target: str) -> Path:
    rules = generate_alerts.with_short_holds(generate_alerts.PROMETHEUS_RULES.read_text(), "1s")
    (directory / "alerts.yml").write_text(rules)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(directory / "alerts.yml")],
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}]}],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


async def start_prometheus(directory: Path, target: str, http: aiohttp.ClientSession
                           ) -> tuple[asyncio.subprocess.Process, str]:
    assert PROMETHEUS is not None
    config = prometheus_config(directory, target)
    log_path = directory / "prometheus.log"
    for _ in range(3):  # the free port may be taken between the look-up and the bind
        port = free_port()
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        started = await eventually(lambda p=process, u=url: answers(p, u, http), timeout=30, interval=0.1)
        if started == "ready":
            return process, url
    raise AssertionError(f"prometheus did not start: {log_path.read_text()[-2000:]}")


async def answers(process: asyncio.subprocess.Process, url: str, http: aiohttp.ClientSession) -> str | None:
    """"ready", "exited" or None (not yet)."""
    if process.returncode is not None:
        return "exited"
    with contextlib.suppress(aiohttp.ClientError):
        async with http.get(f"{url}/-/ready") as response:
            return "ready" if response.status == 200 else None
    return None


@pytest.fixture
async def rig(medic_db, fake_rapidpro, in_process_workers: InProcessWorkers, tmp_path: Path
              ) -> AsyncIterator[Rig]:
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    target = urlsplit(medic_db.server_url)
    couch = TcpProxy(target.hostname or "127.0.0.1", target.port or 5984)
    await couch.start()
    credentials = f"{target.username}:{target.password}@" if target.username else ""
    worker = await in_process_workers.start({
        "COUCH_URL": f"http://{credentials}127.0.0.1:{couch.port}/{medic_db.name}", "LISTEN_PORT": "0",
        "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "CHECKPOINT_INTERVAL": "0.2", "RAPIDPRO_TIMEOUT": "2",
        "COUCH_TIMEOUT": "2", "LEASE_TTL": str(LEASE_TTL), "IN_DOUBT_CHECK_AFTER": "4",
        "CREDENTIALS_TTL": "0"})
    assert worker.http is not None
    door = TcpProxy("127.0.0.1", worker.http.port)
    await door.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        process, url = await start_prometheus(tmp_path, f"127.0.0.1:{door.port}", http)
        try:
            yield Rig(worker, door, couch, url, http)
        finally:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
            couch.set_mode("up")
            await in_process_workers.stop_all()  # while CouchDB still answers
            await door.stop()
            await couch.stop()


async def test_the_worker_unreachable_fires_worker_down_then_resolves(rig: Rig):
    await rig.wait_quiet()
    rig.door.set_mode("down")
    alert = await rig.wait_firing("ChtRapidproWorkerDown")
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["job"] == JOB
    rig.door.set_mode("up")
    await rig.wait_resolved("ChtRapidproWorkerDown")


async def test_rapidpro_failing_every_send_fires_sending_paused_then_resolves(
        rig: Rig, fake_rapidpro, medic_db):
    await rig.wait_quiet()
    fault = fake_rapidpro.fail_next(10**6, path=BROADCASTS_PATH)  # 500 with a page: nothing created
    for i in range(3):
        await put_doc(medic_db.url, {"_id": f"down-{i}", "type": "data_record",
                                     "tasks": [task("pending", text=f"while down {i}")]})
    alert = await rig.wait_firing("ChtRapidproSendingPaused")
    assert alert["labels"]["reason"] == "rapidpro_server_error"
    assert fake_rapidpro.broadcasts == []
    fake_rapidpro.faults.remove(fault)
    await rig.wait_resolved("ChtRapidproSendingPaused")
    await eventually(lambda: len(fake_rapidpro.broadcasts) == 3, timeout=RESOLVED_TIMEOUT)


async def test_a_send_in_doubt_fires_messages_in_doubt_until_the_operator_settles_it(rig: Rig, medic_db):
    await rig.wait_quiet()
    reason = {"reason": "2 broadcasts to this number", "since": iso_ago()}
    waiting = {"state": "in-doubt", "needs_operator": reason}
    message_uuid = await doc_with_stale_claim(medic_db, f"doubt-{uuidlib.uuid4().hex[:6]}", "in doubt",
                                              **waiting)
    alert = await rig.wait_firing("ChtRapidproMessagesInDoubt")
    assert alert["value"] in ("1", "1e+00")
    settled = await asyncio.to_thread(cli, medic_db, "in-doubt", "resolve", message_uuid, "--failed", "test")
    assert settled.returncode == 0, settled.stderr
    await rig.wait_resolved("ChtRapidproMessagesInDoubt")


async def test_the_lease_lost_fires_no_active_worker_then_resolves_when_it_is_back(rig: Rig):
    await rig.wait_quiet()
    rig.couch.set_mode("down")  # the worker cannot renew: it steps down after LEASE_TTL
    alert = await rig.wait_firing("ChtRapidproNoActiveWorker")
    assert alert["labels"]["severity"] == "critical"
    assert await rig.query(f'cht_rapidpro_lease_active{{job="{JOB}"}} == 0')  # scraped, not absent
    await rig.wait_firing("ChtRapidproNotReady")
    rig.couch.set_mode("up")
    await rig.wait_resolved("ChtRapidproNoActiveWorker")
    await rig.wait_resolved("ChtRapidproNotReady")

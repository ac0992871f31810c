"""The channel watcher on the worker in-process: the active worker reads `channels.json` every
CHANNEL_CHECK_INTERVAL and shows each channel in /healthz `rapidpro.channels` and /metrics; a
standby reads nothing and shows no channel metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from playground.fake_workspace import FakeWorkspace
from tests.support.couch_fixtures import put_settings
from tests.support.metrics import Scraper
from tests.support.waiting import eventually
from tests.support.workers import InProcessWorkers
from worker.app import Worker
from worker.rapidpro.budget import Priority

CHANNELS_PATH = "/api/v2/channels.json"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def start(workers: InProcessWorkers, couch_url: str, **env: str) -> Worker:
    return await workers.start({"COUCH_URL": couch_url, "LISTEN_PORT": "0", "CHECKPOINT_INTERVAL": "0.2",
                                "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "CHANNEL_CHECK_INTERVAL": "3600", **env})


async def health_of(http: aiohttp.ClientSession, worker: Worker) -> dict[str, Any]:
    assert worker.http is not None
    async with http.get(f"http://127.0.0.1:{worker.http.port}/healthz") as response:
        return dict(await response.json())


async def test_the_active_worker_watches_the_channels(
        medic_db, fake_rapidpro: FakeRapidPro, fake_workspace: FakeWorkspace, http, in_process_workers):
    await asyncio.to_thread(put_settings, medic_db.url, {"sms": {"outgoing_service": "rapidpro", "rapidpro": {
        "url": fake_rapidpro.url}}, "default_country_code": 254})
    (phone,) = fake_workspace.channels
    fake_workspace.add_channel("Vonage", "+254700000200", type="vonage")
    worker = await start(in_process_workers, medic_db.url)
    assert worker.http is not None

    async def read() -> dict[str, Any] | None:
        channels = (await health_of(http, worker))["rapidpro"]["channels"]
        return channels if channels["items"] is not None else None

    # A reading at the start of the session (the interval is an hour here).
    channels = await eventually(read, timeout=15)
    assert (channels["watching"], channels["active"], channels["interval_s"]) == (True, 2, 3600.0)
    by_name = {item["name"]: item for item in channels["items"]}
    android = by_name["Fake Channel"]
    assert (android["uuid"], android["android"], android["asleep"], android["power_level"]) == (
        phone.uuid, True, False, 85)
    assert android["address"] == "+2547******00" and "700000100" not in str(channels)
    assert by_name["Vonage"]["last_seen"] is None and not by_name["Vonage"]["asleep"]
    assert len(fake_rapidpro.requests_to(CHANNELS_PATH, "GET")) == 1
    metrics = Scraper(http, f"http://127.0.0.1:{worker.http.port}")
    labels = {"channel": phone.uuid, "channel_name": "Fake Channel"}
    assert await metrics.value("cht_rapidpro_channel_power_level", **labels) == 85
    assert (await metrics.value("cht_rapidpro_channel_last_seen_age_seconds", **labels) or 0) < 60
    assert await metrics.value("cht_rapidpro_channels_active") == 2

    # The phone stops syncing; the Vonage channel goes away: the next reading says so, and logs it.
    fake_workspace.put_to_sleep(phone, 2 * 3600)
    fake_workspace.channels[:] = [phone]
    with structlog.testing.capture_logs() as logs:
        await worker.channels.check_once()
    events = {entry["event"]: entry for entry in logs}
    assert events["channel_asleep"]["channel"] == phone.uuid and "700000100" not in str(events)
    assert "no_active_channel" in events
    channels = (await health_of(http, worker))["rapidpro"]["channels"]
    assert channels["active"] == 0 and channels["items"][0]["asleep"] is True
    assert await metrics.value("cht_rapidpro_channels_active") == 0
    assert (await metrics.value("cht_rapidpro_channel_last_seen_age_seconds", **labels) or 0) >= 7200

    # A failed reading keeps the last one and says why.
    fake_rapidpro.fail_next(1, path=CHANNELS_PATH)
    await worker.channels.check_once()
    channels = (await health_of(http, worker))["rapidpro"]["channels"]
    assert "500" in channels["last_error"] and channels["items"][0]["asleep"] is True


async def test_a_standby_reads_no_channels(medic_db, fake_rapidpro, http, in_process_workers):
    await asyncio.to_thread(put_settings, medic_db.url, {"sms": {"outgoing_service": "rapidpro", "rapidpro": {
        "url": fake_rapidpro.url}}})
    active = await start(in_process_workers, medic_db.url, INSTANCE_ID="a")
    await eventually(lambda: len(fake_rapidpro.requests_to(CHANNELS_PATH)) == 1, timeout=15)
    standby = await start(in_process_workers, medic_db.url, INSTANCE_ID="b")
    assert standby.lease.role == "standby" and active.lease.role == "active"
    channels = (await health_of(http, standby))["rapidpro"]["channels"]
    assert (channels["watching"], channels["items"]) == (False, None)
    assert standby.http is not None
    samples = await Scraper(http, f"http://127.0.0.1:{standby.http.port}").scrape()
    assert not [name for (name, _) in samples if "channel" in name]
    assert len(fake_rapidpro.requests_to(CHANNELS_PATH)) == 1


def test_the_watcher_waits_behind_status_tracking_and_before_reconciliation():
    assert Priority.STATUS < Priority.CHANNELS < Priority.INCOMING

"""The worker in this process, against the real test server: settings, retries, parking."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from playground.fake_rapidpro import DEFAULT_TOKEN
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import couch_request, put_settings
from tests.support.daemon import child_env
from tests.support.waiting import eventually
from worker.app import Worker

pytestmark = [pytest.mark.slow, pytest.mark.daemon]


class Recording:
    """A test transition: records the docs it sees; fails for ids it is told to."""

    name = "recording"

    def __init__(self, fail_ids: set[str] = frozenset()) -> None:
        self.seen: list[str] = []
        self.fail_ids = set(fail_ids)
        self.changed = asyncio.Condition()

    def matches(self, doc: dict[str, Any]) -> bool:
        return doc.get("type") == "data_record"

    async def apply(self, doc: dict[str, Any]) -> None:
        self.seen.append(doc["_id"])
        async with self.changed:
            self.changed.notify_all()
        if doc["_id"] in self.fail_ids:
            raise RuntimeError(f"cannot handle {doc['_id']}")


async def wait_until(condition, predicate, timeout: float = 10.0) -> None:
    async with condition:
        await asyncio.wait_for(condition.wait_for(predicate), timeout)


@pytest.fixture
async def running(medic_db, in_process_workers) -> AsyncIterator[tuple[Worker, Recording]]:
    recording = Recording(fail_ids={"always-fails"})
    worker = await in_process_workers.start({"COUCH_URL": medic_db.url, "LISTEN_PORT": "0",
                                             "CHANGE_MAX_ATTEMPTS": "3", "CHECKPOINT_INTERVAL": "0.1"},
                                            extra_transitions=[recording])
    yield worker, recording


async def put(db_url: str, doc: dict[str, Any]) -> None:
    status, body = await asyncio.to_thread(couch_request, "PUT", f"{db_url}/{doc['_id']}", doc)
    assert status in (201, 202), body


async def test_settings_change_is_in_force_within_a_second(running, medic_db):
    worker, _ = running
    assert worker.settings.current is not None
    assert worker.settings.current.outgoing_service == "medic-gateway"
    settings = {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": "http://127.0.0.1:9"}},
                "default_country_code": 255}
    seen = asyncio.Event()

    async def listener(old, new):
        if new.outgoing_service == "rapidpro":
            seen.set()

    worker.settings.subscribe(listener)
    await asyncio.to_thread(put_settings, medic_db.url, settings)
    await asyncio.wait_for(seen.wait(), 1.0)
    assert worker.settings.current.rapidpro_url == "http://127.0.0.1:9"
    assert worker.settings.current.default_country_code == 255


async def test_broken_settings_keep_the_last_good(running, medic_db):
    worker, _ = running
    good = {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": "https://textit.com"}}}
    ok = asyncio.Event()

    async def listener(old, new):
        ok.set()

    worker.settings.subscribe(listener)
    await asyncio.to_thread(put_settings, medic_db.url, good)
    await asyncio.wait_for(ok.wait(), 5)
    rev_good = worker.settings.current.rev

    await asyncio.to_thread(put_settings, medic_db.url, {"sms": {"rapidpro": {"url": "not a url"}}})
    # The refusal is recorded, and nothing replaced the settings in force.
    await eventually(lambda: worker.settings.last_error is not None, 5)
    assert "sms.rapidpro.url" in worker.settings.last_error
    assert worker.settings.current.rev == rev_good
    assert worker.settings.current.rapidpro_url == "https://textit.com"
    health = await worker.health()
    assert health["settings_error"] == worker.settings.last_error


async def test_failing_change_is_retried_then_parked_and_others_go_on(running, medic_db):
    worker, recording = running
    await put(medic_db.url, {"_id": "always-fails", "type": "data_record"})
    await put(medic_db.url, {"_id": "fine", "type": "data_record"})
    await wait_until(recording.changed, lambda: "fine" in recording.seen)
    parked = await eventually(worker.parked.list, 20)
    assert recording.seen.count("always-fails") == 3  # CHANGE_MAX_ATTEMPTS
    [entry] = parked
    assert entry["doc_id"] == "always-fails"
    assert entry["attempts"] == 3
    assert "cannot handle always-fails" in entry["error"]
    # The checkpoint passed the parked change.
    end = (await worker.medic.changes("now", limit=1, include_docs=False)).last_seq

    await eventually(lambda: worker.checkpoints.saved_seq == end, 10)
    health = await worker.health()
    assert health["changes"]["parked"] == 1
    assert health["parked_total"] == 1
    # Operators list them from the command line.
    listed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "worker", "parked"], capture_output=True, text=True,
        timeout=30, env=child_env({"COUCH_URL": medic_db.url}))
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert json.loads(line)["doc_id"] == "always-fails"


async def test_malformed_docs_do_not_stop_the_feed(running, medic_db):
    worker, recording = running
    await put(medic_db.url, {"_id": "weird", "type": "data_record", "tasks": "not a list", "settings": 7})
    await put(medic_db.url, {"_id": "settings-like", "type": ["x"]})
    await put(medic_db.url, {"_id": "after", "type": "data_record"})
    await wait_until(recording.changed, lambda: "after" in recording.seen)
    status, _ = await asyncio.to_thread(couch_request, "GET", medic_db.url)
    assert status == 200
    assert worker.dispatcher is not None and worker.dispatcher.stats.parked == 0


async def test_status_tracking_follows_the_feed_not_the_view(medic_db, in_process_workers,
                                                              fake_rapidpro) -> None:
    """The running worker learns which messages are tracked from its `_changes` feed: a message
    another sender sent is followed, one delivered meanwhile is dropped; the view is read once."""

    await asyncio.to_thread(put_settings, medic_db.url, {
        "sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake_rapidpro.url}}})
    worker = await in_process_workers.start({"COUCH_URL": medic_db.url, "LISTEN_PORT": "0",
                                             "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "STATUS_POLL_INTERVAL": "1",
                                             "CHECKPOINT_INTERVAL": "0.1"})
    await eventually(lambda: worker.status.loaded)
    pages = worker.status.stats.view_pages

    def task(state: str, ref: int, uuid: str) -> dict[str, Any]:
        return {"state": state, "gateway_ref": ref, "state_details": "Sent",
                "messages": [{"uuid": uuid, "to": "+254700000001", "message": "hi"}],
                "state_history": [{"state": state, "timestamp": iso_ago(120)}]}

    await put(medic_db.url, {"_id": "other-sender", "type": "data_record",
                             "tasks": [task("sent", 4242, "m-other")]})
    await eventually(lambda: "m-other" in worker.status.tracked())
    _, doc = await asyncio.to_thread(couch_request, "GET", f"{medic_db.url}/other-sender")
    doc["tasks"][0]["state"] = "delivered"
    await put(medic_db.url, doc)
    await eventually(lambda: "m-other" not in worker.status.tracked())
    assert worker.status.stats.view_pages == pages

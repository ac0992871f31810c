"""The daemon as operators run it: a subprocess stopped by SIGTERM, kill -9 and CouchDB restarts.

Every change must be processed at least once across restarts, and none skipped. Evidence is the
daemon's own `change_processed` debug events.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from tests.support.couch_fixtures import couch_request, create_db, seed_design_docs
from tests.support.couchserver import CouchTestServer
from tests.support.daemon import Daemon


def insert_docs(db_url: str, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    status, body = couch_request("POST", f"{db_url}/_bulk_docs",
                                 {"docs": [{"_id": doc_id, "type": "data_record"} for doc_id in ids]})
    assert status == 201 and not [item for item in body if "error" in item]
    return ids


def read_checkpoint(db_url: str) -> object:
    status, body = couch_request("GET", f"{db_url}-rapidpro/_local/cht-rapidpro-worker-checkpoint")
    return body.get("seq") if status == 200 else None


def test_first_start_follows_from_now_then_sigterm_and_resume(medic_db):
    old = insert_docs(medic_db.url, "old", 5)
    with Daemon({"COUCH_URL": medic_db.url}) as first:
        first.wait_event("worker_started")
        before = insert_docs(medic_db.url, "a", 20)
        first.wait_for(lambda _e: set(before) <= set(first.processed_doc_ids()))
        code, took = first.terminate_and_wait()
        assert code == 0
        assert took < 10
        first.wait_event("worker_stopped")
        assert not first.stray_lines
    assert not set(old) & set(first.processed_doc_ids()), "first start must not replay history"

    during = insert_docs(medic_db.url, "b", 20)  # written while the worker is down
    with Daemon({"COUCH_URL": medic_db.url}) as second:
        second.wait_event("checkpoint_loaded")
        second.wait_for(lambda _e: set(during) <= set(second.processed_doc_ids()))
        assert not set(before) & set(second.processed_doc_ids()), "resumed from the checkpoint"
        assert second.terminate_and_wait()[0] == 0


def test_kill_9_during_a_burst_loses_no_change(medic_db):
    burst = [f"k-{i:04d}" for i in range(300)]
    processed: set[str] = set()
    env = {"COUCH_URL": medic_db.url, "CHECKPOINT_EVERY": "20"}
    with Daemon(env) as first:
        first.wait_event("worker_started")
        for start in range(0, 300, 50):
            couch_request("POST", f"{medic_db.url}/_bulk_docs",
                          {"docs": [{"_id": d} for d in burst[start:start + 50]]})
        first.wait_for(lambda _e: len(first.processed_doc_ids()) >= 60)
        first.kill()  # SIGKILL: no shutdown, no final checkpoint
        processed |= set(first.processed_doc_ids())
    assert len(processed) < 300, "the kill must land mid-burst for this test to mean anything"

    with Daemon(env) as second:
        second.wait_for(lambda _e: set(burst) <= processed | set(second.processed_doc_ids()), timeout=60)
        assert second.terminate_and_wait()[0] == 0


def test_healthz_reports_feed_and_checkpoint(medic_db):
    with Daemon({"COUCH_URL": medic_db.url}) as daemon:
        daemon.wait_event("worker_started")
        ids = insert_docs(medic_db.url, "h", 3)
        daemon.wait_for(lambda _e: set(ids) <= set(daemon.processed_doc_ids()))
        daemon.wait_event("checkpoint_saved")
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=10) as response:
            assert response.status == 200
            body = json.loads(response.read())
        assert body["status"] == "ok"
        assert body["feed"]["connected"] is True
        assert body["checkpoint"] is not None
        assert body["backlog"] == 0
        assert body["changes"]["processed"] >= 3
        assert body["settings"]["outgoing_service"] == "medic-gateway"


@pytest.mark.skipif(bool(os.environ.get("TEST_COUCH_URL")),
                    reason="restarts a CouchDB-protocol server of its own (LevelDB mode)")
def test_survives_couchdb_restart_and_processes_everything(tmp_path):
    server = CouchTestServer(data_dir=tmp_path / "couch").start()
    db_url = f"{server.url}/medic"
    create_db(db_url)
    seed_design_docs(db_url)
    try:
        with Daemon({"COUCH_URL": db_url, "COUCH_TIMEOUT": "2"}) as daemon:
            daemon.wait_event("worker_started")
            first = insert_docs(db_url, "r1", 10)
            daemon.wait_for(lambda _e: set(first) <= set(daemon.processed_doc_ids()))
            server.kill()
            daemon.wait_for(lambda events: any(e.get("event") in ("feed_error", "feed_disconnected")
                                               for e in events))
            server.start()  # same port, same data
            second = insert_docs(db_url, "r2", 10)
            daemon.wait_for(lambda _e: set(second) <= set(daemon.processed_doc_ids()), timeout=60)
            assert daemon.process is not None and daemon.process.poll() is None
            assert daemon.terminate_and_wait()[0] == 0
    finally:
        server.stop()


def test_sigint_also_stops_cleanly(medic_db):
    with Daemon({"COUCH_URL": medic_db.url}) as daemon:
        daemon.wait_event("worker_started")
        daemon.signal(signal.SIGINT)
        assert daemon.process is not None and daemon.process.wait(15) == 0
        daemon.wait_event("worker_stopped")


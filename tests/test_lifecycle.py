"""The daemon as operators run it: a subprocess stopped by SIGTERM, kill -9 and CouchDB restarts.

Every change must be processed at least once across restarts, and none skipped. Evidence is the
daemon's own `change_processed` debug events.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request

import pytest

from tests.support.couch_fixtures import couch_request, create_db, seed_design_docs
from tests.support.couchserver import CouchTestServer
from tests.support.daemon import Daemon
from transitions.incoming.record import doc_id_for
from worker.feed.checkpoint import CHECKPOINT_ID
from worker.incoming.webhook import V2_PATH

pytestmark = [pytest.mark.slow, pytest.mark.daemon]


def insert_docs(db_url: str, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    status, body = couch_request("POST", f"{db_url}/_bulk_docs",
                                 {"docs": [{"_id": doc_id, "type": "data_record"} for doc_id in ids]})
    assert status == 201 and not [item for item in body if "error" in item]
    return ids


def read_checkpoint(db_url: str) -> object:
    status, body = couch_request("GET", f"{db_url}-rapidpro/{CHECKPOINT_ID}")
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



INCOMING_KEY = "lifecycle-incoming-key"
SHUTDOWN_TIMEOUT = 3


def webhook_headers(port: int, body_length: int) -> socket.socket:
    """A webhook request's headers, sent; its body is the caller's business. Returns once the
    worker routed the request to its handler (it answered `100 Continue`)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall((f"POST {V2_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: Token {INCOMING_KEY}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {body_length}\r\nExpect: 100-continue\r\n\r\n").encode())
    assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100")
    return sock


def read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def error_lines(daemon: Daemon) -> list[dict]:
    return [e for e in daemon.events if e.get("level") in ("error", "critical")]


def webhook_daemon(medic_db) -> Daemon:
    return Daemon({"COUCH_URL": medic_db.url, "RAPIDPRO_INCOMING_KEY": INCOMING_KEY,
                   "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)})


def test_sigterm_with_a_webhook_body_that_never_comes_exits_on_time(medic_db):
    body = json.dumps({"id": "never-sent", "from": "+254700000001", "content": "hello"}).encode()
    with webhook_daemon(medic_db) as daemon:
        daemon.wait_event("worker_started")
        sock = webhook_headers(daemon.port, len(body))  # ... and the body is held back
        with sock:
            code, took = daemon.terminate_and_wait(timeout=SHUTDOWN_TIMEOUT + 10)
            answer = read_response(sock)
    assert code == 0
    assert took < SHUTDOWN_TIMEOUT + 2
    assert answer.startswith(b"HTTP/1.1 503"), answer  # cut off, and told so
    assert daemon.wait_event("incoming_sms", outcome="shutting_down")["level"] == "warning"
    assert not error_lines(daemon)
    assert not daemon.stray_lines


def test_a_webhook_body_arriving_after_sigterm_is_still_stored(medic_db):
    message_id = "arrives-late"
    body = json.dumps({"id": message_id, "from": "+254700000001", "content": "hello"}).encode()
    with webhook_daemon(medic_db) as daemon:
        daemon.wait_event("worker_started")
        with webhook_headers(daemon.port, len(body)) as sock:
            daemon.signal(signal.SIGTERM)
            daemon.wait_event("shutdown_requested")
            sock.sendall(body)
            answer = read_response(sock)
        assert daemon.process is not None and daemon.process.wait(SHUTDOWN_TIMEOUT + 10) == 0
    assert answer.startswith(b"HTTP/1.1 200"), answer
    status, _ = couch_request("GET", f"{medic_db.url}/{doc_id_for(message_id)}")
    assert status == 200
    assert not error_lines(daemon)


def test_a_client_hanging_up_mid_request_is_a_warning_not_an_error(medic_db):
    with webhook_daemon(medic_db) as daemon:
        daemon.wait_event("worker_started")
        sock = webhook_headers(daemon.port, 100)
        sock.sendall(b'{"id": "hung-up"')
        sock.close()
        event = daemon.wait_event("incoming_sms", outcome="client_gone")
        assert event["level"] == "warning"
        assert daemon.terminate_and_wait()[0] == 0
    assert not error_lines(daemon)


def test_a_busy_listen_port_is_one_clear_error_and_exit_1(medic_db):
    # Another process holds the port: one error event naming it, no traceback, exit 1 (a
    # service manager restarts the daemon later), the lease not taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Daemon({"COUCH_URL": medic_db.url, "LISTEN_PORT": str(port)}) as daemon:
            event = daemon.wait_event("http_listen_failed")
            assert daemon.process is not None
            assert daemon.process.wait(15) == 1
            assert f"127.0.0.1:{port}" in event["error"] and event["level"] == "error"
            assert not daemon.stray_lines, daemon.stray_lines  # no traceback
            assert not [e for e in daemon.events if e.get("event") in ("worker_crashed", "lease_acquired")]

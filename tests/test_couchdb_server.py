"""The CouchDB contract the worker relies on, checked through raw HTTP and the ibmcloudant SDK.

Runs against the project's Node test server, or against a real Apache CouchDB 3 when
TEST_COUCH_URL is set, so nothing here may depend on the test server's quirks (seqs are only
checked to be strings or ints that are sent back unchanged). Tests that need the local server
itself (restarts, kill -9, LevelDB) are skipped when TEST_COUCH_URL is set.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ibm_cloud_sdk_core import ApiException
from ibm_cloud_sdk_core.authenticators import BasicAuthenticator
from ibmcloudant.cloudant_v1 import BulkDocs, CloudantV1, Document

from tests.support.couch_fixtures import (
    MedicDb,
    couch_request,
    create_db,
    delete_db,
    put_settings,
)
from tests.support.couchserver import CouchTestServer

local_only = pytest.mark.skipif(
    bool(os.environ.get("TEST_COUCH_URL")), reason="needs the project's local test server"
)


# ---------------------------------------------------------------------------- helpers
def split_url(url: str) -> tuple[str, str, str, int]:
    """(user, password, host, port) of an admin URL."""
    parts = urllib.parse.urlsplit(url)
    return (
        urllib.parse.unquote(parts.username or ""),
        urllib.parse.unquote(parts.password or ""),
        parts.hostname or "",
        parts.port or 80,
    )


def bare_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"


def with_user(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(bare_url(url))
    return parts._replace(netloc=f"{user}:{password}@{parts.netloc}").geturl()


@pytest.fixture
def cloudant(couch_server_url: str) -> CloudantV1:
    user, password, _, _ = split_url(couch_server_url)
    service = CloudantV1(authenticator=BasicAuthenticator(user, password))
    service.set_service_url(bare_url(couch_server_url))
    return service


def stream_lines(
    db_url: str, query: str, *, read_for: float, until: Callable[[bytes], bool] | None = None
) -> tuple[list[tuple[float, bytes]], bool]:
    """GET _changes as a raw stream (sending Accept-Encoding: gzip, as real clients do) and record
    each line with the time it arrived, until the server ends the response, `until(line)` is true
    or `read_for` seconds pass. Returns (lines, whether the server ended the response)."""
    user, password, host, port = split_url(db_url)
    path = urllib.parse.urlsplit(db_url).path
    conn = http.client.HTTPConnection(host, port, timeout=read_for)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    conn.request(
        "GET",
        f"{path}/_changes?{query}",
        headers={"Authorization": f"Basic {token}", "Accept-Encoding": "gzip"},
    )
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Encoding") is None
    started = time.monotonic()
    lines: list[tuple[float, bytes]] = []
    ended = False
    while time.monotonic() - started < read_for:
        try:
            line = response.readline()
        except TimeoutError:  # the socket timeout: nothing came for read_for seconds
            break
        if not line:
            ended = True
            break
        lines.append((time.monotonic() - started, line))
        if until is not None and until(line):
            break
    conn.close()
    return lines, ended


def put_doc(db_url: str, doc: dict[str, Any]) -> str:
    status, body = couch_request("PUT", f"{db_url}/{urllib.parse.quote(doc['_id'])}", doc)
    assert status in (201, 202), body
    return body["rev"]


# Literal dates here are view keys and stored values of the test server's views: the literal is the point.
def message_doc(doc_id: str) -> dict[str, Any]:
    """A CHT data_record with one sent task, one pending task and one scheduled task."""
    return {
        "_id": doc_id,
        "type": "data_record",
        "reported_date": 1_790_000_000_000,
        "tasks": [
            {
                "state": "sent",
                "gateway_ref": f"gw-{doc_id}",
                "messages": [{"uuid": f"{doc_id}-m1", "to": "+254700000001", "message": "hi"}],
                "state_history": [{"state": "sent", "timestamp": "2026-11-24T10:00:00.000Z"}],
            },
            {
                "state": "pending",
                "due": "2026-11-25T08:00:00.000Z",
                "messages": [{"uuid": f"{doc_id}-m2", "to": "+254700000002", "message": "due"}],
            },
        ],
        "scheduled_tasks": [
            {
                "state": "forwarded-to-gateway",
                "gateway_ref": f"gw-{doc_id}-s",
                "timestamp": "2026-11-26T08:00:00.000Z",
                "messages": [{"uuid": f"{doc_id}-m3", "to": "+254700000003", "message": "later"}],
            }
        ],
    }


# ---------------------------------------------------------------------------- server & auth
def test_welcome_and_credentials(couch_server_url: str) -> None:
    status, body = couch_request("GET", couch_server_url + "/")
    assert status == 200 and body["couchdb"] == "Welcome"

    anonymous = bare_url(couch_server_url)
    for path in ("/_all_dbs", "/_node/_local/_config/chttpd_auth/secret"):
        status, body = couch_request("GET", anonymous + path)
        assert status == 401, (path, body)
        assert body["error"] == "unauthorized"
    # A random unknown user, never the admin with a wrong password: CouchDB 3.4 locks an account
    # out after 5 failed logins, which would break the next runs of the suite.
    stranger = with_user(couch_server_url, f"nobody-{uuid.uuid4().hex[:8]}", "wrong")
    status, body = couch_request("GET", stranger + "/_all_dbs")
    assert status == 401 and body["error"] == "unauthorized"


def test_medic_db_fixture(medic_db: MedicDb) -> None:
    assert medic_db.url.endswith("/" + medic_db.name)
    status, body = couch_request("GET", medic_db.url)
    assert status == 200 and body["db_name"] == medic_db.name
    status, body = couch_request("GET", f"{medic_db.url}/_design/medic-sms")
    assert status == 200 and "messages_by_uuid" in body["views"]

    settings = {"sms": {"outgoing_service": "rapidpro"}, "locale": "en"}
    first = put_settings(medic_db.url, settings)
    second = put_settings(medic_db.url, {**settings, "locale": "fr"})
    assert first != second
    status, body = couch_request("GET", f"{medic_db.url}/settings")
    assert body["settings"]["locale"] == "fr"


def test_config_secret(couch_server_url: str) -> None:
    values = []
    for section in ("chttpd_auth", "couch_httpd_auth"):
        status, body = couch_request("GET", f"{couch_server_url}/_node/_local/_config/{section}/secret")
        assert status in (200, 404), body
        if status == 200:
            values.append(body)
    assert values and all(isinstance(v, str) and v for v in values)

    # Settable like CouchDB: PUT a JSON string, the old value comes back (in a section of our own).
    url = f"{couch_server_url}/_node/_local/_config/cht_rapidpro_test/probe"
    status, _ = couch_request("PUT", url, "one")
    assert status == 200
    assert couch_request("PUT", url, "two") == (200, "one")
    assert couch_request("GET", url) == (200, "two")
    assert couch_request("DELETE", url) == (200, "two")
    assert couch_request("GET", url)[0] == 404


@local_only
def test_secret_can_be_set_on_local_server() -> None:
    with CouchTestServer() as server:
        url = f"{server.url}/_node/_local/_config/chttpd_auth/secret"
        status, before = couch_request("GET", url)
        assert status == 200 and isinstance(before, str)
        assert couch_request("GET", f"{server.url}/_config/couch_httpd_auth/secret") == (200, before)
        assert couch_request("PUT", url, "new-secret") == (200, before)
        assert couch_request("GET", url) == (200, "new-secret")


# ---------------------------------------------------------------------------- databases & docs
def test_database_create_twice_and_info(cloudant: CloudantV1, couch_server_url: str) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cloudant.put_database(db=name)
    try:
        with pytest.raises(ApiException) as err:
            cloudant.put_database(db=name)
        assert err.value.status_code == 412
        info = cloudant.get_database_information(db=name).get_result()
        assert info["doc_count"] == 0
        assert isinstance(info["update_seq"], str | int)
        cloudant.put_document(db=name, doc_id="a", document=Document(x=1))
        info2 = cloudant.get_database_information(db=name).get_result()
        assert info2["doc_count"] == 1 and info2["update_seq"] != info["update_seq"]
    finally:
        cloudant.delete_database(db=name)
    assert couch_request("GET", f"{couch_server_url}/{name}")[0] == 404
    status, body = couch_request("PUT", f"{couch_server_url}/Not_Valid")
    assert status == 400 and body["error"] == "illegal_database_name"


def test_recreate_after_delete(couch_server_url: str) -> None:
    url = f"{couch_server_url}/t-{uuid.uuid4().hex[:8]}"
    create_db(url)
    put_doc(url, {"_id": "a"})
    delete_db(url)
    create_db(url)
    try:
        assert couch_request("GET", f"{url}/a")[0] == 404
    finally:
        delete_db(url)
    delete_db(url)  # already gone: fine


def test_document_crud_raw(medic_db: MedicDb) -> None:
    url = f"{medic_db.url}/doc-1"
    status, created = couch_request("PUT", url, {"n": 1})
    assert status == 201 and created["ok"] and created["id"] == "doc-1"
    rev1 = created["rev"]
    status, doc = couch_request("GET", url)
    assert status == 200 and doc == {"_id": "doc-1", "_rev": rev1, "n": 1}

    status, body = couch_request("PUT", url, {"n": 2})  # no rev
    assert status == 409 and body["error"] == "conflict"
    status, updated = couch_request("PUT", url, {"_rev": rev1, "n": 2})
    assert status == 201
    status, body = couch_request("PUT", url, {"_rev": rev1, "n": 3})  # stale rev
    assert status == 409 and body["error"] == "conflict"
    status, body = couch_request("DELETE", f"{url}?rev={rev1}")
    assert status == 409
    status, body = couch_request("DELETE", f"{url}?rev={updated['rev']}")
    assert status == 200 and body["ok"]
    status, body = couch_request("GET", url)
    assert status == 404 and body["error"] == "not_found"


def test_document_crud_sdk(cloudant: CloudantV1, medic_db: MedicDb) -> None:
    db = medic_db.name
    rev = cloudant.put_document(db=db, doc_id="x", document=Document(a=1)).get_result()["rev"]
    doc = cloudant.get_document(db=db, doc_id="x").get_result()
    assert doc["a"] == 1 and doc["_rev"] == rev
    new = cloudant.put_document(db=db, doc_id="x", document=Document(_rev=rev, a=2)).get_result()
    with pytest.raises(ApiException) as err:
        cloudant.put_document(db=db, doc_id="x", document=Document(_rev=rev, a=3))
    assert err.value.status_code == 409
    cloudant.delete_document(db=db, doc_id="x", rev=new["rev"])
    with pytest.raises(ApiException) as err:
        cloudant.get_document(db=db, doc_id="x")
    assert err.value.status_code == 404


def test_bulk_docs_reports_conflicts_per_item(cloudant: CloudantV1, medic_db: MedicDb) -> None:
    put_doc(medic_db.url, {"_id": "taken"})
    response = cloudant.post_bulk_docs(
        db=medic_db.name, bulk_docs=BulkDocs(docs=[Document(_id="taken"), Document(_id="fresh")])
    )
    assert response.get_status_code() == 201
    items = {item["id"]: item for item in response.get_result()}
    assert items["taken"]["error"] == "conflict"
    assert items["fresh"]["ok"] and "error" not in items["fresh"]

    rows = cloudant.post_all_docs(db=medic_db.name, keys=["fresh", "missing"]).get_result()["rows"]
    assert rows[0]["id"] == "fresh" and rows[1] == {"key": "missing", "error": "not_found"}
    status, body = couch_request("GET", f"{medic_db.url}/_all_docs?limit=1&include_docs=true")
    assert status == 200 and len(body["rows"]) == 1 and "doc" in body["rows"][0]


def test_local_documents(cloudant: CloudantV1, medic_db: MedicDb) -> None:
    db = medic_db.name
    cloudant.put_local_document(db=db, doc_id="checkpoint", document=Document(seq="abc"))
    doc = cloudant.get_local_document(db=db, doc_id="checkpoint").get_result()
    assert isinstance(doc, dict), "a parsed JSON object, not a raw response"
    assert doc["seq"] == "abc"
    status, raw = couch_request("GET", f"{medic_db.url}/_local/checkpoint")
    assert status == 200 and raw["_rev"] == doc["_rev"]
    cloudant.put_local_document(db=db, doc_id="checkpoint", document=Document(_rev=doc["_rev"], seq="def"))
    assert cloudant.get_local_document(db=db, doc_id="checkpoint").get_result()["seq"] == "def"
    # _local docs never show in _changes
    status, changes = couch_request("GET", f"{medic_db.url}/_changes")
    assert not [r for r in changes["results"] if r["id"].startswith("_local/")]


# ---------------------------------------------------------------------------- views
def test_cht_views(cloudant: CloudantV1, medic_db: MedicDb) -> None:
    put_doc(medic_db.url, message_doc("r1"))
    put_doc(medic_db.url, message_doc("r2"))
    put_doc(
        medic_db.url,
        {"_id": "in1", "type": "data_record", "sms_message": {"gateway_ref": "rp-77", "message": "x"}},
    )
    db = medic_db.name

    def view(ddoc: str, name: str, **params: Any) -> list[dict[str, Any]]:
        return cloudant.post_view(db=db, ddoc=ddoc, view=name, **params).get_result()["rows"]

    rows = view("medic-sms", "gateway_messages_by_state", key="sent")
    assert sorted(r["value"]["id"] for r in rows) == ["r1-m1", "r2-m1"]
    assert rows[0]["value"]["gateway_ref"] == f"gw-{rows[0]['id']}"
    assert view("medic-sms", "gateway_messages_by_state", key="pending") == []  # no gateway_ref
    rows = view("medic-sms", "gateway_messages_by_state", keys=["sent", "forwarded-to-gateway"])
    assert len(rows) == 4

    rows = view("medic-sms", "messages_by_uuid", key="r2-m3", include_docs=True)
    assert [r["id"] for r in rows] == ["r2"] and rows[0]["doc"]["type"] == "data_record"
    assert len(view("medic-sms", "messages_by_uuid")) == 6

    assert [r["value"] for r in view("medic-sms", "messages_by_gateway_ref", key="gw-r1")] == ["r1-m1"]
    assert [r["id"] for r in view("medic-sms", "messages_by_gateway_ref", key="rp-77")] == ["in1"]

    rows = view(
        "medic",
        "messages_by_state",
        start_key=["pending-or-forwarded"],
        end_key=["pending-or-forwarded", {}],
        reduce=False,
    )
    assert sorted(r["value"]["id"] for r in rows) == ["r1-m2", "r1-m3", "r2-m2", "r2-m3"]
    pending = next(r for r in rows if r["value"]["id"] == "r1-m2")
    assert pending["key"] == ["pending-or-forwarded", "2026-11-25T08:00:00.000Z"]
    assert pending["value"] == {"content": "due", "to": "+254700000002", "id": "r1-m2"}
    scheduled = next(r for r in rows if r["value"]["id"] == "r1-m3")
    assert scheduled["key"][1] == "2026-11-26T08:00:00.000Z"  # task timestamp when no due

    rows = view("medic", "messages_by_state", start_key=["sent"], end_key=["sent", {}])
    assert [r["key"] for r in rows] == [["sent", 1_790_000_000_000]] * 2  # reported_date

    # The same through GET query parameters (JSON-encoded, as CouchDB expects).
    q = urllib.parse.urlencode(
        {
            "startkey": json.dumps(["pending-or-forwarded", {}]),
            "endkey": json.dumps(["pending-or-forwarded"]),
            "descending": "true",
            "limit": "2",
            "skip": "1",
            "reduce": "false",
        }
    )
    status, body = couch_request("GET", f"{medic_db.url}/_design/medic/_view/messages_by_state?{q}")
    assert status == 200 and len(body["rows"]) == 2
    assert [r["key"][1] for r in body["rows"]] == [
        "2026-11-26T08:00:00.000Z",
        "2026-11-25T08:00:00.000Z",
    ]


def test_find(medic_db: MedicDb) -> None:
    put_doc(medic_db.url, {"_id": "f1", "type": "data_record", "form": "FORM"})
    put_doc(medic_db.url, {"_id": "f2", "type": "person"})
    status, body = couch_request("POST", f"{medic_db.url}/_find", {"selector": {"form": "FORM"}})
    assert status == 200 and [d["_id"] for d in body["docs"]] == ["f1"]


# ---------------------------------------------------------------------------- _changes
def test_changes_paging_since_and_pending(cloudant: CloudantV1, medic_db: MedicDb) -> None:
    for i in range(5):
        put_doc(medic_db.url, {"_id": f"c{i}"})
    _, everything = couch_request("GET", f"{medic_db.url}/_changes")
    total = len(everything["results"])  # the design docs too
    assert isinstance(everything["last_seq"], str | int)

    seen: list[str] = []
    since: Any = "0"
    for _ in range(total + 2):
        page = cloudant.post_changes(db=medic_db.name, since=since, limit=2).get_result()
        assert all(isinstance(r["seq"], str | int | None) for r in page["results"])
        seen += [r["id"] for r in page["results"]]
        since = page["last_seq"]  # sent back exactly as received
        done = len(seen) == total
        if "pending" in page:  # may be missing; then a short page ends the catch-up
            assert isinstance(page["pending"], int)
            assert (page["pending"] == 0) == done, (page["pending"], len(seen), total)
        if len(page["results"]) < 2 or page.get("pending") == 0:
            break
    # Every change once; the order across a clustered CouchDB's shards may differ between reads.
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(r["id"] for r in everything["results"])

    put_doc(medic_db.url, {"_id": "after"})
    page = cloudant.post_changes(db=medic_db.name, since=since).get_result()
    assert [r["id"] for r in page["results"]] == ["after"]
    assert page.get("pending", 0) == 0

    now = cloudant.post_changes(db=medic_db.name, since="now").get_result()
    assert now["results"] == []
    info = cloudant.get_database_information(db=medic_db.name).get_result()
    put_doc(medic_db.url, {"_id": "after-info"})
    page = cloudant.post_changes(db=medic_db.name, since=info["update_seq"]).get_result()
    assert [r["id"] for r in page["results"]] == ["after-info"]


def test_changes_deleted_docs_and_include_docs(medic_db: MedicDb) -> None:
    rev = put_doc(medic_db.url, {"_id": "gone", "x": 1})
    couch_request("DELETE", f"{medic_db.url}/gone?rev={rev}")
    put_doc(medic_db.url, {"_id": "kept", "x": 2})
    _, body = couch_request("GET", f"{medic_db.url}/_changes?include_docs=true")
    rows = {r["id"]: r for r in body["results"]}
    assert rows["gone"]["deleted"] is True
    assert set(rows["gone"]["doc"]) == {"_id", "_rev", "_deleted"}
    assert rows["gone"]["doc"]["_deleted"] is True
    assert rows["kept"]["doc"]["x"] == 2 and not rows["kept"].get("deleted")


def test_changes_filters(cloudant: CloudantV1, medic_db: MedicDb) -> None:
    put_doc(medic_db.url, {"_id": "a", "type": "person"})
    put_doc(medic_db.url, {"_id": "b", "type": "data_record"})
    put_doc(medic_db.url, {"_id": "c", "type": "data_record"})
    result = cloudant.post_changes(db=medic_db.name, filter="_doc_ids", doc_ids=["c", "a"])
    assert sorted(r["id"] for r in result.get_result()["results"]) == ["a", "c"]
    q = urllib.parse.urlencode({"filter": "_doc_ids", "doc_ids": json.dumps(["b"])})
    _, body = couch_request("GET", f"{medic_db.url}/_changes?{q}")
    assert [r["id"] for r in body["results"]] == ["b"]
    result = cloudant.post_changes(
        db=medic_db.name, filter="_selector", selector={"type": "data_record"}, include_docs=True
    )
    rows = result.get_result()["results"]
    assert [r["id"] for r in rows] == ["b", "c"] and rows[0]["doc"]["type"] == "data_record"


def test_longpoll_times_out_with_empty_page(cloudant: CloudantV1, medic_db: MedicDb) -> None:
    started = time.monotonic()
    page = cloudant.post_changes(db=medic_db.name, feed="longpoll", since="now", timeout=400).get_result()
    elapsed = time.monotonic() - started
    assert page["results"] == [] and "last_seq" in page
    assert 0.3 < elapsed < 3.0


def test_longpoll_returns_on_change(medic_db: MedicDb) -> None:
    _, first = couch_request("GET", f"{medic_db.url}/_changes")
    since = urllib.parse.quote(str(first["last_seq"]))
    result: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        result["page"] = couch_request(
            "GET", f"{medic_db.url}/_changes?feed=longpoll&timeout=10000&since={since}"
        )[1]
        result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)
    put_doc(medic_db.url, {"_id": "wake-up"})
    thread.join(12)
    assert [r["id"] for r in result["page"]["results"]] == ["wake-up"]
    assert result["elapsed"] < 5


def test_longpoll_with_selector_waits_for_a_match(medic_db: MedicDb) -> None:
    _, first = couch_request("GET", f"{medic_db.url}/_changes")
    since = urllib.parse.quote(str(first["last_seq"]))
    result: dict[str, Any] = {}

    def poll() -> None:
        result["page"] = couch_request(
            "POST",
            f"{medic_db.url}/_changes?feed=longpoll&timeout=10000&filter=_selector&since={since}",
            {"selector": {"type": "data_record"}},
        )[1]

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.2)
    put_doc(medic_db.url, {"_id": "not-me", "type": "person"})
    time.sleep(0.3)
    assert thread.is_alive(), "a change that does not match must not end the longpoll"
    put_doc(medic_db.url, {"_id": "me", "type": "data_record"})
    thread.join(12)
    assert [r["id"] for r in result["page"]["results"]] == ["me"]


def test_continuous_feed_streams_rows_then_ends(medic_db: MedicDb) -> None:
    put_doc(medic_db.url, {"_id": "s1"})
    lines, ended = stream_lines(medic_db.url, "feed=continuous&timeout=500", read_for=5)
    assert ended
    objects = [json.loads(line) for _, line in lines if line.strip()]
    assert "s1" in [o.get("id") for o in objects[:-1]]
    assert "last_seq" in objects[-1]


def test_continuous_heartbeat_not_buffered(medic_db: MedicDb) -> None:
    _, first = couch_request("GET", f"{medic_db.url}/_changes")
    since = urllib.parse.quote(str(first["last_seq"]))

    def later_write() -> None:
        time.sleep(0.6)
        put_doc(medic_db.url, {"_id": "live"})

    writer = threading.Thread(target=later_write)
    writer.start()
    lines, ended = stream_lines(
        medic_db.url,
        f"feed=continuous&heartbeat=100&since={since}",
        read_for=5,
        until=lambda line: bool(line.strip()),
    )
    writer.join()
    assert not ended
    heartbeats = [t for t, line in lines if not line.strip()]
    assert heartbeats and heartbeats[0] < 0.5, "heartbeats must arrive as they are sent"
    assert len(heartbeats) >= 3  # the row came after 0.6 s of heartbeats
    arrived, row = lines[-1][0], json.loads(lines[-1][1])
    assert row["id"] == "live" and arrived < 3


# ---------------------------------------------------------------------------- robustness
def test_bad_requests_do_not_kill_the_server(medic_db: MedicDb) -> None:
    url = medic_db.url
    client_error = range(400, 500)
    bad: list[tuple[str, str, Any, Any]] = [
        ("POST", f"{url}/_changes?filter=_selector", {}, client_error),
        ("POST", f"{url}/_changes?filter=_design", {}, (200, 400)),
        ("POST", f"{url}/_changes?filter=nosuch/filter", {}, client_error),
        ("GET", f"{url}/_changes?filter=_doc_ids&doc_ids=notjson", None, client_error),
        ("GET", f"{url}/_changes?since=not-a-seq", None, client_error),
        # Apache CouchDB 3.4 answers 500 (badarg) here; what matters is that the server lives on.
        ("GET", f"{url}/_changes?feed=longpoll&timeout=abc&since=now", None, range(400, 501)),
        ("GET", f"{url}/_design/nosuch/_view/nothing", None, (404,)),
        ("POST", f"{url}/_all_docs", {"keys": "not-a-list"}, client_error),
        ("POST", f"{url}/_bulk_docs", {"nodocs": True}, client_error),
        ("PUT", f"{url}/weird", ["not", "an", "object"], client_error),
        ("GET", f"{url}-missing/_changes", None, (404,)),
        ("PUT", f"{url}-missing/doc", {"a": 1}, (404,)),
        ("POST", f"{url}/_find", {"selector": "nonsense"}, client_error),
    ]
    for method, target, body, expected in bad:
        status, answer = couch_request(method, target, body, timeout=70)
        assert status in expected, (method, target, status, answer)
        assert isinstance(answer, dict), (method, target, answer)
    status, _ = couch_request("GET", f"{url}/_changes?feed=longpoll&since=now&timeout=50")
    assert status == 200
    # Invalid JSON bodies (couch_request always sends valid JSON, so use http.client).
    user, password, host, port = split_url(url)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    for path in ("/_changes?filter=_selector", "/_bulk_docs", "/doc-x"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request(
            "PUT" if path == "/doc-x" else "POST",
            urllib.parse.urlsplit(url).path + path,
            body=b"{not json",
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 400, path
        assert json.loads(response.read())["error"] == "bad_request"
        conn.close()
    status, body = couch_request("GET", url)
    assert status == 200 and body["db_name"] == medic_db.name


def test_json_content_type(medic_db: MedicDb) -> None:
    put_doc(medic_db.url, {"_id": "ct"})
    couch_request("PUT", f"{medic_db.url}/_local/ct", {"a": 1})
    user, password, host, port = split_url(medic_db.url)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    for path in ("", "/ct", "/_local/ct", "/_changes", "/_all_docs", "/nope"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request(
            "GET",
            urllib.parse.urlsplit(medic_db.url).path + path,
            headers={"Authorization": f"Basic {token}", "Accept": "*/*"},
        )
        response = conn.getresponse()
        response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), path
        conn.close()


# ---------------------------------------------------------------------------- local server only
@pytest.fixture
def leveldb_server(tmp_path: Path) -> Iterator[CouchTestServer]:
    server = CouchTestServer(data_dir=tmp_path / "couch")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@local_only
def test_leveldb_survives_kill_9(leveldb_server: CouchTestServer) -> None:
    server = leveldb_server
    db = f"{server.url}/medic"
    create_db(db)
    for i in range(3):
        put_doc(db, {"_id": f"d{i}", "i": i})
    couch_request("PUT", f"{db}/_local/checkpoint", {"seq": "kept"})
    _, secret = couch_request("GET", f"{server.url}/_node/_local/_config/chttpd_auth/secret")
    _, before = couch_request("GET", f"{db}/_changes")
    port = server.port

    server.kill()
    server.start()
    assert server.port == port
    _, info = couch_request("GET", db)
    assert info["doc_count"] == 3
    assert couch_request("GET", f"{db}/d2")[1]["i"] == 2
    assert couch_request("GET", f"{db}/_local/checkpoint")[1]["seq"] == "kept"
    assert couch_request("GET", f"{server.url}/_node/_local/_config/chttpd_auth/secret")[1] == secret

    put_doc(db, {"_id": "after-restart"})
    since = urllib.parse.quote(before["last_seq"])
    _, page = couch_request("GET", f"{db}/_changes?since={since}")
    assert [r["id"] for r in page["results"]] == ["after-restart"]

    server.stop()  # a graceful stop keeps everything too
    server.start()
    assert couch_request("GET", db)[1]["doc_count"] == 4


@local_only
def test_memory_server_restart_is_empty_and_secret_changes() -> None:
    server = CouchTestServer().start()
    try:
        create_db(f"{server.url}/medic")
        _, secret = couch_request("GET", f"{server.url}/_node/_local/_config/chttpd_auth/secret")
        assert couch_request("GET", f"{server.url}/_node/_local/_config/chttpd_auth/secret")[1] == secret
        server.stop()
        server.start()
        assert couch_request("GET", f"{server.url}/medic")[0] == 404
        _, new_secret = couch_request("GET", f"{server.url}/_node/_local/_config/chttpd_auth/secret")
        assert new_secret != secret
    finally:
        server.stop()

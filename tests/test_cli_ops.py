"""The operator commands (`check`, `status`, `rescan`, `parked retry|drop`, `--version`) as an
operator runs them: subprocesses against the test server, the fake RapidPro and a running worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeRapidPro
from playground.fake_workspace import workspace_of
from tests.support.cli import CHT_URL, KEY, PUBLIC_URL, acli, cli, lines_of, rapidpro_settings, unused_port
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import MedicDb, couch_request, create_db, put_settings, put_vault_credential
from tests.support.rapidpro_fixtures import seed_relay
from tests.support.waiting import eventually
from tests.support.workers import InProcessWorkers
from worker.app import Worker

pytestmark = [pytest.mark.slow, pytest.mark.daemon]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def base_env(medic_db: MedicDb, fake_rapidpro: FakeRapidPro) -> dict[str, str]:
    """A deployment set up right on both sides (CHT's settings; RapidPro's globals and flow)."""
    put_settings(medic_db.url, rapidpro_settings(fake_rapidpro.url))
    seed_relay(workspace_of(fake_rapidpro), cht_url=CHT_URL, key=KEY)
    # A listener port nobody uses: `check` also asks a daemon running there.
    return {"COUCH_URL": medic_db.url, "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN, "RAPIDPRO_INCOMING_KEY": KEY,
            "LISTEN_PORT": str(unused_port()), "WEBHOOK_PUBLIC_URL": PUBLIC_URL}


# ---------------------------------------------------------------------------- check
async def test_check_passes_and_writes_nothing(base_env, medic_db, fake_rapidpro, tmp_path):
    result = await acli("check", env=base_env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines_of(result)
    # `limits` judges this machine's cgroups (a warning on cgroup v1), not the configuration.
    assert {level for name, (level, _) in checks.items() if name != "limits"} == {"ok"}, result.stdout
    for name in ("config", "couchdb", "medic", "vault", "worker_db", "settings", "forms", "token",
                 "incoming_key", "outgoing", "rapidpro", "rapidpro_cht_url", "rapidpro_cht_api_key",
                 "rapidpro_flow", "rapidpro_trigger", "rapidpro_channels", "daemon", "double_sender",
                 "limits"):
        assert name in checks, name
    assert "no daemon answers" in checks["daemon"][1]
    assert "created at start" in checks["worker_db"][1]
    assert "Fake workspace" in checks["rapidpro"][1]
    # Read-only, a handful of GETs to RapidPro and no POST; the worker db was not created.
    assert [(r.method, r.path) for r in fake_rapidpro.requests] == [
        ("GET", "/api/v2/workspace.json"), ("GET", "/api/v2/globals.json"), ("GET", "/api/v2/flows.json"),
        ("GET", "/api/v2/definitions.json"), ("GET", "/api/v2/channels.json")]
    status, _ = await asyncio.to_thread(couch_request, "GET", f"{medic_db.url}-rapidpro")
    assert status == 404
    assert medic_db.url.split("@")[0].split(":")[-1] not in result.stdout  # no password printed

    as_json = await acli("check", "--json", env=base_env, cwd=tmp_path)
    body = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and body["ok"] is True
    assert {c["check"] for c in body["checks"]} == set(checks)


async def test_check_finds_a_wrong_token(base_env, tmp_path):
    result = await acli("check", env={**base_env, "RAPIDPRO_API_TOKEN": "not-the-token"}, cwd=tmp_path)
    assert result.returncode == 1
    level, detail = lines_of(result)["rapidpro"]
    # The worker is in charge of sending and cannot: an install must not start it.
    assert level == "fatal" and "refused the token" in detail
    assert "not-the-token" not in result.stdout
    assert "1 fatal" in result.stdout.splitlines()[-1]
    gate = await acli("check", "--for-install", env={**base_env, "RAPIDPRO_API_TOKEN": "not-the-token"},
                      cwd=tmp_path)
    assert gate.returncode == 1, gate.stdout


async def test_an_unreachable_rapidpro_does_not_stop_an_install(base_env, medic_db, tmp_path):
    # RapidPro down at the moment of an upgrade: the daemon waits and retries; no reason to refuse.
    put_settings(medic_db.url, rapidpro_settings(f"http://127.0.0.1:{unused_port()}"))
    result = await acli("check", env=base_env, cwd=tmp_path)
    level, detail = lines_of(result)["rapidpro"]
    assert level == "problem" and "cannot be reached" in detail, result.stdout
    assert result.returncode == 1
    gate = await acli("check", "--for-install", env=base_env, cwd=tmp_path)
    assert gate.returncode == 0, gate.stdout
    assert "0 fatal, 1 problem" in gate.stdout.splitlines()[-1], gate.stdout


async def test_check_finds_an_unreachable_couchdb(tmp_path):
    result = await acli("check", env={"COUCH_URL": "http://admin:secret@127.0.0.1:1/medic",
                                      "COUCH_TIMEOUT": "2"}, cwd=tmp_path)
    assert result.returncode == 1
    checks = lines_of(result)
    assert checks["config"][0] == "ok"
    assert checks["couchdb"][0] == "fatal" and "cannot reach" in checks["couchdb"][1]
    assert "secret" not in result.stdout + result.stderr
    gate = await acli("check", "--for-install", "--json", env={
        "COUCH_URL": "http://admin:secret@127.0.0.1:1/medic", "COUCH_TIMEOUT": "2"}, cwd=tmp_path)
    body = json.loads(gate.stdout)
    assert gate.returncode == 1 and body["fatal"] is True and body["counts"]["fatal"] == 1, gate.stdout


async def test_check_finds_the_double_sender_hazard(base_env, medic_db, fake_rapidpro, tmp_path):
    await asyncio.to_thread(create_db, medic_db.vault_url)
    await asyncio.to_thread(put_vault_credential, medic_db.vault_url, "rapidpro:outgoing", "00:00")
    result = await acli("check", env=base_env, cwd=tmp_path)
    assert result.returncode == 1
    level, detail = lines_of(result)["double_sender"]
    assert level == "problem" and "CHT's own RapidPro sender is on" in detail and "stands down" in detail
    # The way out the README gives: a service name of the worker's own.
    await asyncio.to_thread(put_settings, medic_db.url,
                            rapidpro_settings(fake_rapidpro.url, service="rapidpro-worker"))
    fixed = await acli("check", env={**base_env, "OUTGOING_SERVICE_NAME": "rapidpro-worker"}, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout
    assert lines_of(fixed)["double_sender"][0] == "ok"


async def test_check_reports_a_broken_configuration_and_missing_key(base_env, tmp_path):
    bad = await acli("check", env={"COUCH_URL": "ftp://nowhere/medic"}, cwd=tmp_path)
    assert bad.returncode == 1
    assert lines_of(bad)["config"][0] == "fatal"
    no_key = await acli("check", env={**base_env, "RAPIDPRO_INCOMING_KEY": ""}, cwd=tmp_path)
    assert no_key.returncode == 0  # a warning only
    level, detail = lines_of(no_key)["incoming_key"]
    assert level == "warning" and "refuse every call" in detail


async def test_credentials_come_from_the_systemd_credentials_directory(base_env, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "couch-url").write_text(base_env["COUCH_URL"] + "\n")
    (creds / "rapidpro-token").write_text(DEFAULT_TOKEN + "\n")
    (creds / "rapidpro-incoming-key").write_text(KEY)
    result = await acli("check", env={"CREDENTIALS_DIRECTORY": str(creds),
                                      "RAPIDPRO_API_TOKEN": "an-old-one-in-the-env-file"}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    checks = lines_of(result)
    assert "from file" in checks["token"][1] and "from file" in checks["incoming_key"][1]


# ---------------------------------------------------------------------------- against a running worker
class Failing:
    """A transition failing for the ids in `fail` (to park changes)."""

    name = "failing"

    def __init__(self) -> None:
        self.fail = {"bad-1", "bad-2"}

    def matches(self, doc: dict[str, Any]) -> bool:
        return doc.get("type") == "data_record"

    async def apply(self, doc: dict[str, Any]) -> None:
        if doc["_id"] in self.fail:
            raise RuntimeError(f"cannot handle {doc['_id']}")


@pytest.fixture
async def running(medic_db: MedicDb, in_process_workers: InProcessWorkers,
                  ) -> AsyncIterator[tuple[Worker, Failing, dict[str, str]]]:
    env = {"COUCH_URL": medic_db.url, "LISTEN_PORT": "0", "CHANGE_MAX_ATTEMPTS": "1",
           "CHECKPOINT_INTERVAL": "0.2", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN}
    failing = Failing()
    worker = await in_process_workers.start(env, extra_transitions=[failing])
    assert worker.http is not None
    yield worker, failing, {"COUCH_URL": medic_db.url, "LISTEN_PORT": str(worker.http.port)}


async def test_status_summarises_the_running_daemon(running, tmp_path):
    _, _, env = running
    human = await acli("status", env=env, cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    assert "feed caught up" in human.stdout and "not sending" in human.stdout
    as_json = await acli("status", "--json", env=env, cwd=tmp_path)
    assert json.loads(as_json.stdout)["feed"]["connected"] is True


async def test_status_and_rescan_fail_clearly_without_a_daemon(tmp_path):
    env = {"COUCH_URL": "http://a:b@127.0.0.1:1/medic", "LISTEN_PORT": "1"}
    for command in ("status", "rescan"):
        result = await acli(command, env=env, cwd=tmp_path)
        assert result.returncode == 1
        assert "does not answer" in result.stderr


async def test_rescan_asks_the_daemon(running, medic_db, fake_rapidpro, tmp_path):
    worker, _, env = running
    await asyncio.to_thread(put_settings, medic_db.url, rapidpro_settings(fake_rapidpro.url))
    # Switching sending to the worker rescans once by itself; then the operator asks again.
    await eventually(lambda: worker.status.stats.rescans >= 1, 10)
    before = worker.status.stats.rescans
    result = await acli("rescan", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    await eventually(lambda: worker.status.stats.rescans > before, 10)


async def test_admin_endpoints_refuse_a_caller_without_the_token(running):
    worker, _, _ = running
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer guessed"}):
            async with http.post(f"http://127.0.0.1:{worker.http.port}/admin/rescan", headers=headers) as r:
                assert r.status == 403


async def test_parked_changes_are_retried_and_dropped(running, medic_db, tmp_path):
    worker, failing, env = running
    for doc_id in ("bad-1", "bad-2"):
        status, _ = await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/{doc_id}",
                                            {"_id": doc_id, "type": "data_record"})
        assert status == 201
    await eventually(lambda: _count(worker, 2), 20)
    listed = await acli("parked", env=env, cwd=tmp_path)
    assert sorted(json.loads(line)["doc_id"] for line in listed.stdout.splitlines()) == ["bad-1", "bad-2"]

    failing.fail.discard("bad-1")  # the cause is fixed: a retry now succeeds
    retried = await acli("parked", "retry", "bad-1", env=env, cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    await eventually(lambda: _count(worker, 1), 10)
    assert [d["doc_id"] for d in await worker.parked.list()] == ["bad-2"]

    again = await acli("parked", "retry", "--all", env=env, cwd=tmp_path)  # bad-2 still fails
    assert again.returncode == 0
    await eventually(lambda: _times_parked(worker, "bad-2", 2), 10)

    unknown = await acli("parked", "retry", "never-parked", env=env, cwd=tmp_path)
    assert unknown.returncode == 1 and "not parked" in unknown.stderr
    dropped = await acli("parked", "drop", "bad-2", env=env, cwd=tmp_path)
    assert dropped.returncode == 0, dropped.stderr
    assert await worker.parked.list() == []
    dropped_again = await acli("parked", "drop", "bad-2", env=env, cwd=tmp_path)
    assert dropped_again.returncode == 1


async def _count(worker: Worker, expected: int) -> bool:
    return await worker.parked.count() == expected


async def _times_parked(worker: Worker, doc_id: str, times: int) -> bool:
    entry = await worker.parked.get(doc_id)
    return entry is not None and entry["times_parked"] == times


def test_version_and_help_of_every_command(tmp_path):
    version = cli("--version", env={}, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("cht-rapidpro-worker ")
    for command in ("run", "check", "status", "parked", "rescan"):
        result = cli(command, "--help", env={}, cwd=tmp_path)
        assert result.returncode == 0 and "usage:" in result.stdout, command


# ---------------------------------------------------------------------------- a non-admin CouchDB user
async def test_check_reports_the_rights_a_non_admin_user_lacks(base_env, medic_db, tmp_path):
    """A CHT-style user with member rights on medic only: the worker db cannot be created, and the
    vault is closed to it. Needs CouchDB's `_users` database (Apache CouchDB; the test server
    accepts only its admin)."""
    name = f"worker-{medic_db.name}"
    users = f"{medic_db.server_url}/_users"
    user_url = f"{users}/org.couchdb.user:{name}"
    status, body = await asyncio.to_thread(couch_request, "PUT", user_url, {
        "_id": f"org.couchdb.user:{name}", "name": name, "password": "worker-pass", "roles": [],
        "type": "user"})
    if status not in (201, 202):
        pytest.skip(f"this server has no usable _users database ({status})")
    try:
        await asyncio.to_thread(create_db, medic_db.vault_url)  # admin-only, as CHT sets it up
        security = {"admins": {"names": [], "roles": []}, "members": {"names": [name], "roles": []}}
        status, body = await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/_security", security)
        assert status == 200, body
        parts = medic_db.server_url.split("://", 1)
        host = parts[1].split("@", 1)[-1]
        user_couch_url = f"{parts[0]}://{name}:worker-pass@{host}/{medic_db.name}"

        result = await acli("check", env={**base_env, "COUCH_URL": user_couch_url}, cwd=tmp_path)
        assert result.returncode == 1, result.stdout
        checks = lines_of(result)
        assert checks["couchdb"][0] == "ok" and "server admin" not in checks["couchdb"][1]
        assert checks["medic"][0] == "ok"
        level, detail = checks["worker_db"]
        assert level == "fatal" and "may not create it" in detail and name in detail
        assert checks["vault"][0] == "warning"
        assert "worker-pass" not in result.stdout + result.stderr
    finally:
        status, current = await asyncio.to_thread(couch_request, "GET", user_url)
        if status == 200:
            await asyncio.to_thread(couch_request, "DELETE", f"{user_url}?rev={current['_rev']}")


async def test_check_warns_when_the_running_daemon_has_a_stalled_job(base_env, medic_db, fake_rapidpro,
                                                                    in_process_workers, tmp_path):
    tracked = {"_id": "tracked", "type": "data_record", "tasks": [{
        "state": "received-by-gateway", "state_details": "Queued", "gateway_ref": 12,
        "messages": [{"uuid": "m-tracked", "to": "+254700000009", "message": "x"}],
        "state_history": [{"state": "received-by-gateway", "timestamp": iso_ago(60)}]}]}
    status, body = await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/tracked", tracked)
    assert status == 201, body
    fake_rapidpro.fail_next(10**6, path="/api/v2/messages.json")  # status rounds never complete
    worker = await in_process_workers.start({**base_env, "LISTEN_PORT": "0", "STATUS_POLL_INTERVAL": "0.2"})
    assert worker.http is not None
    await eventually(lambda: worker.status.progress.stalled(time.time()), 15)
    result = await acli("check", env={**base_env, "LISTEN_PORT": str(worker.http.port)}, cwd=tmp_path)
    checks = lines_of(result)
    assert result.returncode == 0, result.stdout  # a warning, not a problem
    assert checks["daemon"] == ("ok", f"answers at http://127.0.0.1:{worker.http.port} (active)")
    level, detail = checks["status_tracking"]
    assert level == "warning" and "no run completed" in detail and "stale" in detail
    assert "in_doubt" not in checks

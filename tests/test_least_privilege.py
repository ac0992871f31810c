"""The daemon as a CouchDB user that is not a server admin (a CHT user, member of medic) plus an
admin of the worker's own database, as the README's "Minimum CouchDB rights" says; and writes
the worker depends on that are refused never pass silently.

Tests with a non-admin user need CouchDB's `_users` database and enforced `_security` (Apache
CouchDB, TEST_COUCH_URL): the local test server accepts only its admin, so they skip there.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.env import load_config, parse_couch_url
from playground.fake_rapidpro import DEFAULT_TOKEN
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import MedicDb, couch_request, create_db, delete_db, put_settings
from tests.support.daemon import child_env
from tests.support.waiting import eventually
from worker.app import EXIT_CONFIG, Worker
from worker.couch.client import CouchServer
from worker.outgoing.ledger import DESIGN_DOC, Ledger, LedgerRefused

pytestmark = [pytest.mark.slow, pytest.mark.daemon]


@dataclass
class User:
    name: str
    medic_url: str  # COUCH_URL as this user
    worker_db: str


def _as_user(medic_db: MedicDb, name: str, password: str) -> str:
    scheme, rest = medic_db.server_url.split("://", 1)
    return f"{scheme}://{name}:{password}@{rest.split('@', 1)[-1]}/{medic_db.name}"


def _security(db_url: str, members: list[str], admins: list[str]) -> None:
    body = {"admins": {"names": admins, "roles": []}, "members": {"names": members, "roles": []}}
    status, answer = couch_request("PUT", f"{db_url}/_security", body)
    assert status == 200, answer


def _user(medic_db: MedicDb, worker_db_admin: bool) -> Iterator[User]:
    name = f"worker-{uuid.uuid4().hex[:8]}"
    user_url = f"{medic_db.server_url}/_users/org.couchdb.user:{name}"
    status, _ = couch_request("PUT", user_url, {"_id": f"org.couchdb.user:{name}", "name": name,
                                                "password": "least-pass", "roles": ["gateway"],
                                                "type": "user"})
    if status not in (201, 202):
        pytest.skip(f"this server has no usable _users database ({status}): set TEST_COUCH_URL to an "
                    "Apache CouchDB")
    worker_db = f"{medic_db.name}-{name}"
    try:
        # CHT's medic: CHT roles are members (cht-core's api sets them); the vault: admins only.
        status, answer = couch_request("PUT", f"{medic_db.url}/_security", {
            "admins": {"names": [], "roles": ["_admin"]},
            "members": {"names": [], "roles": ["_admin", "gateway", "chw"]}})
        assert status == 200, answer
        if couch_request("GET", medic_db.vault_url)[0] == 404:
            create_db(medic_db.vault_url)
        status, answer = couch_request("PUT", f"{medic_db.vault_url}/_security", {  # as CHT sets it
            "admins": {"names": [], "roles": ["_admin"]}, "members": {"names": [], "roles": ["_admin"]}})
        assert status == 200, answer
        # The worker's own database, created by an admin.
        create_db(f"{medic_db.server_url}/{worker_db}")
        _security(f"{medic_db.server_url}/{worker_db}", [name], [name] if worker_db_admin else [])
        yield User(name, _as_user(medic_db, name, "least-pass"), worker_db)
    finally:
        status, current = couch_request("GET", user_url)
        if status == 200:
            couch_request("DELETE", f"{user_url}?rev={current['_rev']}")
        delete_db(f"{medic_db.server_url}/{worker_db}")


@pytest.fixture
def least_user(medic_db: MedicDb) -> Iterator[User]:
    """A CHT user (role `gateway`, a member of medic) and an admin of the worker's database."""
    yield from _user(medic_db, worker_db_admin=True)


@pytest.fixture
def member_only_user(medic_db: MedicDb) -> Iterator[User]:
    """As `least_user`, but only a member of the worker's database."""
    yield from _user(medic_db, worker_db_admin=False)


def _env(user: User, **extra: str) -> dict[str, str]:
    return {"COUCH_URL": user.medic_url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN,
            "RAPIDPRO_INCOMING_KEY": "least-key", "OUTGOING_SERVICE_NAME": "rapidpro-worker",
            "WORKER_DB": user.worker_db, "CHECKPOINT_INTERVAL": "0.2", "RAPIDPRO_CALLS_PER_HOUR": "1000000",
            **extra}


async def test_the_daemon_runs_with_the_rights_the_readme_names(least_user, medic_db, fake_rapidpro,
                                                                in_process_workers):
    settings = {"sms": {"outgoing_service": "rapidpro-worker", "rapidpro": {"url": fake_rapidpro.url}},
                "default_country_code": 254}
    await asyncio.to_thread(put_settings, medic_db.url, settings)
    worker = await in_process_workers.start(_env(least_user))
    doc = {"_id": "lp1", "type": "data_record", "tasks": [{
        "state": "pending", "messages": [{"uuid": str(uuid.uuid4()), "to": "+254700000001", "message": "hi"}],
        "state_history": [{"state": "pending", "timestamp": iso_ago()}]}]}
    status, _ = await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/lp1", doc)
    assert status == 201

    async def sent() -> bool:
        _, current = await asyncio.to_thread(couch_request, "GET", f"{medic_db.url}/lp1")
        return current["tasks"][0]["state"] == "received-by-gateway"
    await eventually(sent, 15)
    assert len(fake_rapidpro.broadcasts) == 1
    health = await worker.health()
    # CHT's vault is closed to it; with its own service name CHT's sender cannot run anyway.
    assert health["outgoing"]["cht_sender_on"] is False and health["outgoing"]["sending"] is True


async def test_a_member_only_user_is_stopped_with_a_clear_error(member_only_user, medic_db, fake_rapidpro):
    """The ledger's design doc is refused (201 with a per-doc `forbidden`): the daemon does not
    run on without the views that find claims in doubt."""
    worker = Worker(load_config(_env(member_only_user)))
    assert await asyncio.wait_for(worker.run(), 30) == EXIT_CONFIG
    couch = CouchServer(parse_couch_url(member_only_user.medic_url), timeout=10.0)
    try:
        with pytest.raises(LedgerRefused, match="must be an admin of"):
            await Ledger(couch.db(member_only_user.worker_db)).ensure_views()
    finally:
        await couch.close()


async def test_a_missing_view_never_reads_as_nothing_unresolved(medic_db):
    """The ledger's design doc deleted under a running worker: asked for unresolved claims, the
    ledger writes its views again rather than answer "none"."""
    server_url = medic_db.server_url
    db_url = f"{server_url}/{medic_db.name}-rapidpro"
    await asyncio.to_thread(create_db, db_url)
    couch = CouchServer(parse_couch_url(medic_db.url), timeout=10.0)
    try:
        ledger = Ledger(couch.db(f"{medic_db.name}-rapidpro"))
        await ledger.ensure_views()
        await ledger.claim("m-lost", "doc-1", "tel:+254700000001")
        assert [e["uuid"] for e in await ledger.unresolved()] == ["m-lost"]
        status, ddoc = await asyncio.to_thread(couch_request, "GET", f"{db_url}/_design/{DESIGN_DOC}")
        assert status == 200
        status, _ = await asyncio.to_thread(couch_request, "DELETE",
                                            f"{db_url}/_design/{DESIGN_DOC}?rev={ddoc['_rev']}")
        assert status == 200
        assert [e["uuid"] for e in await ledger.unresolved()] == ["m-lost"]
        assert await ledger.conflicted() == []
    finally:
        await couch.close()


def _check(env: dict[str, str], cwd: Path) -> dict[str, tuple[str, str]]:
    """`check`'s findings: {check: (level, detail)}."""
    result = subprocess.run([sys.executable, "-m", "worker", "check", "--json"], env=child_env(env),
                            capture_output=True, text=True, timeout=60, cwd=cwd)
    return {f["check"]: (f["level"], f["detail"]) for f in json.loads(result.stdout)["checks"]}


async def test_check_and_the_daemon_agree_on_the_rights(least_user, member_only_user, medic_db, tmp_path):
    ok = await asyncio.to_thread(_check, _env(least_user), tmp_path)
    assert ok["worker_db"][0] == "ok" and "admin" in ok["worker_db"][1]
    refused = await asyncio.to_thread(_check, _env(member_only_user), tmp_path)
    level, detail = refused["worker_db"]
    assert level == "problem" and "not its admin" in detail and member_only_user.name in detail
    # CHT's vault is for server admins: under CHT's own service name the daemon would stand down.
    settings = {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": "https://textit.example"}}}
    await asyncio.to_thread(put_settings, medic_db.url, settings)
    unknown = await asyncio.to_thread(_check, _env(least_user, OUTGOING_SERVICE_NAME="rapidpro"), tmp_path)
    level, detail = unknown["double_sender"]
    assert level == "problem" and "cannot be ruled out" in detail

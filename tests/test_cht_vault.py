"""CHT's vault as CHT 4.x's api writes and reads it (cht-core shared-libs/settings): the doc ids
it stores, and the server config key it encrypts with."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from config.credentials import encrypt_credential
from config.env import parse_couch_url
from config.settings import Settings
from tests.support.couch_fixtures import (
    MedicDb,
    couch_request,
    create_db,
    delete_vault_credential,
    put_vault_credential,
)
from transitions.outgoing.dispatch import CHT_SENDER_ON
from worker.couch.client import CouchServer
from worker.outgoing.cht_sender import ChtSenderWatch
from worker.rapidpro.credentials import Vault


@pytest.fixture
async def couch(medic_db: MedicDb) -> AsyncIterator[CouchServer]:
    await asyncio.to_thread(create_db, medic_db.vault_url)
    server = CouchServer(parse_couch_url(medic_db.url), timeout=10.0)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def distinct_secrets(couch_server_url: str) -> Iterator[str]:
    """`couch_httpd_auth/secret` (what CHT 4.x reads) set apart from `chttpd_auth/secret`; the
    server's config is put back afterwards. Returns CHT's secret."""
    config = f"{couch_server_url}/_node/_local/_config"
    before = {}
    for section in ("couch_httpd_auth", "chttpd_auth"):
        status, value = couch_request("GET", f"{config}/{section}/secret")
        before[section] = value if status == 200 else None
    cht_secret = f"cht-{uuid.uuid4().hex}"
    assert couch_request("PUT", f"{config}/couch_httpd_auth/secret", cht_secret)[0] == 200
    if before["chttpd_auth"] in (None, cht_secret):
        assert couch_request("PUT", f"{config}/chttpd_auth/secret", f"other-{uuid.uuid4().hex}")[0] == 200
    try:
        yield cht_secret
    finally:
        for section, value in before.items():
            if value is None:
                couch_request("DELETE", f"{config}/{section}/secret")
            else:
                couch_request("PUT", f"{config}/{section}/secret", value)


async def test_credentials_are_found_under_the_ids_cht_stores(medic_db, couch):
    secret = "vault-test-secret"
    for credential_id, value in (("rapidpro:outgoing", "the-token"), ("rapidpro:incoming", "the-key")):
        await asyncio.to_thread(put_vault_credential, medic_db.vault_url, credential_id,
                                encrypt_credential(value, secret))
    # What CouchDB holds: the ids decoded, with their colons.
    _, listing = await asyncio.to_thread(couch_request, "GET", f"{medic_db.vault_url}/_all_docs")
    assert [row["id"] for row in listing["rows"]] == ["credential:rapidpro:incoming",
                                                      "credential:rapidpro:outgoing"]
    vault = Vault(couch, f"{medic_db.name}-vault", secret)
    assert await vault.read("rapidpro:outgoing") == "the-token"
    assert await vault.read("rapidpro:incoming") == "the-key"
    assert await vault.has("rapidpro:outgoing")

    await asyncio.to_thread(delete_vault_credential, medic_db.vault_url, "rapidpro:outgoing")
    assert not await vault.has("rapidpro:outgoing")
    assert await vault.read("rapidpro:outgoing") is None


async def test_the_secret_is_read_where_cht_reads_it(medic_db, couch, distinct_secrets):
    await asyncio.to_thread(put_vault_credential, medic_db.vault_url, "rapidpro:incoming",
                            encrypt_credential("the-key", distinct_secrets))
    vault = Vault(couch, f"{medic_db.name}-vault")  # no COUCH_SECRET: read from the server config
    assert await vault.read("rapidpro:incoming") == "the-key"


async def test_a_settings_switch_to_chts_sender_stands_the_worker_down_at_once(medic_db, couch):
    """Judged on the settings in force at each send: no window between CHT's settings turning its
    sender on and the next read of the vault."""
    await asyncio.to_thread(put_vault_credential, medic_db.vault_url, "rapidpro:outgoing", "00:00")
    current = {"settings": Settings(outgoing_service="rapidpro-worker", rapidpro_url="https://textit.example")}
    watch = ChtSenderWatch(Vault(couch, f"{medic_db.name}-vault"), lambda: current["settings"])
    assert await watch.check() is False
    current["settings"] = Settings(outgoing_service="rapidpro", rapidpro_url="https://textit.example")
    assert watch.on and watch.reason == CHT_SENDER_ON  # before any new read
    await asyncio.to_thread(delete_vault_credential, medic_db.vault_url, "rapidpro:outgoing")
    assert await watch.check() is False and watch.reason is None

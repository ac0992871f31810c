"""A realistic run of the daemon (sends, statuses, incoming SMS, errors, both doors, the command
line), with every secret and test phone number made distinctive, then scanned for them."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config.credentials import encrypt_credential
from playground.fake_rapidpro import FakeRapidPro
from playground.fake_workspace import workspace_of
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import MedicDb, couch_request, create_db, put_settings, put_vault_credential
from tests.support.daemon import Daemon, child_env
from tests.support.http_proxy import CountingProxy
from worker.incoming.webhook import V1_PATH, V2_PATH

pytestmark = [pytest.mark.slow, pytest.mark.daemon]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-9f8e7d6c5b4a39281706"
KEY = "key-1a2b3c4d5e6f7a8b9c0d"
COUCH_PASSWORD = "pw-5e4d3c2b1a0f9e8d7c6b"
VAULT_SECRET = "sec-0a9b8c7d6e5f4a3b2c1d"
# The numbers as they may appear anywhere: international, national, bare digits.
PHONES = ["+254793186420", "0793186421", "+254793186422", "+254793186423", "+254793186424"]
SECRETS = [TOKEN, KEY, COUCH_PASSWORD, VAULT_SECRET]


def _digits(phone: str) -> str:
    return phone.lstrip("+0").removeprefix("254")  # "793186420": in every written form of it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _task(to: str, text: str) -> dict[str, Any]:
    return {"state": "pending", "messages": [{"uuid": str(uuid.uuid4()), "to": to, "message": text}],
            "state_history": [{"state": "pending", "timestamp": iso_ago()}]}


async def test_nothing_secret_or_a_full_phone_number_leaves(medic_db: MedicDb, fake_rapidpro: FakeRapidPro,
                                                          couch_server_url: str, tmp_path: Path):
    settings = {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": fake_rapidpro.url}},
                "default_country_code": 254,
                "forms": {"V": {"meta": {"code": "V"}, "fields": {"n": {"type": "string", "position": 0}}}}}
    await asyncio.to_thread(put_settings, medic_db.url, settings)
    # The incoming key comes from CHT's vault, encrypted with the (configured) server secret.
    await asyncio.to_thread(create_db, medic_db.vault_url)
    await asyncio.to_thread(put_vault_credential, medic_db.vault_url, "rapidpro:incoming",
                            encrypt_credential(KEY, VAULT_SECRET))
    fake_rapidpro.valid_tokens.add(TOKEN)
    # The worker knows CouchDB by a distinctive password; the proxy swaps in the real admin's.
    proxy = CountingProxy(couch_server_url, accept=("admin", COUCH_PASSWORD))
    await proxy.start()
    port, public_port = _free_port(), _free_port()
    env = {"COUCH_URL": proxy.url("admin", COUCH_PASSWORD, medic_db.name), "LISTEN_PORT": str(port),
           "WEBHOOK_LISTEN_HOST": "127.0.0.1", "WEBHOOK_LISTEN_PORT": str(public_port),
           "RAPIDPRO_API_TOKEN": TOKEN, "COUCH_SECRET": VAULT_SECRET, "STATUS_POLL_INTERVAL": "1",
           "WEBHOOK_PUBLIC_URL": f"http://127.0.0.1:{public_port}",
           "INCOMING_RECONCILE": "true", "INCOMING_RECONCILE_INTERVAL": "1", "LOG_LEVEL": "debug"}
    outputs: list[str] = []
    daemon = Daemon(env)
    try:
        await asyncio.to_thread(daemon.start)
        await asyncio.to_thread(daemon.wait_event, "worker_started", 30)
        cli_env = child_env(env)

        async def cli(*args: str, environment: dict[str, str] = cli_env) -> None:
            result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "worker", *args],
                                             env=environment, capture_output=True, text=True, timeout=60,
                                             cwd=tmp_path)
            outputs.append(result.stdout + result.stderr)

        # Outgoing: two sends (national and international numbers), a RapidPro error, and a
        # number RapidPro refuses (its answer names the number).
        fake_rapidpro.urn_validator = lambda urn: not urn.endswith(_digits(PHONES[4]))
        docs = [{"_id": "leak-1", "type": "data_record", "tasks": [_task(PHONES[0], "one")]},
                {"_id": "leak-2", "type": "data_record", "tasks": [_task(PHONES[1], "two")]},
                {"_id": "leak-4", "type": "data_record", "tasks": [_task(PHONES[4], "four")]}]
        status, _ = await asyncio.to_thread(couch_request, "POST", f"{medic_db.url}/_bulk_docs",
                                            {"docs": docs})
        assert status == 201
        await fake_rapidpro.wait_for(lambda: len(fake_rapidpro.broadcasts) >= 2, timeout=20)
        assert {b.token for b in fake_rapidpro.broadcasts} == {TOKEN}
        first, second = fake_rapidpro.broadcasts[:2]
        fake_rapidpro.set_status(first.id, "delivered")
        fake_rapidpro.set_status(second.id, "failed")  # what the reconciliation and status calls list
        fake_rapidpro.fail_next(1, path="/api/v2/broadcasts.json")
        third = {"_id": "leak-3", "type": "data_record", "tasks": [_task(PHONES[0], "three")]}
        assert (await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/leak-3", third))[0] == 201

        # Incoming: the webhook on both doors, good and bad, and one only RapidPro knows about.
        # (a few minutes old: the reconciliation looks at what is past RapidPro's webhook retries)
        fake_rapidpro.add_incoming("V missed", f"tel:{PHONES[3]}",
                                   created_on=fake_rapidpro.now() - timedelta(minutes=5))
        async with aiohttp.ClientSession() as session:
            async def post(door: int, path: str, key: str, body: Any) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                async with session.post(f"http://127.0.0.1:{door}{path}", data=data,
                                        headers={"Authorization": f"Token {key}"}) as response:
                    outputs.append(f"{response.status} {await response.text()}")

            for door in (port, public_port):
                await post(door, V2_PATH, KEY, {"id": f"in-{door}", "from": PHONES[2], "content": "V hello"})
                await post(door, V1_PATH, KEY, {"id": f"in1-{door}", "from": PHONES[2], "content": "V x"})
                await post(door, V2_PATH, KEY + "x", {"id": "bad", "from": PHONES[2], "content": "V x"})
                await post(door, V2_PATH, "", {"id": "bad", "from": PHONES[2], "content": "V x"})
                await post(door, V2_PATH, KEY, {"id": 7, "from": PHONES[2], "content": "V x"})
                await post(door, V2_PATH, KEY, b'{"id": "x", "from": "' + PHONES[2].encode() + b'", ')
                await post(door, V2_PATH, KEY, {"id": "big", "from": PHONES[2], "content": "x" * 70000})

            # Wait for the outcomes: a failed send retried, statuses asked for, the missed SMS stored.
            await fake_rapidpro.wait_for(lambda: len(fake_rapidpro.broadcasts) >= 3, timeout=30)
            await asyncio.to_thread(daemon.wait_event, "incoming_reconciled", 30)
            # (statuses are asked for no sooner than a minute after sending: the test ends before)
            await cli("rescan")

            for door, paths in ((port, ["/healthz", "/metrics", "/readyz"]),
                                (public_port, ["/readyz", "/healthz", "/metrics"])):
                for path in paths:
                    async with session.get(f"http://127.0.0.1:{door}{path}") as response:
                        outputs.append(await response.text())

        # The command line, with the same configuration.
        # (`rapidpro setup` writes the key into RapidPro's global, as it must, and nowhere else.)
        for args in (["status"], ["status", "--json"], ["rapidpro", "setup", "--dry-run"],
                     ["rapidpro", "setup"], ["check"], ["check", "--json"], ["parked"], ["rescan"],
                     ["--help"]):
            await cli(*args)
        assert workspace_of(fake_rapidpro).globals["cht_api_key"].value == KEY
        outputs.append((tmp_path / "cht-rapidpro-flow.json").read_text())
        # A configuration mistake is reported without echoing what was given.
        await cli("check", environment={**cli_env, "COUCH_URL": f"ftp://admin:{COUCH_PASSWORD}@127.0.0.1/medic"})

        code, _ = await asyncio.to_thread(daemon.terminate_and_wait)
        assert code == 0
    finally:
        await asyncio.to_thread(daemon.kill)
        await proxy.stop()

    logs = [json.dumps(event) for event in daemon.events] + daemon.stray_lines
    # The run did what it should (otherwise finding nothing would prove nothing).
    names = {event.get("event") for event in daemon.events}
    expected = {"message_sent", "message_rejected", "incoming_sms", "admin_rescan", "incoming_reconciled"}
    assert any("rapidpro_cht_api_key: cht_api_key is the worker's incoming key" in o for o in outputs)
    assert expected <= names, sorted(n for n in names if n)
    assert any(e.get("event") == "incoming_sms" and e.get("outcome") == "saved" and
               str(e.get("sender", "")).startswith("+2547") for e in daemon.events)
    text = "\n".join(logs + outputs)
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked: {_context(text, secret)}"
    for phone in PHONES:
        assert _digits(phone) not in text, f"a full phone number leaked: {_context(text, _digits(phone))}"


def _context(text: str, needle: str) -> str:
    at = text.find(needle)
    return text[max(0, at - 300):at + 100]

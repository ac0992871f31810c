"""A claim left in doubt, as a worker killed mid-send leaves it, and the `in-doubt` command as an
operator runs it (shared by the in-doubt and Watchdog tests)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

from tests.support.cli import cli as run_cli
from tests.support.couch_fixtures import couch_request
from tests.support.daemon import ROOT
from tests.support.outgoing import put_doc, task
from transitions.cht.timestamps import cht_time

URN = "tel:+254700000001"


def ledger_url(medic_db, message_uuid: str = "") -> str:
    return f"{medic_db.url}-rapidpro" + (f"/msg:{message_uuid}" if message_uuid else "")


async def doc_with_stale_claim(medic_db, doc_id: str, text: str, *, owner: str = "elsewhere:1",
                               age: float = 100.0, **claim: Any) -> str:
    """A forwarded task whose claim has no outcome: as left by a worker killed between the claim
    and the POST (or during it)."""
    message = task("forwarded-to-gateway", text=text)
    message_uuid = message["messages"][0]["uuid"]
    status, _ = await asyncio.to_thread(couch_request, "PUT", ledger_url(medic_db))
    assert status in (201, 202, 412)  # 412: it exists
    claimed = time.time() - age
    entry = {"type": "dispatch", "uuid": message_uuid, "doc_id": doc_id, "urn": URN, "state": "claimed",
             "claimed_at": cht_time(claimed), "claimed_at_epoch": claimed, "owner": owner,
             "attempts": 1, **claim}
    status, body = await asyncio.to_thread(couch_request, "PUT", ledger_url(medic_db, message_uuid), entry)
    assert status == 201, body
    # The claim first, as a worker writes it before the POST; then the task.
    await put_doc(medic_db.url, {"_id": doc_id, "type": "data_record", "tasks": [message]})
    return message_uuid


def cli(medic_db, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line against the test's medic db, as the operator runs it."""
    return run_cli(*args, env={"COUCH_URL": medic_db.url, "LOG_LEVEL": "info"}, cwd=ROOT)

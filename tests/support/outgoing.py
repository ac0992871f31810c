"""Helpers of the outgoing tests, shared by the in-doubt, freshness, quorum and Watchdog tests:
CHT settings naming a RapidPro, a task, reading and writing docs, waiting for a task's state,
the environment of an in-process worker."""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from typing import Any

from playground.fake_rapidpro import DEFAULT_TOKEN
from tests.support.clock import iso_ago
from tests.support.couch_fixtures import couch_request
from tests.support.waiting import eventually


def rapidpro_settings(url: str, **extra: Any) -> dict[str, Any]:
    return {"sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": url}},
            "default_country_code": 254, **extra}


def task(state: str, to: str = "+254700000001", text: str = "Visit due", **extra: Any) -> dict[str, Any]:
    return {"state": state, "messages": [{"uuid": str(uuidlib.uuid4()), "to": to, "message": text}],
            "state_history": [{"state": state, "timestamp": iso_ago()}], **extra}


def get_doc(db_url: str, doc_id: str) -> dict[str, Any]:
    status, body = couch_request("GET", f"{db_url}/{doc_id}")
    assert status == 200, body
    return body


async def put_doc(db_url: str, doc: dict[str, Any]) -> None:
    status, body = await asyncio.to_thread(couch_request, "PUT", f"{db_url}/{doc['_id']}", doc)
    assert status in (201, 202), body


async def task_state(db_url: str, doc_id: str, kind: str = "tasks", index: int = 0) -> dict[str, Any]:
    return (await asyncio.to_thread(get_doc, db_url, doc_id))[kind][index]


async def wait_state(db_url: str, doc_id: str, state: str, kind: str = "tasks", index: int = 0,
                     timeout: float = 10) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        current = await task_state(db_url, doc_id, kind, index)
        return current if current["state"] == state else None
    return await eventually(check, timeout)


def worker_env(medic_db, **env: str) -> dict[str, str]:
    # A budget the tests' bursts never reach: a fresh worker starts with ten seconds of it
    # (worker/rapidpro/budget.py), and the rate is not what these tests are about.
    return {"COUCH_URL": medic_db.url, "LISTEN_PORT": "0", "RAPIDPRO_API_TOKEN": DEFAULT_TOKEN,
            "CHECKPOINT_INTERVAL": "0.2", "CREDENTIALS_TTL": "0", "RAPIDPRO_TIMEOUT": "2",
            "RAPIDPRO_CALLS_PER_HOUR": "1000000", **env}

"""The /healthz document, composed from every capability's part (worker/reporting.py), and the
readiness both doors answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from transitions.cht.timestamps import cht_time
from worker.couch.client import CouchError, Database
from worker.reporting import Reporter


class HealthDocument:
    def __init__(self, reporters: Sequence[Reporter], started_at: float) -> None:
        self._reporters = reporters
        self._started_at = started_at

    async def build(self) -> dict[str, Any]:
        document: dict[str, Any] = {"status": "ok", "started_at": cht_time(self._started_at)}
        for reporter in self._reporters:
            document.update(await reporter.health())
        return document


async def readiness_problems(medic: Database, *, settings_loaded: Callable[[], bool],
                            feed_missing: Callable[[], bool], timeout: float = 3.0) -> list[str]:
    """Why the worker is not ready: CouchDB does not answer, the settings are not loaded, or (on
    the active worker) the changes feed has not started."""
    problems: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            await medic.server.request_json("GET", quote(medic.name, safe=""), timeout=timeout)
    except (CouchError, TimeoutError) as exc:
        problems.append(f"CouchDB does not answer: {str(exc)[:200] or type(exc).__name__}")
    if not settings_loaded():
        problems.append("the app settings are not loaded")
    if feed_missing():
        problems.append("the changes feed has not started")
    return problems

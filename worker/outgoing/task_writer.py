"""Writes task states onto CHT docs the CHT way, safely beside other writers.

Every write carries the doc's `_rev`. On a 409 the doc is re-read and only the worker's own task
changes are applied again, so a concurrent writer (CHT api, sentinel, a phone) loses nothing.
A task that another writer has meanwhile moved out of the sendable states is left alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from transitions.cht.states import SENDABLE_STATES, set_task_state
from transitions.outgoing.dispatch import TaskUpdate
from transitions.outgoing.sendable import find_task_message
from worker.couch.bulk import BulkWriter
from worker.couch.client import Conflict, Database, NotFound
from worker.logs import get_logger

log = get_logger(__name__)

MAX_CONFLICT_RETRIES = 5


def apply_updates(doc: dict[str, Any], updates: Sequence[TaskUpdate], now: datetime) -> bool:
    """Pure: apply the worker's updates to tasks that still show their message as sendable."""
    changed = False
    for update in updates:
        found = find_task_message(doc, update.uuid)
        if found is None:
            continue
        _, _, task = found
        if task.get("state") not in SENDABLE_STATES and task.get("state") != update.state:
            continue  # someone else moved it on; the ledger keeps our record
        changed |= set_task_state(task, update.state, update.details, update.gateway_ref, now=now)
    return changed


class TaskWriter:
    def __init__(self, medic: Database, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._medic = medic
        self._clock = clock
        # Task writes of docs processed at once share `_bulk_docs` requests, each `_rev`-guarded.
        self._writer = BulkWriter(medic)

    async def write(self, doc: dict[str, Any], updates: Sequence[TaskUpdate]) -> bool:
        """Apply `updates` to `doc` and save; True when something was written."""
        if not updates:
            return False
        current = doc
        for _ in range(MAX_CONFLICT_RETRIES):
            working = copy.deepcopy(current)
            if not apply_updates(working, updates, self._clock()):
                return False
            try:
                working["_rev"] = await self._writer.put(working)
                return True
            except Conflict:
                log.debug("task_write_conflict", doc_id=doc.get("_id"))
                try:
                    current = await self._medic.get(doc["_id"])
                except NotFound:
                    return False  # deleted meanwhile: nothing to record on
        raise Conflict(f"doc {doc.get('_id')} kept conflicting after {MAX_CONFLICT_RETRIES} tries")


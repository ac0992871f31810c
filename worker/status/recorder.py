"""Writing what status tracking learnt: onto the worker's own ledger entries first (so a
re-projection by the dispatcher never moves a task backwards), then onto CHT's docs with
`_bulk_docs`, each conflict re-read and re-applied with CHT's state rule."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from transitions.cht.timestamps import cht_time
from transitions.outgoing.broadcasts import broadcast_key, ledger_ref
from transitions.outgoing.dispatch import SENT as LEDGER_SENT
from transitions.outgoing.dispatch import TaskUpdate
from transitions.status.rules import Applied, apply_status_updates, is_forward
from worker.couch.client import Database
from worker.logs import get_logger
from worker.outgoing.ledger import Ledger
from worker.status.round import chunks

log = get_logger(__name__)

MAX_CONFLICT_RETRIES = 5
DOC_BATCH = 200  # docs per all_docs / _bulk_docs request

Pending = dict[str, tuple[str, TaskUpdate]]  # uuid -> (doc_id, update)


class StatusRecorder:
    def __init__(self, medic: Database, ledger: Ledger | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._medic = medic
        self._ledger = ledger
        self._clock = clock

    async def write(self, pending: Pending) -> dict[str, Applied]:
        """Ledger first (the record re-projection trusts), then the tasks; per uuid what became of
        its update on the task."""
        await self._record_in_ledger(pending)
        return await self._write_tasks(pending)

    async def ledger_entries(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        if self._ledger is None or not uuids:
            return {}
        return await self._ledger.get_many(uuids, DOC_BATCH)

    async def _record_in_ledger(self, pending: dict[str, tuple[str, TaskUpdate]]) -> None:
        """Status tracking's latest state on the worker's own entries, so a re-projection by the
        dispatcher never moves a task backwards; in bulk."""
        todo = list(pending)
        for _ in range(MAX_CONFLICT_RETRIES):
            entries = await self.ledger_entries(todo)
            changed: list[dict[str, Any]] = []
            for uuid, entry in entries.items():
                update = pending[uuid][1]
                ours = ledger_ref(entry) == broadcast_key(update.gateway_ref)
                if entry.get("state") != LEDGER_SENT or not ours:
                    continue
                current = entry.get("task_state")
                current_details = entry.get("task_state_details")
                if isinstance(current, str):
                    if not is_forward(current, current_details, update.state, update.details):
                        continue
                changed.append({**entry, "task_state": update.state, "task_state_details": update.details,
                                "task_state_at": cht_time(self._clock())})
            if not changed:
                return
            assert self._ledger is not None
            todo = await self._ledger.put_many(changed)
            if not todo:
                return
        log.warning("status_ledger_conflicts", uuids=todo)

    async def _write_tasks(self, pending: dict[str, tuple[str, TaskUpdate]]) -> dict[str, Applied]:
        by_doc: dict[str, list[TaskUpdate]] = {}
        for doc_id, update in pending.values():
            by_doc.setdefault(doc_id, []).append(update)
        outcomes: dict[str, Applied] = {}
        for batch in chunks(sorted(by_doc), DOC_BATCH):
            todo = batch
            for _ in range(MAX_CONFLICT_RETRIES):
                todo = await self._write_docs(todo, by_doc, outcomes)
                if not todo:
                    break
            else:
                log.warning("status_task_conflicts", doc_ids=todo)  # retried next round
        return outcomes

    async def _write_docs(self, doc_ids: list[str], by_doc: dict[str, list[TaskUpdate]],
                          outcomes: dict[str, Applied]) -> list[str]:
        """One read + one `_bulk_docs`; returns the doc ids that conflicted (to re-read)."""
        result = await self._medic.all_docs(keys=doc_ids, include_docs=True)
        now = datetime.fromtimestamp(self._clock(), UTC)
        changed: list[dict[str, Any]] = []
        planned: dict[str, dict[str, Applied]] = {}
        for row in result.get("rows", []):
            doc = row.get("doc")
            doc_id = row.get("key")
            if not isinstance(doc, dict):  # deleted or gone: nothing to record on
                for update in by_doc.get(doc_id, []):
                    outcomes[update.uuid] = Applied.NOT_TRACKED
                continue
            working = copy.deepcopy(doc)
            applied = apply_status_updates(working, by_doc[doc_id], now)
            if any(outcome is Applied.APPLIED for outcome in applied.values()):
                changed.append(working)
                planned[doc_id] = applied
            else:
                outcomes.update(applied)
        if not changed:
            return []
        conflicts: list[str] = []
        for item in await self._medic.bulk(changed):
            doc_id = item.get("id")
            if item.get("error") == "conflict":
                conflicts.append(doc_id)
            elif "error" in item:
                log.warning("status_task_write_failed", doc_id=doc_id, error=item.get("error"),
                            reason=item.get("reason"))
            else:
                outcomes.update(planned.get(doc_id, {}))
        return conflicts

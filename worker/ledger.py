"""The dispatch ledger: one doc per message uuid in the worker's own database.

CouchDB's create-only write decides who sends a message: creating `msg:<uuid>` answers 409 when it
exists, so of several workers (or a worker and its own retry) exactly one holds the claim. Taking
over a *released* claim is an update with the entry's `_rev`, so it is decided the same way.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from transitions.dispatch import CLAIMED, IN_DOUBT, REJECTED, RELEASED, SENT
from transitions.timestamps import cht_time
from worker.couch import Conflict, Database, NotFound

LEDGER_PREFIX = "msg:"
HOSTNAME = socket.gethostname()
OWNER = f"{HOSTNAME}:{os.getpid()}"


def owner_is_dead(owner: object) -> bool:
    """True only when a claim's owner was a process on this host that no longer exists.

    Another host, an unparseable owner, or a live pid (even a reused one) all answer False:
    the claim is then left to age out, which is the safe direction.
    """
    if not isinstance(owner, str) or ":" not in owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host != HOSTNAME or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


class Ledger:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time, owner: str = OWNER) -> None:
        self._db = db
        self._clock = clock
        self._owner = owner

    async def get(self, uuid: str) -> dict[str, Any] | None:
        return await self._db.get_or_none(LEDGER_PREFIX + uuid)

    async def claim(self, uuid: str, doc_id: str, urn: str, released: dict[str, Any] | None = None
                    ) -> dict[str, Any] | None:
        """The claim for `uuid`, or None when someone else holds it (do not send)."""
        now = self._clock()
        entry: dict[str, Any] = {
            "_id": LEDGER_PREFIX + uuid, "type": "dispatch", "uuid": uuid, "doc_id": doc_id, "urn": urn,
            "state": CLAIMED, "claimed_at": cht_time(now), "claimed_at_epoch": now, "owner": self._owner,
            "attempts": 1,
        }
        if released is not None:
            entry["_rev"] = released["_rev"]
            entry["attempts"] = int(released.get("attempts") or 0) + 1
            entry["last_error"] = released.get("error")
        try:
            entry["_rev"] = await self._db.put(entry)
        except Conflict:
            return None
        return entry

    async def _update(self, entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Record an outcome on our own claim; a conflict means someone else touched it: re-read."""
        fields["outcome_at"] = cht_time(self._clock())
        for _ in range(5):
            updated = {**entry, **fields}
            try:
                updated["_rev"] = await self._db.put(updated)
                return updated
            except Conflict:
                current = await self.get(entry["uuid"])
                if current is None:
                    updated.pop("_rev", None)
                    entry = {k: v for k, v in entry.items() if k != "_rev"}
                else:
                    entry = {**entry, "_rev": current["_rev"]}
        raise Conflict(f"ledger entry {entry['_id']} kept conflicting")

    async def record_sent(self, entry: dict[str, Any], broadcast_id: int, broadcast_uuid: str | None,
                          broadcast_status: str | None) -> dict[str, Any]:
        return await self._update(entry, state=SENT, broadcast_id=broadcast_id, broadcast_uuid=broadcast_uuid,
                                  broadcast_status=broadcast_status, error=None)

    async def record_rejected(self, entry: dict[str, Any], reason: str) -> dict[str, Any]:
        return await self._update(entry, state=REJECTED, error=reason)

    async def record_in_doubt(self, entry: dict[str, Any], reason: str) -> dict[str, Any]:
        return await self._update(entry, state=IN_DOUBT, error=reason)

    async def release(self, entry: dict[str, Any], reason: str) -> dict[str, Any]:
        return await self._update(entry, state=RELEASED, error=reason)

    async def get_many(self, uuids: list[str], batch: int = 200) -> dict[str, dict[str, Any]]:
        """The entries of `uuids` that exist, by uuid ({} when the worker's db does not exist yet)."""
        entries: dict[str, dict[str, Any]] = {}
        for start in range(0, len(uuids), batch):
            keys = [LEDGER_PREFIX + uuid for uuid in uuids[start:start + batch]]
            try:
                result = await self._db.all_docs(keys=keys, include_docs=True)
            except NotFound:
                return entries
            for row in result.get("rows", []):
                doc = row.get("doc")
                if isinstance(doc, dict) and isinstance(doc.get("uuid"), str):
                    entries[doc["uuid"]] = doc
        return entries

    async def put_many(self, entries: list[dict[str, Any]]) -> list[str]:
        """Write updated entries (with their `_rev`) in one `_bulk_docs`; returns the uuids that
        conflicted, for the caller to re-read and decide again."""
        results = await self._db.bulk(entries)
        return [item["id"].removeprefix(LEDGER_PREFIX) for item in results
                if item.get("error") == "conflict"]

"""A RapidPro workspace's setup, through API v2: its globals (read and written), its flows, their
definitions (and triggers), and its channels. For `rapidpro setup`, `check` and the channel
watcher; every call goes through the client and so takes a token of the shared budget.

Shapes per RapidPro's `temba/api/v2/views.py` and `serializers.py` (GlobalsEndpoint,
FlowsEndpoint, DefinitionsEndpoint, ChannelsEndpoint): listings are cursor pages of 250, newest
first; a global is created by POSTing `{"name", "value"}` (the key derives from the name) and
updated by POSTing `{"value"}` to `globals.json?key=<key>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.rapidpro.budget import Priority
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.errors import WrongUrl

GLOBALS_PATH = "/api/v2/globals.json"
FLOWS_PATH = "/api/v2/flows.json"
DEFINITIONS_PATH = "/api/v2/definitions.json"
CHANNELS_PATH = "/api/v2/channels.json"

# A workspace holds at most 250 globals (RapidPro ORG_LIMIT_DEFAULTS) and a page is 250 rows:
# two pages bound every listing here, so a command stays within a handful of calls.
MAX_PAGES = 2
# Definitions are asked for at most this many flows at once (`?flow=` repeated in one call).
MAX_DEFINITIONS = 100


class Workspace:
    """One workspace (`base_url` + `token`); `priority` in the shared budget for every call."""

    def __init__(self, client: RapidProClient, base_url: str, token: str, *,
                 priority: Priority = Priority.STATUS, max_wait: float | None = None) -> None:
        self._client = client
        self._base_url = base_url
        self._token = token
        self._priority = priority
        self._max_wait = max_wait

    async def info(self) -> dict[str, Any]:
        return await self._client.get_workspace(self._base_url, self._token, priority=self._priority,
                                                max_wait=self._max_wait)

    async def _listing(self, path: str, filters: Mapping[str, object]) -> tuple[list[dict[str, Any]], bool]:
        """The rows of up to MAX_PAGES pages, and whether more were left."""
        rows: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await self._client.list_page(self._base_url, self._token, path, filters, cursor_url=cursor,
                                                priority=self._priority, max_wait=self._max_wait)
            rows.extend(page.results)
            cursor = page.next
            if cursor is None:
                return rows, False
        return rows, True

    async def globals(self) -> dict[str, dict[str, Any]]:
        """Every active global, by key."""
        rows, _ = await self._listing(GLOBALS_PATH, {})
        return {str(row["key"]): row for row in rows if isinstance(row.get("key"), str)}

    async def create_global(self, name: str, value: str) -> dict[str, Any]:
        """201: the new global (its key derives from `name`)."""
        return await self._client.post_object(self._base_url, self._token, GLOBALS_PATH,
                                              {"name": name, "value": value}, priority=self._priority,
                                              max_wait=self._max_wait)

    async def update_global(self, key: str, value: str) -> dict[str, Any]:
        """200: the global with its new value (an unknown key is a 404, raised as WrongUrl)."""
        return await self._client.post_object(self._base_url, self._token, GLOBALS_PATH, {"value": value},
                                              {"key": key}, priority=self._priority, max_wait=self._max_wait)

    async def active_flows(self) -> tuple[list[dict[str, Any]], bool]:
        """Active (not archived) messaging flows, newest first, and whether more were left. The
        filters are checked again on the rows: servers ignore parameters they do not know."""
        rows, more = await self._listing(FLOWS_PATH, {"type": "message", "archived": "false"})
        return [row for row in rows if not row.get("archived") and row.get("type") in ("message", None)], more

    async def definitions(self, flow_uuids: Sequence[str]) -> dict[str, Any]:
        """The export of these flows, with their dependent flows and their active triggers
        (`dependencies=flows`); an empty export for no flows (no call)."""
        if not flow_uuids:
            return {"flows": [], "triggers": []}
        params = [("flow", uuid) for uuid in flow_uuids[:MAX_DEFINITIONS]] + [("dependencies", "flows")]
        export = await self._client.get_object(self._base_url, self._token, DEFINITIONS_PATH, params,
                                               priority=self._priority, max_wait=self._max_wait)
        if not isinstance(export.get("flows"), list):
            raise WrongUrl("definitions.json answered without a flows list", status=200)
        return export

    async def channels(self) -> list[dict[str, Any]]:
        rows, _ = await self._listing(CHANNELS_PATH, {})
        return rows

"""What a transition is.

A transition declares which docs interest it (`matches`, pure) and what it does to them
(`apply`). Its decisions are pure functions in its own module, tested without servers; its
effects go through objects handed to it (CouchDB, RapidPro), so `apply` holds no I/O of its own.
`apply` raising means "retry this change later"; a doc that is merely wrong (bad input) is logged
and returns normally, since retrying cannot fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Transition(Protocol):
    name: str

    def matches(self, doc: Mapping[str, Any]) -> bool: ...

    async def apply(self, doc: dict[str, Any]) -> None: ...

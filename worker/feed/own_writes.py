"""Revisions the worker itself wrote to medic, so their changes do not loop back into it."""

from __future__ import annotations

from collections import OrderedDict


class OwnWrites:
    """A bounded memory of (doc_id, rev) pairs; the oldest are forgotten first.

    Forgetting is safe: transitions are idempotent, so a forgotten own write is only processed
    once more and changes nothing.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._revs: OrderedDict[tuple[str, str], None] = OrderedDict()

    def remember(self, doc_id: str, rev: str) -> None:
        self._revs[(doc_id, rev)] = None
        if len(self._revs) > self._capacity:
            self._revs.popitem(last=False)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._revs

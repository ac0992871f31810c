"""A change from the feed, and which changes the worker has no business with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transitions.cht.translations import is_translations_doc_id


@dataclass(frozen=True)
class Change:
    seq: Any
    doc_id: str
    doc: dict[str, Any] | None
    deleted: bool = False
    # Set by the worker's own passes that must process the doc even when its latest revision is
    # the worker's own write (an in-doubt message freed for a resend).
    recheck: bool = False

    @property
    def rev(self) -> str | None:
        if self.doc is None:
            return None
        rev = self.doc.get("_rev")
        return rev if isinstance(rev, str) else None

    @classmethod
    def from_row(cls, row: Any) -> Change | None:
        """A `_changes` row → Change; None for a row too malformed to name a doc."""
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            return None
        doc = row.get("doc")
        return cls(seq=row.get("seq"), doc_id=row["id"], doc=doc if isinstance(doc, dict) else None,
                   deleted=bool(row.get("deleted")))


def skip_reason(change: Change, own_writes: Any = ()) -> str | None:
    """Why a change needs no processing, or None when it does (pure)."""
    if change.doc_id.startswith("_design/"):
        return "design_doc"
    if change.deleted and not is_translations_doc_id(change.doc_id):
        # A deleted translations doc takes its texts away (CHT's api reloads them then too).
        return "deleted"
    if change.doc is None and not change.deleted:
        return "no_doc"
    if change.rev is not None and not change.recheck and (change.doc_id, change.rev) in own_writes:
        return "own_write"
    return None

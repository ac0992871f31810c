"""Timestamps as CHT and RapidPro write them (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_time(value: Any) -> float | None:
    """ISO 8601 (CHT's ms `Z` or RapidPro's µs `Z`) → epoch seconds; None when unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def cht_time(ts: float) -> str:
    """Epoch seconds as CHT writes timestamps (UTC, milliseconds, Z — JavaScript's toISOString)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rapidpro_time(ts: float) -> str:
    """Epoch seconds as RapidPro writes dates (UTC, µs, Z) for `after=`."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

"""Timestamps relative to now, for test docs whose age the worker judges.

Status tracking (its tiers and `STATUS_TRACKING_HORIZON`), claim ages and in-doubt windows all read
the times written in a doc or a ledger entry; a literal date in a test ages past them some day.
"""

from __future__ import annotations

import time

from transitions.cht.timestamps import cht_time


def iso_ago(seconds: float = 0.0) -> str:
    """CHT's timestamp form (ISO 8601, UTC, ms) of `seconds` before now."""
    return cht_time(time.time() - seconds)

"""Jittered exponential backoff, as a pure object: the caller owns the sleeping."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays grow base·2ⁿ up to `cap`, with "equal jitter" (a delay drawn between half the ceiling
    and the ceiling) so restarting workers do not stampede yet never retry at once.

    `next_delay(retry_after)` honours a server's Retry-After when it is longer than our own delay.
    """

    base: float = 0.5
    cap: float = 60.0
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.attempts))
        self.attempts += 1
        delay = self.rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None and retry_after > delay:
            return float(retry_after)
        return delay

    def reset(self) -> None:
        self.attempts = 0


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (CouchDB and RapidPro send seconds); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None

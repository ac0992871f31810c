"""How long a periodic job has gone without completing a run: for /healthz, /metrics and `check`.

Status tracking and in-doubt resolution retry on their own after a 429, a short budget or a
failing listing; nothing crashes and no error stands out, so a job that never gets through is
easy to miss while CHT shows stale states and sends stay in doubt. Each job reports here when it
starts, when a run completes (a run with nothing to do completes too), and when it stops (a
standby worker runs neither job, which is no stall). Pure: the time is an argument.
"""

from __future__ import annotations

from typing import Any

from transitions.cht.timestamps import cht_time


class Progress:
    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after  # seconds without a completed run that make a stall
        self._running_since: float | None = None
        self._completed_at: float | None = None

    def started(self, now: float) -> None:
        self._running_since = now
        self._completed_at = None

    def stopped(self) -> None:
        self._running_since = None

    def completed(self, now: float) -> None:
        self._completed_at = now

    def age(self, now: float) -> float | None:
        """Seconds since the last completed run (or the start); None while the job is not running."""
        if self._running_since is None:
            return None
        return max(0.0, now - (self._completed_at if self._completed_at is not None else self._running_since))

    def stalled(self, now: float) -> bool:
        age = self.age(now)
        return age is not None and age > self.stall_after

    def health(self, now: float) -> dict[str, Any]:
        age = self.age(now)
        return {"running": self._running_since is not None,
                "last_completed_at": cht_time(self._completed_at) if self._completed_at is not None else None,
                "age_s": None if age is None else round(age, 1),
                "stalled": self.stalled(now), "stall_after_s": self.stall_after}

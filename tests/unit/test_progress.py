"""A periodic job's progress (pure) and how a stall reads in the health texts."""

from __future__ import annotations

from worker.http.health_text import stalls, status_line
from worker.progress import Progress


def test_a_job_stalls_once_it_has_not_completed_a_run_for_longer_than_its_limit():
    progress = Progress(stall_after=30.0)
    assert progress.age(100.0) is None and not progress.stalled(100.0)  # not running: no stall
    progress.started(100.0)
    assert progress.age(120.0) == 20.0 and not progress.stalled(130.0)
    assert progress.stalled(130.5)  # counted from the start until a first run completes
    progress.completed(131.0)
    assert progress.age(140.0) == 9.0 and not progress.stalled(140.0)
    assert progress.health(170.0)["stalled"] is True
    assert progress.health(170.0)["last_completed_at"] == "1970-01-01T00:02:11.000Z"
    progress.stopped()  # a standby runs no job
    assert progress.health(1000.0) == {"running": False, "last_completed_at": "1970-01-01T00:02:11.000Z",
                                       "age_s": None, "stalled": False, "stall_after_s": 30.0}
    progress.started(2000.0)  # a new active session starts afresh
    assert progress.age(2001.0) == 1.0


def test_stalls_are_named_in_the_status_line_and_for_check():
    health = {"role": "active", "feed": {"connected": True, "caught_up": True}, "backlog": 0,
              "outgoing": {"sending": True, "in_doubt_lookups": {"stalled": False}},
              "status_tracking": {"progress": {"stalled": True, "age_s": 400.0, "stall_after_s": 180.0}}}
    assert list(stalls(health)) == ["status_tracking"]
    assert "no run completed for 400.0 s" in stalls(health)["status_tracking"]
    assert status_line(health) == "feed caught up; sending; status tracking stalled"
    health["status_tracking"]["progress"]["stalled"] = False
    assert stalls(health) == {} and status_line(health) == "feed caught up; sending"

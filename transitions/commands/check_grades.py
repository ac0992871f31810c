"""How bad each line of `check` is, and which lines stop an install or an upgrade. Pure.

Four levels, worst last:
- `ok`: nothing to do.
- `warning`: worth a look; nothing is broken by it.
- `problem`: something does not work and needs the operator (the incoming relay is not set up
  yet, RapidPro cannot be reached right now, a channel asleep, CHT's own sender on so the worker
  stands down from sending...), but the daemon runs and does
  the rest of its job meanwhile: it sends, keeps its checkpoint, serves the webhook. An install
  starts the service anyway and an upgrade goes on: refusing them would fix nothing and, for an
  upgrade, blame the new release for something on RapidPro's side.
- `fatal`: the daemon cannot do its job (the configuration is invalid; CouchDB cannot be reached
  or refuses the credentials; no rights on the medic database or the worker's; no token, or one
  RapidPro refuses, while the worker is in charge of sending). An install
  leaves the service stopped and an upgrade keeps the release in service.

A line is `fatal` only where it is added so: whatever `check` gains later is not fatal unless
it says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OK, WARNING, PROBLEM, FATAL = "ok", "warning", "problem", "fatal"
LEVELS = (OK, WARNING, PROBLEM, FATAL)


@dataclass(frozen=True)
class Finding:
    level: str
    check: str
    detail: str


def counts(findings: Sequence[Finding]) -> dict[str, int]:
    found = {level: 0 for level in LEVELS}
    for finding in findings:
        found[finding.level] += 1
    return found


def blocks_install(findings: Sequence[Finding]) -> bool:
    return any(f.level == FATAL for f in findings)


def exit_status(findings: Sequence[Finding], *, for_install: bool) -> int:
    """1 on any problem; with `for_install`, 1 only on a fatal one (what install.sh gates on)."""
    stopping = (FATAL,) if for_install else (PROBLEM, FATAL)
    return 1 if any(f.level in stopping for f in findings) else 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 or word in (FATAL, OK) else f"{n} {word}s"


def summary(findings: Sequence[Finding]) -> str:
    """The last line of `check`: the counts, then what an install or upgrade does with them."""
    n = counts(findings)
    figures = ", ".join(_plural(n[level], level) for level in reversed(LEVELS))
    if n[FATAL]:
        verdict = "the daemon cannot work: an install does not start it, an upgrade is refused"
    elif n[PROBLEM]:
        verdict = "the daemon can run (install and upgrade go on); fix the problems for the rest to work"
    else:
        verdict = "ready"
    return f"{figures}: {verdict}"

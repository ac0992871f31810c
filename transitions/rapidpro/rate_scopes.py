"""RapidPro's throttle scopes and their rates by server version (pure).

RapidPro throttles each workspace per *scope*, over a sliding hour (Django REST framework's
`ScopedRateThrottle` via RapidPro's `OrgUserRateThrottle`, temba/api/support.py: the times of the
last hour's calls are counted, throttled calls are not). Each endpoint names its scope
(`throttle_scope` in temba/api/v2/views.py, "v2" by default) and the rates are
`REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]` in temba/settings_common.py (a workspace may have its
own, `Org.api_rates`). The endpoints the worker calls:

- up to v10.1.8 (before 15 Jan 2025): broadcasts.json in `v2.broadcasts` at 36,000/h,
  messages.json in `v2.messages` at 2,500/h, the rest (workspace, channels, globals, flows,
  definitions) in `v2` at 2,500/h;
- v10.1.9 to v10.3.85 ("Tweak broadcast API rate limit"): the same scopes, all at 2,500/h;
- v10.3.86 on (1 Nov 2025, "Increase API rate limits by ~50%"): broadcasts.json counted in `v2`
  with the rest at 3,600/h, messages.json in `v2.messages` at 3,600/h.

RapidPro's API does not say its version; its broadcasts do, by their fields: `uuid` since
v10.3.79 (Oct 2025), `quick_replies` since v10.1.54 (Feb 2025). So a broadcast with a `uuid` is
read as v10.3.86 on (v10.3.79–v10.3.85, a few weeks of Oct 2025, really had the 2025 rates: a
faster pace there meets 429s, which pause only the broadcasts' scope), one with `quick_replies`
and no `uuid` as 2025, one with neither as before 2025 (v10.1.9–v10.1.53 really had 2,500/h for
broadcasts: the same caveat). Until a broadcast is seen, the rates are the lowest of every
version and broadcasts.json is counted in `v2`, which no version exceeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

V2 = "v2"
MESSAGES = "v2.messages"
BROADCASTS = "v2.broadcasts"
SCOPES = (BROADCASTS, MESSAGES, V2)

BROADCASTS_PATH_SUFFIX = "/api/v2/broadcasts.json"
MESSAGES_PATH_SUFFIX = "/api/v2/messages.json"


@dataclass(frozen=True)
class ServerRates:
    """One row of the table: the scope broadcasts.json is counted in and each scope's rate."""

    name: str
    broadcasts_scope: str
    rates: Mapping[str, int]  # calls an hour by scope

    def rate(self, scope: str) -> int:
        return self.rates[scope]


UNKNOWN = ServerRates("not yet known (the lowest rates of every version)", V2,
                      {V2: 2500, MESSAGES: 2500, BROADCASTS: 2500})
BEFORE_2025 = ServerRates("up to v10.1.8 (before Jan 2025)", BROADCASTS,
                          {V2: 2500, MESSAGES: 2500, BROADCASTS: 36000})
IN_2025 = ServerRates("v10.1.9 to v10.3.85 (Jan to Oct 2025)", BROADCASTS,
                      {V2: 2500, MESSAGES: 2500, BROADCASTS: 2500})
SINCE_NOV_2025 = ServerRates("v10.3.86 on (since Nov 2025)", V2,
                             {V2: 3600, MESSAGES: 3600, BROADCASTS: 3600})
VERSIONS = {"unknown": UNKNOWN, "before-2025": BEFORE_2025, "2025": IN_2025, "current": SINCE_NOV_2025}


def version_of_broadcast(broadcast: Any) -> str | None:
    """The table row a broadcast (a POST's answer or a listing's row) shows; None when it is not
    one (no `created_on`)."""
    if not isinstance(broadcast, Mapping) or "created_on" not in broadcast:
        return None
    if "uuid" in broadcast:
        return "current"
    if "quick_replies" in broadcast:
        return "2025"
    return "before-2025"


def scope_of_path(path: str, version: ServerRates) -> str:
    """The scope RapidPro counts a call to `path` in (a path prefix before /api/v2 is allowed)."""
    if path.endswith(MESSAGES_PATH_SUFFIX):
        return MESSAGES
    if path.endswith(BROADCASTS_PATH_SUFFIX):
        return version.broadcasts_scope
    return V2


def scope_rates(version: ServerRates, overrides: Mapping[str, int | None] | None = None,
                every: int | None = None) -> dict[str, int]:
    """Each scope's calls an hour: the operator's override for that scope, else `every` (the
    deprecated single budget, RAPIDPRO_CALLS_PER_HOUR, when set), else the version's."""
    rates: dict[str, int] = {}
    for scope in SCOPES:
        rates[scope] = (overrides or {}).get(scope) or every or version.rate(scope)
    return rates


def sends_in_window(claim_times: list[float], now: float, window: float = 3600.0) -> list[float]:
    """The claims (epoch seconds) RapidPro still counts at `now`: those of the last `window`."""
    return sorted(t for t in claim_times if now - window < t <= now)

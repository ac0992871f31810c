"""What a RapidPro call can end in, as error types, so callers decide with `except`:

- `MessageRejected`: RapidPro judged *this message* (invalid URN, text too long) — final.
- `WorkspaceBlocked`, `RapidProUnauthorized`, `WrongUrl`: configuration or account problems;
  nothing was created, the message stays sendable.
- `RapidProServerError` (5xx with a body), `RapidProUnreachable` (the request never left),
  `RateLimited` (429 beyond the caller's wait limit): temporary; nothing was created.
- `SendInDoubt`: a broadcast POST may or may not have created a broadcast. Never resend it
  automatically (RapidPro has no idempotency key).
- `RapidProNoAnswer`: the same network condition for a *read* — harmless, just retry later.
"""

from __future__ import annotations


class RapidProError(Exception):
    """Base of every RapidPro outcome other than success.

    `transient`: the same call, unchanged, may succeed later without anyone fixing anything.
    `retry_after`: seconds RapidPro asked us to wait, when it said.
    """

    transient: bool = False

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class MessageRejected(RapidProError):
    """400 about the message itself (invalid URN, text too long): final, never retry it."""


class WorkspaceBlocked(RapidProError):
    """400 not about the message (workspace flagged or suspended, ...): nothing was created."""


class RapidProUnauthorized(RapidProError):
    """403 (401 from a proxy): the token is wrong or revoked."""


class WrongUrl(RapidProError):
    """404, a redirect, or HTML/non-JSON where JSON was expected: `sms.rapidpro.url` is wrong."""


class RapidProServerError(RapidProError):
    """5xx with a body: RapidPro answered, and an error answer means nothing was created."""

    transient = True

    def __init__(self, status: int, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason, status=status, retry_after=retry_after)


class RateLimited(RapidProError):
    """Still throttled (429 or an exhausted budget) when the call's wait limit ran out."""

    transient = True

    def __init__(self, retry_after: float | None, reason: str = "rate limited") -> None:
        super().__init__(reason, status=429, retry_after=retry_after)


class RapidProUnreachable(RapidProError):
    """The request provably never left: no connection was made (refused, DNS, connect timeout)."""

    transient = True


class SendInDoubt(RapidProError):
    """A broadcast POST may have created a broadcast, but we cannot know. Never resend it."""

    transient = False


class RapidProNoAnswer(RapidProError):
    """A read (GET) got no answer: timeout or dropped connection. Safe to retry."""

    transient = True


class NotActive(RapidProError):
    """Not sent: this worker is not (or no longer) the active one (see worker/lease/keeper.py). Nothing
    left this process, so a send's claim can be released."""

    transient = True

"""What the fake RapidPro answers as each RapidPro version would: the fields of a broadcast and of
a message, the filters each endpoint honours, the statuses it can report, the sort order of the
`sent` folder and the rate limit.

Read from RapidPro's own serializers, views and API tests (https://github.com/nyaruka/rapidpro):

- **2020** — v5.7.91 (2020-11-05), the last v5.7: `temba/api/v2/serializers.py`
  (`BroadcastReadSerializer`, `MsgReadSerializer`), `temba/api/v2/views.py` (`BroadcastsEndpoint`,
  `MessagesEndpoint.filter_queryset`), `temba/api/v2/tests.py` (`test_broadcasts`,
  `test_messages`). A broadcast's `text` is a dict by language, and a plain string is stored
  under `"base"` when the workspace has no primary language (`fields.TranslatableField`);
  broadcast statuses are `queued|sent|failed`; no `uuid` anywhere; `type` is `inbox` for an API
  broadcast's message; 2,500 calls an hour in `v2` and in `v2.messages`, and broadcasts.json in its
  own scope `v2.broadcasts` at 36,000 an hour (`temba/settings_common.py`, from June 2019 to
  "Tweak broadcast API rate limit", v10.1.9, Jan 2025).
- **2023** — v8.2.0 (2023-08-07): the same files. Broadcasts add `attachments` and
  `base_language`, messages add `flow` and `type: "text"`; `initializing` and `resent` are gone
  (reported `queued` / never produced), `read` does not exist yet; still no `uuid`; the `sent`
  folder is ordered by `sent_on` (`MessagesEndpoint.Pagination`).
- **current** — main at c4e8d4872a (2026-08-21, the code of v26.3.54): `temba/api/v2/tests/
  test_broadcasts.py`, `test_messages.py`. Broadcasts and messages carry `uuid` (v10.3.79,
  Oct 2025) and `id` only as a deprecated field; `messages.json?uuid=` (v10.3.79) and
  `broadcasts.json?uuid=` (v10.3.81); `?broadcast=` and `?id=` still honoured though undocumented;
  broadcast statuses `pending|queued|started|completed|failed|interrupted`; `read`; 3,600 an hour
  in `v2` (broadcasts.json included: "Increase API rate limits by ~50%", v10.3.86, Nov 2025,
  dropped its own scope) and in `v2.messages`.
  Any status a test sets passes through, so a test can also present older statuses to it.
- **future** — a server that has finished the deprecations of Oct 2025: no `id` on broadcasts or
  messages and no `broadcast` (nor `media`) on messages, the fields RapidPro moved under
  "deprecated fields" (commit 0297d2eb43); `broadcasts.json?id=`, `messages.json?id=` and
  `?broadcast=` are no longer read. RapidPro's views read only the parameters they know, so a
  dropped filter is *ignored* and the unfiltered list comes back with 200 (nothing in RapidPro
  answers an unknown parameter with an error). No server answers like this yet; it is what the
  deprecations lead to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Everything the fake can render; each profile picks its fields, in its serializer's order.
CURRENT_BROADCAST_FIELDS = ("uuid", "status", "progress", "urns", "contacts", "groups", "text", "attachments",
                            "quick_replies", "base_language", "created_on", "id")
CURRENT_MESSAGE_FIELDS = ("uuid", "contact", "urn", "channel", "direction", "type", "status",
                          "archived", "visibility", "text", "labels", "flow", "attachments",
                          "quick_replies", "created_on", "sent_on", "modified_on", "media", "id",
                          "broadcast")


@dataclass(frozen=True)
class Profile:
    name: str
    version: str
    broadcast_fields: tuple[str, ...]
    message_fields: tuple[str, ...]
    broadcast_filters: frozenset[str]  # query parameters GET broadcasts.json reads
    message_filters: frozenset[str]  # query parameters GET messages.json reads
    legacy_broadcast_statuses: bool  # queued|sent|failed rather than pending|…|interrupted
    default_language: str  # where a plain-string `text` is stored
    message_type: str  # `type` of an outgoing API message
    rate_limit: int  # calls an hour (the v2 throttle scope)
    sent_by_sent_on: bool  # folder=sent ordered by -sent_on (else -created_on)
    # Statuses this version cannot report, as it reports them instead (None: not at all).
    statuses: dict[str, str] = field(default_factory=dict)
    # The throttle scope of broadcasts.json (`BroadcastsEndpoint.throttle_scope`): its own
    # "v2.broadcasts" until v10.3.86 (Nov 2025), "v2" (shared) since.
    broadcasts_scope: str = "v2"
    # Calls an hour per throttle scope other than "v2" (which is `rate_limit`): temba/settings_common.py
    # DEFAULT_THROTTLE_RATES of that version.
    scope_rates: dict[str, int] = field(default_factory=dict)

    def rates(self) -> dict[str, int]:
        """Every scope the fake throttles, with its hourly rate."""
        return {"v2": self.rate_limit, "v2.messages": self.rate_limit, **self.scope_rates}

    @property
    def exclusive(self) -> tuple[str, ...]:
        """The messages.json parameters of which at most one may be given (400 otherwise)."""
        names = ("contact", "folder", "label", "broadcast")
        return tuple(name for name in names if name in self.message_filters)


_OLD_MESSAGE_FILTERS = frozenset({"id", "broadcast", "contact", "folder", "label", "before", "after"})

PROFILES: dict[str, Profile] = {
    "2020": Profile(
        name="2020", version="v5.7.91",
        broadcast_fields=("id", "urns", "contacts", "groups", "text", "status", "created_on"),
        message_fields=("id", "broadcast", "contact", "urn", "channel", "direction", "type", "status",
                        "archived", "visibility", "text", "labels", "attachments", "created_on",
                        "sent_on", "modified_on", "media"),
        broadcast_filters=frozenset({"id", "before", "after"}),
        message_filters=_OLD_MESSAGE_FILTERS,
        legacy_broadcast_statuses=True, default_language="base", message_type="inbox", rate_limit=2500,
        sent_by_sent_on=False,
        statuses={"pending": "queued", "read": "delivered"},
        broadcasts_scope="v2.broadcasts", scope_rates={"v2.broadcasts": 36000},
    ),
    "2023": Profile(
        name="2023", version="v8.2.0",
        broadcast_fields=("id", "urns", "contacts", "groups", "text", "attachments", "base_language",
                          "status", "created_on"),
        message_fields=("id", "broadcast", "contact", "urn", "channel", "direction", "type", "status",
                        "archived", "visibility", "text", "labels", "flow", "attachments", "created_on",
                        "sent_on", "modified_on", "media"),
        broadcast_filters=frozenset({"id", "before", "after"}),
        message_filters=_OLD_MESSAGE_FILTERS,
        legacy_broadcast_statuses=True, default_language="eng", message_type="text", rate_limit=2500,
        sent_by_sent_on=True,
        statuses={"pending": "queued", "initializing": "queued", "resent": "sent", "read": "delivered"},
        broadcasts_scope="v2.broadcasts", scope_rates={"v2.broadcasts": 36000},
    ),
    "current": Profile(
        name="current", version="main c4e8d4872a (v26.3.54)",
        broadcast_fields=CURRENT_BROADCAST_FIELDS,
        message_fields=CURRENT_MESSAGE_FIELDS,
        broadcast_filters=frozenset({"uuid", "id", "before", "after"}),
        message_filters=_OLD_MESSAGE_FILTERS | {"uuid"},
        legacy_broadcast_statuses=False, default_language="eng", message_type="text", rate_limit=3600,
        sent_by_sent_on=True,
    ),
    "future": Profile(
        name="future", version="after the Oct 2025 deprecations (no such release yet)",
        broadcast_fields=tuple(f for f in CURRENT_BROADCAST_FIELDS if f != "id"),
        message_fields=tuple(f for f in CURRENT_MESSAGE_FIELDS if f not in ("id", "broadcast", "media")),
        broadcast_filters=frozenset({"uuid", "before", "after"}),
        message_filters=frozenset({"uuid", "contact", "folder", "label", "before", "after"}),
        legacy_broadcast_statuses=False, default_language="eng", message_type="text", rate_limit=3600,
        sent_by_sent_on=True,
    ),
}

PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def profile(name: str | Profile) -> Profile:
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown RapidPro profile {name!r} (one of {', '.join(PROFILE_NAMES)})") from None

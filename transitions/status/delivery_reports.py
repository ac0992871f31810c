"""Channels that never report delivery, learnt from what RapidPro lists (pure).

Many channels (Android relayers, some aggregators) never send delivery reports: their messages
stay `sent` for ever, and asking about them hourly for the whole STATUS_TRACKING_HORIZON is most
of what status tracking costs. Every outgoing row a status lookup reads names its channel
(`channel: {uuid, name}` in every RapidPro version since 2020; it can be null): a row at
`delivered` or `read` shows the channel reports delivery; a row still at `sent` long after it was
sent, with no report from the channel since, is evidence that it does not. A channel is judged
*without delivery reports* once `needed` different messages on it have sat at `sent` for
`settle` seconds with no report seen from it meanwhile; the next report from it reverses the
judgement at once.

For a message on such a channel `sent` is as final as it gets: once it is past the up-to-an-hour
tier it is no longer asked about, but *parked* — only the cheap hourly sync of the `failed` folder
looks for it (a late failure still shows) — until the horizon, or until the channel reports again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from transitions.cht.states import SENT
from transitions.cht.timestamps import cht_time, parse_time
from transitions.status.rules import Policy, Tier, Tracked

REPORTED = frozenset({"delivered", "read"})
MAX_CHANNELS = 1000  # a bound on what is remembered (a workspace has a handful)


@dataclass(frozen=True)
class ReportsPolicy:
    settle: float = 15 * 60.0  # a row `sent` this long ago is unreported (DLRs take seconds, minutes)
    needed: int = 20  # different such messages, with no report from the channel meanwhile
    horizon: float = 7 * 86400.0  # rows sent longer ago than this say nothing


@dataclass
class Channel:
    uuid: str
    name: str | None = None
    reported_at: float | None = None  # our clock when a delivered/read row was last seen
    silent: dict[str, float] = field(default_factory=dict)  # message → when seen unreported
    without_since: float | None = None  # judged without delivery reports since


class DeliveryReports:
    def __init__(self, policy: ReportsPolicy | None = None) -> None:
        self.policy = policy or ReportsPolicy()
        self.channels: dict[str, Channel] = {}

    def observe(self, results: Iterable[Mapping[str, Any]], now: float) -> set[str]:
        """Learn from one page of `messages.json`; returns the channels whose judgement changed."""
        reported: dict[str, str | None] = {}
        silent: dict[str, list[tuple[str, str | None]]] = {}
        for result in results:
            if result.get("direction", "out") != "out":
                continue
            channel = result.get("channel")
            if not isinstance(channel, Mapping) or not isinstance(channel.get("uuid"), str):
                continue
            uuid, name = channel["uuid"], channel.get("name")
            status = result.get("status")
            if status in REPORTED:
                reported[uuid] = name if isinstance(name, str) else None
            elif status == SENT:
                key = _message_key(result)
                sent = parse_time(result.get("sent_on")) or parse_time(result.get("created_on"))
                if key is not None and sent is not None and \
                        self.policy.settle <= now - sent <= self.policy.horizon:
                    silent.setdefault(uuid, []).append((key, name if isinstance(name, str) else None))
        changed: set[str] = set()
        for uuid, name in reported.items():
            channel = self._channel(uuid, name)
            channel.reported_at = now
            channel.silent.clear()
            if channel.without_since is not None:
                channel.without_since = None
                changed.add(uuid)
        for uuid, keys in silent.items():
            if uuid in reported:
                continue  # the same page shows a report: the silent rows are slow, not unreported
            channel = self._channel(uuid, keys[0][1])
            for key, _ in keys:
                if len(channel.silent) < self.policy.needed:
                    channel.silent.setdefault(key, now)
            if channel.without_since is None and len(channel.silent) >= self.policy.needed:
                channel.without_since = now
                changed.add(uuid)
        return changed

    def without_reports(self, channel: str | None) -> bool:
        known = self.channels.get(channel) if channel is not None else None
        return known is not None and known.without_since is not None

    def health(self, parked: Mapping[str, int]) -> list[dict[str, Any]]:
        """/healthz `status_tracking.channels_without_delivery_reports`."""
        return [{"uuid": c.uuid, "name": c.name, "since": cht_time(c.without_since),
                 "unreported_messages_seen": len(c.silent), "messages_parked": parked.get(c.uuid, 0)}
                for c in sorted(self.channels.values(), key=lambda c: c.uuid) if c.without_since is not None]

    def forget(self) -> None:
        self.channels.clear()

    def _channel(self, uuid: str, name: str | None) -> Channel:
        channel = self.channels.get(uuid)
        if channel is None:
            if len(self.channels) >= MAX_CHANNELS:
                del self.channels[next(iter(self.channels))]
            channel = self.channels[uuid] = Channel(uuid)
        if name:
            channel.name = name
        return channel


def _message_key(result: Mapping[str, Any]) -> str | None:
    for name in ("uuid", "id"):
        value = result.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def should_park(item: Tracked, now: float, policy: Policy, reports: DeliveryReports) -> bool:
    """Past the up-to-an-hour tier, `sent`, on a channel without delivery reports: nothing but a
    failure can come any more."""
    return (not item.parked and item.state == SENT and item.tier(now, policy) is Tier.OLD
            and reports.without_reports(item.channel))


def should_unpark(item: Tracked, reports: DeliveryReports) -> bool:
    """Its channel reports delivery again (or the message moved on)."""
    return item.parked and (item.state != SENT or not reports.without_reports(item.channel))

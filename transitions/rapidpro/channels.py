"""The workspace's channels as `channels.json` lists them, and whether each can carry SMS now.

RapidPro's Android relayer (an app on a phone) syncs with the server every few minutes and
RapidPro records `last_seen` and the phone's battery and network (`device`: power_level,
power_status, power_source, network_type; `power_level` -1 before the first sync). A phone that
went to sleep stops syncing: RapidPro keeps queueing its messages, the worker sees them accepted,
and nobody receives them. Fields per RapidPro `temba/api/v2/serializers.py` ChannelReadSerializer
(`type` since v10.1.104; before it, `device` is non-null only for Android channels).

Other channel types (Vonage, Twilio, …) send through an operator's API and have no `last_seen`
to judge: they count as active. Addresses are shown masked, like every phone number the worker
shows. Pure: the time is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transitions.cht.phone import mask_phone
from transitions.cht.timestamps import cht_time, parse_time
from transitions.rapidpro.relay_check import OK, WARNING, Judgement

ASLEEP_AFTER = 1800.0  # seconds without a sync after which an Android channel counts as asleep


@dataclass(frozen=True)
class Channel:
    uuid: str
    name: str
    type: str | None
    address: str  # masked
    android: bool
    last_seen: float | None  # epoch seconds
    power_level: int | None  # percent; None when unknown
    power_status: str | None
    power_source: str | None
    network_type: str | None


def read_channels(results: Sequence[Any]) -> list[Channel]:
    channels = []
    for item in results:
        if not isinstance(item, Mapping) or not item.get("uuid"):
            continue
        device = item.get("device") if isinstance(item.get("device"), Mapping) else None
        kind = item.get("type") if isinstance(item.get("type"), str) else None
        level = (device or {}).get("power_level")
        known_level = isinstance(level, int) and not isinstance(level, bool) and level >= 0
        channels.append(Channel(
            uuid=str(item["uuid"]), name=str(item.get("name") or ""), type=kind,
            address=mask_phone(str(item.get("address") or "")),
            android=kind == "android" or (kind is None and device is not None),
            last_seen=parse_time(item.get("last_seen")),
            power_level=level if known_level else None,
            power_status=_text((device or {}).get("power_status")),
            power_source=_text((device or {}).get("power_source")),
            network_type=_text((device or {}).get("network_type"))))
    return channels


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def last_seen_age(channel: Channel, now: float) -> float | None:
    return None if channel.last_seen is None else max(0.0, now - channel.last_seen)


def asleep(channel: Channel, now: float, after: float = ASLEEP_AFTER) -> bool:
    """An Android channel not seen for `after` seconds (or never)."""
    if not channel.android:
        return False
    age = last_seen_age(channel, now)
    return age is None or age > after


def active_count(channels: Sequence[Channel], now: float) -> int:
    return sum(1 for channel in channels if not asleep(channel, now))


def channel_health(channel: Channel, now: float) -> dict[str, Any]:
    age = last_seen_age(channel, now)
    return {"uuid": channel.uuid, "name": channel.name, "type": channel.type, "address": channel.address,
            "android": channel.android,
            "last_seen": cht_time(channel.last_seen) if channel.last_seen is not None else None,
            "last_seen_age_s": None if age is None else round(age),
            "asleep": asleep(channel, now), "power_level": channel.power_level,
            "power_status": channel.power_status, "power_source": channel.power_source,
            "network_type": channel.network_type}


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def describe(channel: Channel, now: float) -> str:
    kind = channel.type or ("android" if channel.android else "channel")
    text = f"{channel.name!r} ({kind}, {channel.address or 'no address'})"
    age = last_seen_age(channel, now)
    if channel.android:
        text += " never seen" if age is None else f" seen {duration(age)} ago"
        if channel.power_level is not None:
            text += f", battery {channel.power_level}%"
            if channel.power_source:
                text += f" ({channel.power_source})"
        if channel.network_type:
            text += f", {channel.network_type}"
    return text


def judge_channels(channels: Sequence[Channel], now: float) -> Judgement:
    """`check`'s line: a warning for a workspace without channels or with an Android channel asleep."""
    name = "rapidpro_channels"
    if not channels:
        return Judgement(WARNING, name, "the workspace has no channel: RapidPro can neither send nor receive "
                         "SMS; add one (for an Android phone: RapidPro's Android relayer app)")
    sleeping = [c for c in channels if asleep(c, now)]
    if sleeping:
        texts = [describe(c, now) for c in sleeping]
        none_left = " and no channel is active" if active_count(channels, now) == 0 else ""
        return Judgement(WARNING, name, f"{'; '.join(texts)}: not synced for over {duration(ASLEEP_AFTER)}"
                         f"{none_left}: the Android relayer may be asleep while RapidPro queues its "
                         "messages; wake the phone, check its battery, network and the relayer app")
    return Judgement(OK, name, f"{len(channels)} active: " + "; ".join(describe(c, now) for c in channels))

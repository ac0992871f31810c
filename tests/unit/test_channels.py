"""The workspace's channels (transitions/rapidpro/channels.py) from `channels.json` as RapidPro answers it
(the objects asserted in RapidPro's temba/api/v2/tests/test_channels.py at main, and without
`type` as 2020/2023 servers answer): asleep, active, masked, on an explicit clock."""

from __future__ import annotations

from transitions.cht.timestamps import parse_time
from transitions.rapidpro.channels import (
    ASLEEP_AFTER,
    active_count,
    asleep,
    channel_health,
    judge_channels,
    read_channels,
)
from transitions.rapidpro.relay_check import OK, WARNING

SEEN = "2026-01-01T00:00:00.000000Z"
NOW = parse_time(SEEN) or 0.0
FACEBOOK = {"uuid": "f1", "name": "Facebook Channel", "address": "billy_bob", "type": "facebook",
            "country": None, "device": None, "last_seen": None, "created_on": SEEN}
ANDROID = {"uuid": "a1", "name": "Test Channel", "address": "+250785551212", "type": "android",
           "country": "RW", "device": {"name": "Nexus 5X", "network_type": None, "power_level": -1,
                                       "power_source": None, "power_status": None},
           "last_seen": SEEN, "created_on": SEEN}


def test_channels_are_read_as_rapidpro_lists_them():
    facebook, android = read_channels([FACEBOOK, ANDROID, {"no": "uuid"}])
    assert (facebook.android, facebook.last_seen) == (False, None)
    assert (android.android, android.last_seen, android.power_level) == (True, NOW, None)  # -1: unknown
    assert android.address == "+2507******12"  # masked as every phone number the worker shows
    # 2020/2023 servers have no `type`: a device makes it Android.
    (old,) = read_channels([{k: v for k, v in ANDROID.items() if k != "type"}])
    assert old.android and old.type is None


def test_an_android_channel_not_seen_for_half_an_hour_is_asleep():
    facebook, android = read_channels([FACEBOOK, ANDROID])
    assert not asleep(android, NOW + ASLEEP_AFTER) and asleep(android, NOW + ASLEEP_AFTER + 1)
    assert not asleep(facebook, NOW + 10 * ASLEEP_AFTER)  # nothing to judge it by: counts as active
    assert active_count([facebook, android], NOW + 3600) == 1
    health = channel_health(android, NOW + 3600)
    assert (health["asleep"], health["last_seen_age_s"], health["last_seen"]) == (True, 3600,
                                                                                  "2026-01-01T00:00:00.000Z")
    assert "785551" not in str(health)


def test_check_warns_about_a_sleeping_relayer_and_an_empty_workspace():
    channels = read_channels([{**ANDROID, "device": {**ANDROID["device"], "power_level": 15,
                                                     "power_source": "BAT", "network_type": "WIFI"}}])
    fresh = judge_channels(channels, NOW + 60)
    assert (fresh.level, fresh.check) == (OK, "rapidpro_channels")
    assert "'Test Channel' (android, +2507******12) seen 60 s ago, battery 15% (BAT), WIFI" in fresh.detail
    sleeping = judge_channels(channels, NOW + 7200)
    assert sleeping.level == WARNING and "seen 2 h 0 min ago" in sleeping.detail
    assert "asleep" in sleeping.detail and "no channel is active" in sleeping.detail
    assert "785551" not in fresh.detail + sleeping.detail
    empty = judge_channels([], NOW)
    assert empty.level == WARNING and "no channel" in empty.detail

"""The lease against a real CouchDB-protocol server: compare-and-swap, release, and the fences on
a deposed holder's late writes (checkpoint, status tracking's writes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from config.env import parse_couch_url
from tests.support.waiting import eventually
from transitions.lease.rules import LEASE_DOC_ID
from worker.couch.client import CouchServer, Database
from worker.feed.checkpoint import CHECKPOINT_ID, CheckpointFenced, CheckpointStore
from worker.lease.keeper import ACTIVE, STANDBY, Fenced, FencedDatabase, LeaseKeeper
from worker.rapidpro.budget import RateBudget
from worker.rapidpro.client import RapidProClient
from worker.rapidpro.errors import NotActive


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def own_db(medic_db) -> AsyncIterator[Database]:
    server = CouchServer(parse_couch_url(medic_db.url), timeout=5)
    db = server.db(f"{medic_db.name}-rapidpro")
    await db.create()
    yield db
    await server.close()


def keeper(db: Database, name: str, clock: Clock, roles: list[str]) -> LeaseKeeper:
    return LeaseKeeper(db, name, ttl=15, renew_interval=5, request_timeout=5, monotonic=clock,
                       on_active=lambda g: roles.append(f"{name} active {g}"),
                       on_standby=lambda reason: roles.append(f"{name} standby"))


async def test_one_holder_a_take_over_after_the_ttl_and_the_old_one_steps_down(own_db):
    clock, roles = Clock(), []
    a, b = keeper(own_db, "a", clock, roles), keeper(own_db, "b", clock, roles)
    await a.tick()
    await b.tick()
    assert (a.role, b.role, b.holder) == (ACTIVE, STANDBY, "a")
    assert a.may_act() and not b.may_act()

    clock.now += 14.9  # a's last renewal is too old for it to act, yet b may not take over
    assert not a.may_act()
    await b.tick()
    assert b.role == STANDBY
    clock.now += 0.2
    await b.tick()  # seen unchanged for the whole TTL: taken over, generation 2
    assert (b.role, b.generation) == (ACTIVE, 2)
    await a.tick()  # a's renewal finds b's lease: a steps down
    assert a.role == STANDBY and not a.may_act()
    assert roles == ["a active 1", "b active 2", "a standby"]


async def test_a_release_lets_a_standby_take_over_at_once(own_db):
    clock, roles = Clock(), []
    a, b = keeper(own_db, "a", clock, roles), keeper(own_db, "b", clock, roles)
    await a.tick()
    await b.tick()
    assert await a.release(5) is True
    await b.tick()
    assert (b.role, b.generation) == (ACTIVE, 2)
    doc = await own_db.get(LEASE_DOC_ID)
    assert (doc["holder"], doc["generation"]) == ("b", 2)


async def test_a_deposed_holders_late_checkpoint_is_refused(own_db):
    old, new = CheckpointStore(own_db), CheckpointStore(own_db)
    old.generation = 1
    await old.save("10-a")
    new.generation = 2
    assert await new.load() == "10-a"
    await new.save("10-a")  # the new holder claims the checkpoint at take-over
    with pytest.raises(CheckpointFenced):
        await old.save("12-b")  # the old holder's late write
    await new.save("15-c")
    assert (await own_db.get(CHECKPOINT_ID))["seq"] == "15-c"


async def test_a_checkpoint_of_an_older_version_is_read_once_then_kept_as_a_doc(own_db):
    # Before the checkpoint was a regular doc it was a `_local` one (never copied between the
    # copies of a clustered CouchDB): its seq is where the feed resumes after the upgrade.
    await own_db.put_local(CHECKPOINT_ID, {"seq": "7-old"})
    store = CheckpointStore(own_db)
    store.generation = 1
    assert await store.load() == "7-old"
    await store.save("8-new")
    assert (await own_db.get(CHECKPOINT_ID))["seq"] == "8-new"
    assert await CheckpointStore(own_db).load() == "8-new"


async def test_writes_and_rapidpro_calls_stop_with_the_lease(own_db, medic_db):
    clock, roles = Clock(), []
    a = keeper(own_db, "a", clock, roles)
    await a.tick()
    fenced = FencedDatabase(own_db.server, own_db.name, a.may_act)
    await fenced.put({"_id": "while-active"})
    client = RapidProClient(RateBudget(3600), timeout=2, may_call=a.may_act)
    clock.now += 15  # not renewed in time
    with pytest.raises(Fenced):
        await fenced.put({"_id": "too-late"})
    with pytest.raises(Fenced):
        await fenced.bulk([{"_id": "too-late"}])
    with pytest.raises(NotActive):  # refused before anything leaves
        await client.send_broadcast("http://127.0.0.1:9", "token", "tel:+254700000001", "text")
    await client.close()
    assert await own_db.get_or_none("too-late") is None


async def test_a_deposed_holder_can_write_through_no_method_not_even_delete(own_db):
    clock, roles = Clock(), []
    a = keeper(own_db, "a", clock, roles)
    await a.tick()
    fenced = FencedDatabase(own_db.server, own_db.name, a.may_act)
    rev = await fenced.put({"_id": "kept", "n": 1})
    local_rev = await fenced.put_local("kept-local", {"n": 1})
    clock.now += 15  # not renewed in time: deposed
    attempts = {
        "delete": lambda: fenced.delete("kept", rev),
        "put": lambda: fenced.put({"_id": "kept", "_rev": rev, "n": 2}),
        "write": lambda: fenced.write({"_id": "kept", "_rev": rev, "n": 2}),
        "bulk": lambda: fenced.bulk([{"_id": "kept", "_rev": rev, "n": 2}]),
        "bulk_docs": lambda: fenced.bulk_docs([{"_id": "kept", "_rev": rev, "_deleted": True}]),
        "put_local": lambda: fenced.put_local("kept-local", {"_rev": local_rev, "n": 2}),
        "create": lambda: fenced.create(),
    }
    for _name, attempt in attempts.items():  # each refused before anything leaves
        with pytest.raises(Fenced):
            await attempt()
    doc = await own_db.get("kept")
    assert doc["_rev"] == rev and doc["n"] == 1
    assert (await own_db.get_local("kept-local"))["n"] == 1


async def test_the_expiry_timer_steps_down_without_waiting_for_a_renewal(own_db):
    roles: list[str] = []
    a = LeaseKeeper(own_db, "a", ttl=1.0, renew_interval=0.3, request_timeout=1,
                    on_active=lambda g: roles.append("active"), on_standby=lambda r: roles.append("standby"))
    await a.tick()
    watch = asyncio.create_task(a._watch_expiry())
    try:
        # No renewal comes (the loop is not running): the timer alone ends the role.
        await eventually(lambda: a.role == STANDBY, timeout=5)
    finally:
        watch.cancel()
    assert roles == ["active", "standby"]


"""The lease's pure rules (transitions/lease/rules.py) and the configuration rule that goes with them."""

from __future__ import annotations

import pytest

from config.env import ConfigError, load_config
from transitions.lease.rules import (
    Decision,
    Lease,
    act_until,
    decide,
    lease_doc,
    lease_from_doc,
    pick,
    released_doc,
)

HELD = Lease(holder="b", generation=4, expires_at=100.0, rev="7-x")


def test_no_lease_or_a_released_one_is_taken_at_once():
    assert decide(None, "a", seen_for=0, ttl=15) is Decision.TAKE
    released = Lease(holder=None, generation=4, expires_at=0, rev="8-y")
    assert decide(released, "a", seen_for=0, ttl=15) is Decision.TAKE


def test_the_holder_renews_its_own_lease():
    assert decide(HELD, "b", seen_for=100, ttl=15, same_process=True) is Decision.RENEW


def test_our_instance_id_written_by_another_process_is_waited_out_like_anyones():
    # A restart (or a second process given the same INSTANCE_ID): the writer may still act.
    assert decide(HELD, "b", seen_for=1, ttl=15) is Decision.STANDBY
    assert decide(HELD, "b", seen_for=15, ttl=15) is Decision.TAKE
    assert decide(HELD, "b", seen_for=1, ttl=15, holder_dead=True) is Decision.TAKE


def test_another_holders_lease_is_taken_only_once_seen_unchanged_for_the_ttl():
    assert decide(HELD, "a", seen_for=14.9, ttl=15) is Decision.STANDBY
    assert decide(HELD, "a", seen_for=15, ttl=15) is Decision.TAKE


def test_a_dead_holder_on_this_host_need_not_be_waited_for():
    assert decide(HELD, "a", seen_for=0, ttl=15, holder_dead=True) is Decision.TAKE


def test_a_take_over_bumps_the_generation_a_renewal_keeps_it():
    taken = lease_doc(HELD, "a", now=1000.0, ttl=15, take=True)
    renewed = lease_doc(HELD, "b", now=1000.0, ttl=15, take=False)
    assert (taken["generation"], taken["holder"], taken["_rev"]) == (5, "a", "7-x")
    assert (renewed["generation"], renewed["holder"]) == (4, "b")
    assert taken["expires_at_epoch"] == 1015.0
    assert lease_doc(None, "a", now=0, ttl=15, take=True)["generation"] == 1
    assert "_rev" not in lease_doc(None, "a", now=0, ttl=15, take=True)


def test_a_release_keeps_the_generation_so_the_next_holder_bumps_it():
    doc = released_doc(HELD, now=50.0)
    lease = lease_from_doc({**doc, "_rev": "8-z"})
    assert lease is not None and lease.released and lease.generation == 4
    assert decide(lease, "a", seen_for=0, ttl=15) is Decision.TAKE
    assert lease_doc(lease, "a", now=60, ttl=15, take=True)["generation"] == 5


def test_the_holder_stops_before_any_standby_may_take_over():
    # The standby first sees a renewal after the holder sent it, and waits the whole TTL from then.
    sent_at, seen_by_standby_at, ttl = 100.0, 100.0, 15.0
    assert act_until(sent_at, ttl) < seen_by_standby_at + ttl
    assert act_until(sent_at, ttl) > sent_at + ttl / 2  # room for two renewals first


@pytest.mark.parametrize("doc", [{"holder": 3}, {"holder": "x", "generation": "2"}, {"_rev": 5}, {}])
def test_a_malformed_lease_doc_is_read_without_crashing(doc):
    lease = lease_from_doc(doc)
    assert lease is not None and isinstance(lease.generation, int)
    assert lease_from_doc(None) is None


BASE = {"COUCH_URL": "http://admin:pass@127.0.0.1:5984/medic"}


def test_lease_defaults_and_the_renew_interval_rule():
    config = load_config(BASE)
    assert (config.lease_ttl, config.lease_renew_interval, config.instance_id) == (15.0, 5.0, "")
    small = load_config({**BASE, "LEASE_TTL": "3"})
    assert small.lease_renew_interval == 1.0
    with pytest.raises(ConfigError, match="LEASE_RENEW_INTERVAL"):
        load_config({**BASE, "LEASE_TTL": "3", "LEASE_RENEW_INTERVAL": "2"})
    with pytest.raises(ConfigError, match="LEASE_TTL"):
        load_config({**BASE, "LEASE_TTL": "0.5"})
    with pytest.raises(ConfigError, match="INSTANCE_ID"):
        load_config({**BASE, "INSTANCE_ID": "a (b)"})
    assert load_config({**BASE, "INSTANCE_ID": "worker-a"}).instance_id == "worker-a"


# ---------------------------------------------------------------------------- conflicting leaves
def lease_at(rev: str, generation: int, process: str, holder: str = "w") -> Lease:
    return Lease(holder=holder, generation=generation, expires_at=0.0, rev=rev, process=process)


def test_one_lease_leaf_is_the_lease():
    only = lease_at("3-a", 2, "p1")
    assert pick([only], process="p2", active=False, my_rev=None) == (only, [])
    assert pick([], process="p2", active=False, my_rev=None) == (None, [])


def test_a_holder_keeps_its_confirmed_chain_and_deletes_the_rest():
    mine, other = lease_at("4-a", 2, "me"), lease_at("5-b", 3, "them")
    assert pick([other, mine], process="me", active=True, my_rev="4-a") == (mine, [other])


def test_a_holder_whose_revision_was_built_on_follows_the_others():
    newer, stale_mine = lease_at("5-b", 3, "them"), lease_at("3-z", 2, "me")
    lease, losers = pick([newer, stale_mine], process="me", active=True, my_rev="4-a")
    assert lease is newer and losers == [stale_mine]


def test_a_standby_never_builds_on_its_own_unconfirmed_leaf():
    mine, theirs = lease_at("2-z", 2, "me"), lease_at("2-a", 2, "them")
    assert pick([mine, theirs], process="me", active=False, my_rev=None) == (theirs, [mine])
    # Among others' leaves: the one renewed most, then the newest generation, then the rev.
    renewed, fresh_take = lease_at("6-a", 2, "x"), lease_at("3-b", 3, "y")
    assert pick([fresh_take, renewed], process="me", active=False, my_rev=None) == (renewed, [])
    # Nothing but its own leaves: the deepest is the lease (no one else wrote), the rest go.
    deep, shallow = lease_at("4-a", 2, "me"), lease_at("3-b", 2, "me")
    assert pick([shallow, deep], process="me", active=False, my_rev=None) == (deep, [shallow])

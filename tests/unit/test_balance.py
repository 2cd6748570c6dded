"""fwcluster.core.hashbuckets: the flow hash model, bucket vhids, advskew rotation,
owned sets. The model of the kernel's hash is checked against the kernel
flow by flow in tests/lab/test_balance_mechanism.py; here it is pinned."""
from collections import Counter
from pathlib import Path

import pytest

from fwcluster import configfile
from fwcluster.core import hashbuckets, config

ROOT = Path(__file__).resolve().parents[2]
MEMBERS3 = ["fw1", "fw2", "fw3"]


# --- hash ------------------------------------------------------------------------

def test_jhash_of_nothing_is_the_initial_value():
    # lookup3: no bytes -> no final mix, c = 0xdeadbeef + length + seed
    assert hashbuckets.jhash(b"", 0) == 0xDEADBEEF
    assert hashbuckets.jhash(b"", 1) == 0xDEADBEF0


def test_flow_bucket_values_the_kernel_agreed_with():
    # These came out of nft's jhash in the namespace test (30 buckets).
    got = [hashbuckets.flow_bucket(f"192.0.2.{i}", "198.51.100.100", 30) for i in range(101, 111)]
    assert got == [29, 6, 4, 3, 17, 16, 9, 7, 10, 1]


def test_flow_bucket_ipv6_and_range():
    assert hashbuckets.flow_bucket("2001:db8:1::100", "2001:db8:2::100", 30) == 20
    for i in range(1, 255):
        assert 0 <= hashbuckets.flow_bucket(f"192.0.2.{i}", "198.51.100.100", 7) < 7


def test_flow_bucket_is_keyed_on_the_original_tuple():
    # Both directions of a flow use the conntrack original tuple, so a
    # reply (even NATed) has the same key as the request by construction;
    # a hash of the reply's own headers would differ.
    fwd = hashbuckets.flow_bucket("192.0.2.101", "198.51.100.100", 64)
    assert fwd == hashbuckets.flow_bucket("192.0.2.101", "198.51.100.100", 64)
    assert any(hashbuckets.flow_bucket(f"192.0.2.{i}", "198.51.100.100", 64)
               != hashbuckets.flow_bucket("198.51.100.100", f"192.0.2.{i}", 64) for i in range(1, 20))


def test_flow_bucket_rejects_mixed_families():
    with pytest.raises(ValueError, match="one address family"):
        hashbuckets.flow_bucket("192.0.2.1", "2001:db8::1", 8)


def test_hash_spreads_many_flows_evenly():
    addrs = [f"192.0.2.{i}" for i in range(1, 255)] + [f"203.0.113.{i}" for i in range(1, 47)]
    owner = hashbuckets.owners(30, MEMBERS3)
    count = Counter(owner[hashbuckets.flow_bucket(a, "198.51.100.100", 30)] for a in addrs)
    assert sum(count.values()) == 300
    assert all(0.25 <= n / 300 <= 0.41 for n in count.values()), count


# --- multicast MAC ---------------------------------------------------------------

def test_vip_mac_is_multicast_and_per_vhid():
    assert hashbuckets.vip_mac(1) == "01:00:5e:00:01:01"
    assert hashbuckets.vip_mac(255) == "01:00:5e:00:01:ff"
    assert int(hashbuckets.vip_mac(7).split(":")[0], 16) & 1  # group bit
    with pytest.raises(ValueError):
        hashbuckets.vip_mac(0)


# --- buckets and elections ---------------------------------------------------------

def test_bucket_vhids_count_down_and_skip_vip_vhids():
    assert hashbuckets.bucket_vhids(4, [1, 2, 254]) == (255, 253, 252, 251)
    assert hashbuckets.bucket_vhids(0, [1]) == ()
    with pytest.raises(ValueError, match="free vhids"):
        hashbuckets.bucket_vhids(253, [1, 2, 3])


def test_preference_is_a_permutation_with_rotating_first_choice():
    for n in (1, 2, 3, 4, 5):
        for b in range(40):
            p = hashbuckets.preference(b, n)
            assert sorted(p) == list(range(n))
            assert p[0] == b % n


@pytest.mark.parametrize("n,buckets", [(2, 10), (3, 30), (4, 24), (3, 6)])
def test_ownership_is_even_and_a_lost_members_share_is_split_evenly(n, buckets):
    members = [f"fw{k}" for k in range(1, n + 1)]
    full = hashbuckets.spread(hashbuckets.owners(buckets, members), members)
    assert set(full.values()) == {buckets // n}
    for lost in members:
        alive = [m for m in members if m != lost]
        after = hashbuckets.spread(hashbuckets.owners(buckets, members, alive), members)
        assert after[lost] == 0
        assert sum(after.values()) == buckets
        assert max(after[m] for m in alive) - min(after[m] for m in alive) <= 1, after
        # Survivors keep what they had: only the lost member's buckets move.
        before = hashbuckets.owners(buckets, members)
        moved = {b for b, o in hashbuckets.owners(buckets, members, alive).items() if before[b] != o}
        assert moved == {b for b, o in before.items() if o == lost}


def test_skew_ladder_uses_distinct_configured_skews():
    assert hashbuckets.skew_ladder([100, 0, 150], 1) == (0, 100, 150)


def test_skew_ladder_steps_when_skews_repeat():
    assert hashbuckets.skew_ladder([0, 0, 0], 1) == (0, 50, 100)
    # advbase 0: the skew is the advert interval, so never 0
    assert hashbuckets.skew_ladder([10, 10, 10], 0) == (10, 20, 30)
    assert hashbuckets.skew_ladder([0, 0], 0) == (1, 2)
    ladder = hashbuckets.skew_ladder([200] * 8, 1)
    assert len(set(ladder)) == 8 and max(ladder) <= 254


def test_elections_make_the_preferred_member_lowest_skew():
    members, skews = MEMBERS3, [0, 100, 150]
    plans = {m: hashbuckets.elections(6, members, skews, [1, 2, 3], 1, m) for m in members}
    for b in range(6):
        by_member = {m: plans[m][b] for m in members}
        assert len({e.vhid for e in by_member.values()}) == 1
        winner = min(members, key=lambda m: by_member[m].advskew)
        assert winner == by_member["fw1"].preferred == members[b % 3]
        assert len({e.advskew for e in by_member.values()}) == 3
    assert {e.vhid for e in plans["fw1"]}.isdisjoint({1, 2, 3})


def test_elections_for_config():
    cfg = configfile.load(ROOT / "docs" / "examples" / "cluster.toml", "fw1")
    assert hashbuckets.elections_for(cfg, "fw1") == ()
    import dataclasses
    aa = dataclasses.replace(cfg, balance=config.Balance("active-active", 4))
    plan = hashbuckets.elections_for(aa, "fw2")
    assert [e.bucket for e in plan] == [0, 1, 2, 3]
    assert [e.vhid for e in plan] == [255, 254, 253, 252]
    assert [e.preferred for e in plan] == ["fw1", "fw2", "fw1", "fw2"]
    assert [e.advskew for e in plan] == [100, 0, 100, 0]


def test_owned_buckets_from_carp_states():
    plan = hashbuckets.elections(4, MEMBERS3, [0, 100, 150], [1], 1, "fw1")
    states = {plan[0].vhid: "MASTER", plan[1].vhid: "BACKUP", plan[3].vhid: "MASTER", 1: "MASTER"}
    assert hashbuckets.owned_buckets(states, plan) == {0, 3}
    assert hashbuckets.owned_buckets({}, plan) == frozenset()

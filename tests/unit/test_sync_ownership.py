"""Who owns a flow (syncd/core/ownership.py) and what each sync decision
does with it (pure): the member that forwards a flow speaks for it;
handovers move ownership at once; a copy that runs out where the flow is
not forwarded is removed there only; every change log has a bound."""
from __future__ import annotations

from pathlib import Path

import pytest

from fwcluster.core import hashbuckets
from syncd.core import digest, ownership, wire
from syncd.core.applyplan import REPLICA_GRACE, replica
from syncd.core.digest import EntrySet, record_key
from syncd.core.entry import ICMP, OP_DELETE, OP_UPSERT, UDP, Entry
from syncd.core.ownership import (BALANCED, EVERYTHING, GROUPS, NOTHING, ORIGIN, Forwarding,
                                  forwards, from_roles, gained, group_indexes, handed_over,
                                  key_bucket, yielded)
from syncd.core.protocol import Apply, Claim, Send, Timing, Yield
from tests.unit.test_sync_bulk import PacedNet
from tests.unit.test_sync_protocol import MEMBERS, Net, entry


def flow(i: int, proto: int = UDP, timeout: int = 120, src: str = "192.0.2.100") -> Entry:
    return Entry(4, proto, 0, src, "198.51.100.100", 4000 + i, 53,
                 "198.51.100.100", src, 53, 4000 + i, status=14, timeout=timeout)


def key(e: Entry) -> bytes:
    return record_key(wire.encode_record(OP_UPSERT, e))


class OwnNet(Net):
    """Net whose members carry out Claim (send what they now forward) and
    Apply.keep (create only what is missing), as the daemon does."""

    def start(self, name, epoch):
        super().start(name, epoch)
        node, drain = self.nodes[name], self.nodes[name].drain

        def own_drain():
            out = []
            for a in drain():
                if isinstance(a, Claim):
                    claimed = node.claimable(list(self.tables[name].values()))
                    node.local([(OP_UPSERT, e) for e in claimed], self.now)
                    node.flush(self.now)
                elif isinstance(a, Apply) and a.keep:
                    for op, e in a.records:
                        assert op == OP_UPSERT
                        self.tables[name].setdefault(e.key, e)
                else:
                    out.append(a)
            return out
        node.drain = own_drain

    def forwarding(self, **fwd):
        for name, f in fwd.items():
            self.nodes[name].set_forwarding(f, self.now)
        self.pump()


def standby_pair() -> OwnNet:
    """fw1 master, fw2 backup, in sync."""
    net = OwnNet(MEMBERS[:2])
    net.run(0.2)
    net.forwarding(fw1=EVERYTHING, fw2=NOTHING)
    return net


# --- the rule ---------------------------------------------------------------------

def test_the_bucket_of_a_key_is_the_kernels_flow_hash():
    for i, (src, dst) in enumerate([("192.0.2.1", "198.51.100.7"), ("203.0.113.9", "192.0.2.200"),
                                    ("2001:db8::1", "2001:db8:1::2")]):
        e = Entry(6 if ":" in src else 4, UDP, 0, src, dst, 1000 + i, 53, dst, src, 53, 1000 + i)
        for n in (1, 4, 7, 64):
            assert key_bucket(key(e), n) == hashbuckets.flow_bucket(src, dst, n)


def test_forwards_by_mode():
    e = flow(1)
    b = key_bucket(key(e), 8)
    assert forwards(key(e), Forwarding()) is None                       # origin: nobody knows
    assert forwards(key(e), EVERYTHING) is True and forwards(key(e), NOTHING) is False
    assert forwards(key(e), Forwarding(BALANCED, 8, frozenset({b}))) is True
    assert forwards(key(e), Forwarding(BALANCED, 8, frozenset(range(8)) - {b})) is False


def test_forwards_by_the_group_in_the_mark():
    # several failover groups: the ruleset's group bits (24-27) of the mark
    # name the flow's group; no bits: the first group's
    plain, second = flow(1), flow(2)._replace(mark=0x0100_0042)
    other_bits = flow(3)._replace(mark=0xf0ff_ffff)
    mine = Forwarding(GROUPS, 2, frozenset({1}))
    for e, want in ((plain, False), (second, True), (other_bits, False)):
        rec = wire.encode_record(OP_UPSERT, e)
        assert forwards(record_key(rec), mine, rec) is want
        assert forwards(record_key(rec), Forwarding(GROUPS, 2, frozenset({0})), rec) is not want


def test_group_roles_make_the_forwarding_value():
    vg = {1: 0, 2: 0, 3: 1, 4: 1}
    assert from_roles({1: "MASTER", 2: "MASTER", 3: "BACKUP", 4: "BACKUP"}, {}, 0, vg) == \
        Forwarding(GROUPS, 2, frozenset({0}))
    both = from_roles({1: "MASTER", 2: "MASTER", 3: "MASTER", 4: "BACKUP"}, {}, 0, vg)
    assert both == Forwarding(GROUPS, 2, frozenset({0, 1}))
    assert from_roles({1: "BACKUP", 3: "BACKUP"}, {}, 0, vg) == NOTHING
    assert gained(Forwarding(GROUPS, 2, frozenset({0})), both)
    assert not gained(both, Forwarding(GROUPS, 2, frozenset({1})))


def test_group_indexes_only_with_several_groups():
    from fwcluster import configfile
    examples = Path(__file__).resolve().parents[2] / "docs" / "examples"
    assert group_indexes(configfile.load(examples / "cluster.toml", "fw1")) == {}
    split = configfile.load(examples / "cluster-split.toml", "fw1")
    assert group_indexes(split) == {1: 0, 2: 0, 3: 1, 4: 1}


def test_roles_make_the_forwarding_value_and_what_is_gained():
    assert from_roles({}, {}, 0).mode == ORIGIN
    assert from_roles({1: "BACKUP"}, {}, 0) == NOTHING
    assert from_roles({1: "MASTER", 2: "MASTER"}, {}, 0) == EVERYTHING
    aa = from_roles({1: "MASTER", 250: "MASTER", 251: "BACKUP"}, {250: 0, 251: 1}, 2)
    assert aa == Forwarding(BALANCED, 2, frozenset({0}))
    assert gained(NOTHING, EVERYTHING) and gained(Forwarding(), EVERYTHING)
    assert not gained(EVERYTHING, NOTHING) and not gained(EVERYTHING, EVERYTHING)
    assert gained(aa, Forwarding(BALANCED, 2, frozenset({0, 1})))
    assert not gained(Forwarding(BALANCED, 2, frozenset({0, 1})), aa)


def test_what_is_yielded_and_which_flows_were_handed_over():
    """The other side of gained(): a value that stops forwarding flows the
    old one did. Not from or to ORIGIN (nobody knew whose they were)."""
    assert yielded(EVERYTHING, NOTHING) and not yielded(NOTHING, EVERYTHING)
    assert not yielded(EVERYTHING, EVERYTHING) and not yielded(NOTHING, NOTHING)
    assert not yielded(Forwarding(), NOTHING) and not yielded(EVERYTHING, Forwarding())
    two = Forwarding(GROUPS, 2, frozenset({0, 1}))
    first = Forwarding(GROUPS, 2, frozenset({0}))
    assert yielded(two, first) and not yielded(first, two)
    rec = wire.encode_record(OP_UPSERT, flow(1))          # no group bits: the first group
    assert handed_over(record_key(rec), rec, EVERYTHING, NOTHING)
    assert not handed_over(record_key(rec), rec, two, first)       # its group stays here
    assert handed_over(record_key(rec), rec, first, Forwarding(GROUPS, 2, frozenset({1})))


def test_a_member_that_stops_forwarding_is_told_what_it_forwarded():
    """set_forwarding's Yield carries the value before the change, once per
    change that gives flows up (the shell's handover dump reads it)."""
    net = standby_pair()
    fw1 = net.nodes["fw1"]
    fw1.drain()
    fw1.set_forwarding(NOTHING, net.now)                   # maintenance on: fw1 yields
    assert [a for a in fw1.drain() if isinstance(a, Yield)] == [Yield(EVERYTHING)]
    fw1.set_forwarding(NOTHING, net.now)
    assert not [a for a in fw1.drain() if isinstance(a, Yield)]
    assert fw1.owner_counters["yields"] == 1


# --- case 1: a planned handover ---------------------------------------------------

def test_a_handover_moves_ownership_at_once_and_the_old_masters_expiry_deletes_nothing():
    """fw1 forwards a UDP flow and an ICMP flow; a maintenance handover
    makes fw2 master while fw1 stays up as backup. Without any event from
    the flows, fw2 claims them (its refresh keeps them alive from now on)
    and fw1 lets go; when fw1's copies run out, their DESTROYs stay on
    fw1, and fw2 keeps forwarding."""
    net = standby_pair()
    fw1, fw2 = net.nodes["fw1"], net.nodes["fw2"]
    udp, icmp = flow(1), flow(2, ICMP, 30)
    net.local("fw1", [(OP_UPSERT, udp), (OP_UPSERT, icmp)])
    assert net.tables["fw2"] == net.tables["fw1"]
    assert fw2.refreshable([udp, icmp], net.now, 60) == []       # fw1's: fw2 leaves them

    net.forwarding(fw2=EVERYTHING, fw1=NOTHING)                  # fwctl maintenance on (fw1)
    net.run(0.2)
    assert fw2.owner_counters["claims"] == 1
    assert key(udp) in fw2.own and key(icmp) in fw2.own
    assert key(udp) not in fw1.own and key(icmp) not in fw1.own
    assert fw2.refreshable([udp, icmp], net.now + 100, 60) == [udp, icmp]
    assert fw1.refreshable([udp, icmp], net.now + 100, 60) == []

    for e in (icmp, udp):                                        # fw1's copies time out
        net.local("fw1", [(OP_DELETE, e)])
    net.run(0.2)
    assert set(net.tables["fw2"]) == {udp.key, icmp.key}
    assert fw1.owner_counters["deletes_withheld"] == 2


def test_the_old_masters_last_events_during_the_handover_update_but_never_delete():
    """What the old master sent while the vips moved is its last word on
    those flows: a new flow is created, an update applied (newer than the
    new master's copy, which no packet may have touched yet: an
    ESTABLISHED after a SYN_SENT copy), but its delete is not (the flow lives here)."""
    net = standby_pair()
    kept = flow(1)
    net.local("fw1", [(OP_UPSERT, kept)])
    net.forwarding(fw2=EVERYTHING)                 # fw2 master; fw1 does not know yet
    late, stale = flow(2), kept._replace(timeout=5, mark=7)
    net.local("fw1", [(OP_UPSERT, late), (OP_UPSERT, stale), (OP_DELETE, kept)])
    net.run(0.2)
    assert net.tables["fw2"][late.key] == late                   # missing: created
    assert net.tables["fw2"][kept.key] == stale                  # ours: updated, not deleted
    assert net.nodes["fw2"].owner_counters["ours_kept"] == 1


# --- case 2: steady state ---------------------------------------------------------

def test_a_backups_expiring_copy_never_deletes_the_masters_entry():
    """A 30 s ICMP flow: the backup's copy can run out just before the
    refresh that keeps it. Its DESTROY is the backup's business only: the
    master's entry stays, and the backup still counts the flow as the
    master's (no digest difference, no repair)."""
    net = standby_pair()
    fw2 = net.nodes["fw2"]
    ping = flow(1, ICMP, 30)
    net.local("fw1", [(OP_UPSERT, ping)])
    net.local("fw2", [(OP_DELETE, ping)])
    net.run(0.2)
    assert ping.key in net.tables["fw1"]
    assert fw2.owner_counters["deletes_withheld"] == 1
    assert key(ping) in fw2.peers["fw1"].view


def test_a_non_tcp_replica_outlives_the_refresh_that_keeps_it():
    """The owner re-sends a 30 s flow every 30 s, late by up to a
    housekeeping tick and pacing, with a timeout truncated to whole
    seconds: the copy must still run when the refresh comes."""
    refresh_interval, tick, truncation = 30.0, 0.25, 1.0
    for e in (flow(1, ICMP, 30), flow(2, UDP, 30)):
        assert replica(e).timeout >= e.timeout + truncation + tick
        assert replica(e).timeout - e.timeout == REPLICA_GRACE >= refresh_interval
    tcp = entry(1)
    assert replica(tcp).timeout == tcp.timeout           # TCP: its events keep it


# --- case 5: bounded memory whatever peers do -------------------------------------

def test_a_bulk_to_a_peer_that_goes_down_ends_and_releases_its_change_log():
    net = PacedNet(MEMBERS[:2])
    net.run(0.2)
    fw1 = net.nodes["fw1"]
    fw1.bulk_begin("fw2", net.now)
    assert fw1.own.touched is not None
    net.down.add("fw2")
    net.run(fw1.t.peer_timeout + 0.5)
    assert fw1.peers["fw2"].state == "down"
    assert fw1.peers["fw2"].bulk_mark is None and fw1.own.touched is None
    net.local("fw1", [(OP_UPSERT, flow(i)) for i in range(50)])
    assert fw1.own.touched is None                      # nothing is logged any more
    assert fw1.bulk_add("fw2", [flow(99)], net.now) == 0


def test_the_change_log_has_a_bound_and_a_watcher_past_it_is_told():
    s = EntrySet(watch_limit=8)
    mark = s.watch()
    recs = [wire.encode_record(OP_UPSERT, flow(i)) for i in range(9)]
    for r in recs[:8]:
        s.put(r)
    assert s.valid(mark) and len(s.touched) == 8
    s.put(recs[8])                                      # the 9th key: past the bound
    assert not s.valid(mark) and len(s.touched) <= 8
    assert s.changed_since(record_key(wire.encode_record(OP_UPSERT, flow(50))), mark)
    again = s.watch()
    assert s.valid(again) and not s.changed_since(record_key(recs[0]), again)


def test_a_bulk_whose_change_log_overflowed_starts_over():
    net = PacedNet(MEMBERS[:2])
    net.run(0.2)
    fw1 = net.nodes["fw1"]
    fw1.own.watch_limit = 16
    net.paced = True
    fw1.bulk_begin("fw2", net.now)
    net.local("fw1", [(OP_UPSERT, flow(i)) for i in range(17)])
    assert fw1.bulk_add("fw2", [flow(100)], net.now) == 0
    assert fw1.peers["fw2"].bulk_mark is None and "fw2" in fw1.dumps_wanted
    assert fw1.owner_counters["bulks_restarted"] == 1


def test_an_anti_entropy_round_whose_change_log_overflowed_is_abandoned():
    net = Net(MEMBERS[:2])
    net.run(0.2)
    fw1 = net.nodes["fw1"]
    fw1.own.watch_limit = 16
    fw1.anti_entropy_begin(net.now)
    net.local("fw1", [(OP_UPSERT, flow(i)) for i in range(17)])
    digests = fw1.peers["fw2"].counters["digests_sent"]
    assert fw1.anti_entropy_finish(net.now) == 0
    assert fw1.peers["fw2"].counters["digests_sent"] == digests     # no digest from a void round
    assert fw1.owner_counters["rounds_abandoned"] == 1 and fw1.own.touched is None


def test_repair_contents_past_their_bound_delete_nothing():
    """rx.seen holds a peer's repair contents until REPAIR_DONE; past
    max_seen it is dropped, and that REPAIR_DONE deletes nothing (it
    cannot tell what was sent)."""
    net = Net(MEMBERS[:2])
    for name in net.nodes:
        net.nodes[name].t = Timing(max_seen=4)
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, flow(i)) for i in range(10)])
    fw2 = net.nodes["fw2"]
    fw2.peers["fw1"].view.clear()                  # make every range differ
    fw2.peers["fw1"].view.put(wire.encode_record(OP_UPSERT, flow(77)))
    net.nodes["fw1"].anti_entropy(list(net.tables["fw1"].values()), net.now)
    net.pump()
    assert fw2.peers["fw1"].counters["stale_deleted"] == 0
    assert not fw2.peers["fw1"].rx.seen and not fw2.peers["fw1"].rx.seen_full


# --- case 9: three members, a paced bulk ------------------------------------------

def test_a_paced_bulk_never_resends_an_entry_its_origin_deleted_meanwhile():
    """fw1 serves fw2 a paced bulk while fw3 deletes one of its own flows:
    fw1's dump, read before, still holds a copy; sent (as hearsay) it
    would come back on fw2 for good."""
    net = PacedNet(MEMBERS)
    net.run(0.3)
    gone, stays = flow(1, src="203.0.113.5"), flow(2, src="203.0.113.5")
    net.local("fw3", [(OP_UPSERT, gone), (OP_UPSERT, stays)])
    fw1 = net.nodes["fw1"]
    dump = list(net.tables["fw1"].values())
    assert {e.key for e in dump} == {gone.key, stays.key}
    net.paced = True
    fw1.bulk_begin("fw2", net.now)
    net.local("fw3", [(OP_DELETE, gone)])
    assert gone.key not in net.tables["fw2"]
    fw1.bulk_add("fw2", dump, net.now)
    sent = [r for a in fw1.actions if isinstance(a, Send)
            for r in wire.decode(net.nodes["fw2"].key, a.data).records]
    assert [e.key for _op, e in sent] == [stays.key]


@pytest.mark.parametrize("mode", ["standby", "balanced", "groups"])
def test_refresh_and_adoption_follow_forwarding(mode):
    """Whatever the views say: a member refreshes and adopts exactly the
    flows it forwards."""
    net = OwnNet(MEMBERS[:2])
    net.run(0.2)
    flows = [flow(i, src=f"192.0.2.{i + 1}") for i in range(16)]
    if mode == "standby":
        mine = flows
        net.forwarding(fw1=EVERYTHING, fw2=NOTHING)
    elif mode == "groups":
        # a static split: fw1 master of the first group, fw2 of the second
        # (its flows marked by the ruleset)
        flows = [e._replace(mark=0x0100_0000) if i % 2 else e
                 for i, e in enumerate(flows)]
        mine = flows[::2]
        net.forwarding(fw1=Forwarding(GROUPS, 2, frozenset({0})),
                       fw2=Forwarding(GROUPS, 2, frozenset({1})))
    else:
        half = frozenset({0, 1})
        mine = [e for e in flows if key_bucket(key(e), 4) in half]
        assert 0 < len(mine) < len(flows)
        net.forwarding(fw1=Forwarding(BALANCED, 4, half),
                       fw2=Forwarding(BALANCED, 4, frozenset({2, 3})))
    fw1 = net.nodes["fw1"]
    net.local("fw2", [(OP_UPSERT, e) for e in flows])      # fw2 told them all as its own
    assert fw1.claimable(flows) == mine
    fw1.anti_entropy(flows, net.now)
    assert {k for k, _r in fw1.own.items()} == {key(e) for e in mine}


def test_a_flow_made_and_ended_in_one_batch_ends_deleted_where_the_old_master_has_not_heard():
    """The new master's batch creates a flow and deletes it; the old master,
    not yet told it lost the role, applies both in their order. Split into
    a keep-apply and a plain one, the delete went first and the create
    stayed for good (seed 397 of the handover simulation)."""
    net = standby_pair()
    net.forwarding(fw2=EVERYTHING)                 # fw2 master; fw1 does not know yet
    e = flow(5)
    net.local("fw2", [(OP_UPSERT, e), (OP_DELETE, e)])
    net.run(0.2)
    assert e.key not in net.tables["fw1"]

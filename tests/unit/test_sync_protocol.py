"""syncd reliable protocol (pure): loss, reorder, duplicates, replay, resync.

A simulated network carries the Send actions between Sync instances; time is
a plain number advanced by the test, randomness is seeded.
"""
import random

import pytest

from syncd.core import keys, wire
from syncd.core.entry import OP_DELETE, OP_UPSERT, Entry
from syncd.core.protocol import Apply, Dump, InSync, Send, Sync, Timing

KEY = keys.sync_key(b"secret", "edge")
MEMBERS = [("fw1", "203.0.113.1"), ("fw2", "203.0.113.2"), ("fw3", "2001:db8:3::3")]


def entry(i: int) -> Entry:
    return Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 1024 + i, 80,
                 "198.51.100.100", "192.0.2.100", 80, 1024 + i, status=14,
                 timeout=300, tcp_state=3)


class Net:
    """Delivers datagrams between nodes with optional loss, duplication and reordering."""

    def __init__(self, members, seed=1, loss=0.0, dup=0.0, reorder=0.0, epoch=100, now=0.0,
                 counter_base=0):
        self.members = members
        self.counter_base = counter_base
        self.nonces = random.Random(seed + 1)
        self.addr = dict(members)
        self.name_of = {a: n for n, a in members}
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.nodes, self.tables, self.applied, self.insync = {}, {}, {}, {}
        self.wire_log = []     # every datagram sent: (src, dst addr, bytes)
        self.down = set()
        self.now = now
        for name, _ in members:
            self.start(name, epoch)

    def start(self, name, epoch):
        self.nodes[name] = Sync(self.members, name, KEY, epoch, self.now, Timing(),
                                lambda: self.nonces.getrandbits(64), self.counter_base)
        self.tables.setdefault(name, {})
        self.applied[name] = []
        self.insync[name] = []

    def pump(self):
        flight = []
        for _ in range(10000):
            for name, node in list(self.nodes.items()):
                for a in node.drain():
                    if isinstance(a, Send):
                        if name in self.down:
                            continue
                        self.wire_log.append((name, a.addr, a.data))
                        if self.rng.random() < self.loss:
                            continue
                        copies = 2 if self.rng.random() < self.dup else 1
                        flight.extend([(name, a.addr, a.data)] * copies)
                    elif isinstance(a, Apply):
                        self.applied[name].extend(a.records)
                        for op, e in a.records:
                            if op == OP_UPSERT:
                                self.tables[name][e.key] = e
                            else:
                                self.tables[name].pop(e.key, None)
                    elif isinstance(a, Dump):
                        node.bulk(a.peer, list(self.tables[name].values()), self.now)
                    elif isinstance(a, InSync):
                        self.insync[name].append(a.value)
            if not flight:
                return
            if self.reorder:
                self.rng.shuffle(flight)
            batch, flight = flight, []
            for src, addr, data in batch:
                dst = self.name_of[addr]
                if dst in self.down or dst not in self.nodes:
                    continue
                self.nodes[dst].datagram(self.addr[src], data, self.now)
            for node in self.nodes.values():
                node.flush(self.now)
        raise AssertionError("network did not settle")

    def local(self, name, records):
        for op, e in records:
            if op == OP_UPSERT:
                self.tables[name][e.key] = e
            else:
                self.tables[name].pop(e.key, None)
        self.nodes[name].local(records, self.now)
        self.nodes[name].flush(self.now)
        self.pump()

    def run(self, seconds, step=0.05):
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            for name, node in self.nodes.items():
                if name not in self.down:
                    node.tick(self.now)
            self.pump()


def two(**kw):
    return Net(MEMBERS[:2], **kw)


def handshake(nodes: dict, now: float) -> None:
    """Exchange RESYNC_REQs and (empty) bulks until quiet, without a Net."""
    addr = dict(MEMBERS)
    name_of = {a: n for n, a in MEMBERS}
    for n in nodes.values():
        n.tick(now)
    for _ in range(20):
        moved = False
        for name, n in nodes.items():
            for a in n.drain():
                if isinstance(a, Dump):
                    n.bulk(a.peer, [], now)
                elif isinstance(a, Send):
                    nodes[name_of[a.addr]].datagram(addr[name], a.data, now)
                    moved = True
        for n in nodes.values():
            n.flush(now)
        if not moved:
            break
    assert all(p.resync == "done" for n in nodes.values() for p in n.peers.values())


def test_startup_pair_syncs_and_reports_in_sync():
    net = two()
    net.run(0.2)
    assert net.insync["fw1"] == [True] and net.insync["fw2"] == [True]
    assert all(p.resync == "done" for n in net.nodes.values() for p in n.peers.values())


def test_replicates_in_order():
    net = two()
    net.run(0.2)
    recs = [(OP_UPSERT, entry(i)) for i in range(200)] + [(OP_DELETE, entry(5))]
    net.local("fw1", recs)
    assert net.applied["fw2"] == recs
    assert net.tables["fw2"] == net.tables["fw1"]
    c = net.nodes["fw1"].peers["fw2"].counters
    assert c["entries_sent"] == 201 and c["msgs_sent"] > 8   # batched, several per datagram
    net.run(0.5)
    assert not net.nodes["fw1"].peers["fw2"].tx.queue         # all acked


def test_loss_reorder_duplicates_deliver_everything_once_in_order():
    net = two(seed=7, loss=0.2, dup=0.1, reorder=1.0)
    net.run(2)   # lossy start: the resync still completes
    assert net.nodes["fw2"].in_sync
    sent = []
    for burst in range(20):
        recs = [(OP_UPSERT, entry(burst * 50 + i)) for i in range(50)]
        if burst % 4 == 3:
            recs.append((OP_DELETE, entry(burst * 50 - 3)))
        sent.extend(recs)
        net.local("fw1", recs)
        net.run(0.05)
    net.run(5)
    assert net.tables["fw2"] == net.tables["fw1"]
    # In order and without duplicates, apart from what a bulk transfer repeats.
    stream = [r for r in net.applied["fw2"] if r in sent]
    assert stream[-len(sent):] == sent or stream == sent
    c1, c2 = net.nodes["fw1"].peers["fw2"].counters, net.nodes["fw2"].peers["fw1"].counters
    assert c1["msgs_resent"] > 0 and c2["nacks_sent"] > 0 and c2["duplicates"] > 0


def test_tail_loss_recovered_by_alive():
    net = two()
    net.run(0.2)
    net.loss = 1.0
    net.local("fw1", [(OP_UPSERT, entry(1))])
    net.loss = 0.0
    assert net.tables["fw2"] == {}
    net.run(1.0)
    assert entry(1).key in net.tables["fw2"]


def test_replayed_datagrams_are_dropped_and_change_nothing():
    net = two()
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(1))])
    net.local("fw1", [(OP_DELETE, entry(1))])
    assert net.tables["fw2"] == {}
    fw2 = net.nodes["fw2"]
    data_msgs = [d for s, a, d in net.wire_log if s == "fw1" and d[3] == wire.DATA]
    applied = len(net.applied["fw2"])
    for d in data_msgs:
        fw2.datagram("203.0.113.1", d, net.now)
    net.pump()
    assert fw2.drops["replay"] == len(data_msgs)
    assert fw2.peers["fw1"].counters["replay"] == len(data_msgs)
    assert len(net.applied["fw2"]) == applied and net.tables["fw2"] == {}


def test_forged_truncated_wrong_version_are_counted():
    net = two()
    net.run(0.2)
    fw2 = net.nodes["fw2"]
    good = [d for s, a, d in net.wire_log if s == "fw1"][-1]
    forged_key = keys.sync_key(b"guess", "edge")
    m = wire.Message(wire.DATA, 0, 1, 100, 10**6, 1, 1, 1)
    fw2.datagram("203.0.113.1", wire.encode(forged_key, m, wire.encode_record(OP_UPSERT, entry(9))), net.now)
    fw2.datagram("203.0.113.1", good[:17], net.now)
    fw2.datagram("203.0.113.1", good[:2] + b"\x07" + good[3:], net.now)
    fw2.datagram("198.51.100.66", good, net.now)
    net.pump()
    assert fw2.drops == {"bad_auth": 1, "truncated": 1, "bad_version": 1, "unknown_peer": 1}
    assert fw2.peers["fw1"].counters["auth"] == 1
    assert net.applied["fw2"] == [] and net.tables["fw2"] == {}


def test_sender_restart_records_of_its_earlier_run_never_apply():
    net = two()
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(1))])
    old = [d for s, a, d in net.wire_log if s == "fw1"]
    net.start("fw1", epoch=200)     # fw1 restarts (empty table)
    net.tables["fw1"] = {}
    net.run(1.5)
    fw2 = net.nodes["fw2"]
    assert fw2.peers["fw1"].resync == "done"
    table = dict(net.tables["fw2"])     # entry(1) stays (the kernel times it out)
    applied = len(net.applied["fw2"])
    for d in old:
        fw2.datagram("203.0.113.1", d, net.now)
    net.pump()
    assert len(net.applied["fw2"]) == applied and net.tables["fw2"] == table
    assert fw2.peers["fw1"].off_session >= len(old)


def test_lower_epoch_and_lost_state_are_not_locked_out():
    """Issue 9 #5: a member back with an epoch below the one its peer saw
    (clock behind, /config state lost) used to be refused for ever."""
    net = two()
    net.run(0.2)
    net.local("fw2", [(OP_UPSERT, entry(i)) for i in range(10)])
    net.run(1.0)
    net.start("fw1", epoch=50)
    net.tables["fw1"] = {}
    net.run(1.0)
    fw1 = net.nodes["fw1"]
    assert net.insync["fw1"] == [True] and fw1.peers["fw2"].resync == "done"
    assert net.tables["fw1"] == net.tables["fw2"]
    net.local("fw1", [(OP_UPSERT, entry(99))])        # and its own entries are taken
    assert entry(99).key in net.tables["fw2"]


def test_recording_never_applies_after_the_receiver_restarts():
    """Issue 9 #6: a restarted receiver used to adopt the first authentic
    epoch it saw, so a recording of the peer's current stream applied."""
    net = two()
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(5)])
    net.local("fw1", [(OP_DELETE, entry(0))])
    recording = [d for s, a, d in net.wire_log if s == "fw1"]
    net.start("fw2", epoch=101)
    net.tables["fw2"] = {}
    fw2 = net.nodes["fw2"]
    for d in recording:                 # before fw2 heard anything of fw1's new stream
        fw2.datagram("203.0.113.1", d, net.now)
    assert not [a for a in fw2.drain() if isinstance(a, Apply)]
    net.run(1.0)                        # the handshake, fw1's bulk
    assert net.tables["fw2"] == net.tables["fw1"]
    applied = len(net.applied["fw2"])
    for d in recording:                 # and after it
        fw2.datagram("203.0.113.1", d, net.now)
    net.pump()
    assert len(net.applied["fw2"]) == applied


def test_replayed_resync_request_costs_a_bulk_and_heals():
    """A recorded RESYNC_REQ of fw2's earlier run points fw1 at a dead
    session: fw2 notices fw1 sending outside its session and asks again."""
    net = two()
    net.run(0.2)
    old_reqs = [d for s, a, d in net.wire_log if s == "fw2" and d[3] == wire.RESYNC_REQ]
    net.start("fw2", epoch=101)
    net.tables["fw2"] = {}
    net.run(1.0)
    for d in old_reqs:
        net.nodes["fw1"].datagram("203.0.113.2", d, net.now)
    net.pump()
    net.local("fw1", [(OP_UPSERT, entry(7))])
    net.run(3.0)
    assert net.tables["fw2"] == net.tables["fw1"] and entry(7).key in net.tables["fw2"]


def replay_each_second(net, dst, src, datagrams, seconds):
    """Replay datagrams to dst as if from src once a second; the bulks
    dst's peers send meanwhile."""
    before = sum(p.counters["bulk_sent"] for n in net.nodes.values() for p in n.peers.values())
    for _ in range(seconds):
        for d in datagrams:
            net.nodes[dst].datagram(net.addr[src], d, net.now)
        net.pump()
        net.run(1.0)
    return sum(p.counters["bulk_sent"] for n in net.nodes.values() for p in n.peers.values()) - before


def recorded_then_restarted(restarts: str, mtype: int):
    """A synced pair; the last datagram of mtype `restarts` sent, recorded;
    then `restarts` starts a new run and the pair resyncs."""
    net = two()
    net.run(1.2)
    old = [d for s, a, d in net.wire_log if s == restarts and d[3] == mtype][-1]
    net.start(restarts, epoch=101)
    net.tables[restarts] = {}
    net.run(1.0)
    assert all(p.resync == "done" for n in net.nodes.values() for p in n.peers.values())
    return net, old


@pytest.mark.parametrize("restarts,mtype,to,before", [
    # each replay of fw2's old-run RESYNC_REQ cost two bulks of fw1's table
    # (one to the dead session, one when fw2 asked again): 28 in 10 s
    ("fw2", wire.RESYNC_REQ, "fw1", 28),
    # each replay (beyond one a second) of any datagram of fw1's earlier run
    # made fw2 open a new session, and fw1 send a bulk: 8 in 10 s
    ("fw1", wire.ALIVE, "fw2", 8),
])
def test_a_datagram_of_an_old_run_replayed_each_second_costs_no_bulk(restarts, mtype, to, before):
    """Issue 21 #4 (`before`: the bulks it cost on the old code)."""
    net, old = recorded_then_restarted(restarts, mtype)
    assert replay_each_second(net, to, restarts, [old], 10) == 0
    assert net.nodes[to].peers[restarts].off_session >= 10
    net.local("fw1", [(OP_UPSERT, entry(7))])          # the streams still work
    net.local("fw2", [(OP_UPSERT, entry(8))])
    assert net.tables["fw1"] == net.tables["fw2"] and len(net.tables["fw1"]) == 2


def test_sequence_counters_are_per_peer():
    """Issue 9 #7: one counter for all peers thinned each peer's window."""
    net = Net(MEMBERS)
    net.run(0.5)
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(100)])
    seqs = {}
    for s, a, d in net.wire_log:
        if s == "fw1":
            seqs.setdefault(a, []).append(wire.decode(KEY, d).seq)
    assert len(seqs) == 2
    for got in seqs.values():
        assert got == list(range(1, len(got) + 1))


def test_counters_cross_the_u32_edge():
    """Issue 9 #4: seq, gen and dseq were u32 on the wire; at 2**32 the
    header pack raised and the ticker died. Every counter is 64-bit now."""
    edge = 2**32 - 3
    net = two(counter_base=edge)
    net.run(0.2)
    for i in range(10):
        net.local("fw1", [(OP_UPSERT, entry(i))])
    net.run(1.0)
    assert net.tables["fw2"] == net.tables["fw1"] and len(net.tables["fw2"]) == 10
    fw1 = net.nodes["fw1"]
    tx = fw1.peers["fw2"].tx
    assert tx.seq > 2**32 and tx.next_dseq > 2**32 and tx.acked == tx.next_dseq - 1
    last = [wire.decode(KEY, d) for s, a, d in net.wire_log if s == "fw1"][-1]
    assert last.type == wire.ALIVE and last.seq > 2**32     # the timers still run


def test_counters_near_the_u64_top_still_work():
    net = two(counter_base=2**63)
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(1))])
    assert entry(1).key in net.tables["fw2"]


def test_misdirected_message_is_dropped():
    net = Net(MEMBERS)
    net.run(0.2)
    to_fw2 = [d for s, a, d in net.wire_log if s == "fw1" and a == "203.0.113.2"][-1]
    fw3 = net.nodes["fw3"]
    fw3.datagram("203.0.113.1", to_fw2, net.now)
    assert fw3.drops == {"misdirected": 1}


def test_restarted_member_gets_bulk_before_in_sync():
    net = two()
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(300)])
    net.down.add("fw2")
    net.run(3)                                   # fw1 sees fw2 down
    assert net.nodes["fw1"].peers["fw2"].state == "down"
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(300, 400)])
    net.down.discard("fw2")
    net.tables["fw2"] = {}
    net.start("fw2", epoch=300)                  # empty table, new boot
    assert not net.nodes["fw2"].in_sync
    net.run(0.3)
    assert net.insync["fw2"] == [True]
    assert net.tables["fw2"] == net.tables["fw1"] and len(net.tables["fw2"]) == 400
    assert net.nodes["fw1"].peers["fw2"].counters["bulk_sent"] >= 1


def test_in_sync_waits_for_bulk_under_loss():
    net = two(seed=3, loss=0.3)
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(500)])
    net.tables["fw2"] = {}
    net.start("fw2", epoch=101)
    seen_before_done = []
    for _ in range(100):
        net.run(0.05)
        if net.nodes["fw2"].in_sync:
            break
        seen_before_done.append(len(net.tables["fw2"]))
    assert net.nodes["fw2"].in_sync
    assert len(net.tables["fw2"]) == 500         # in sync only with the whole table


def test_alone_member_becomes_in_sync_after_absent_timeout():
    net = two()
    net.down.add("fw2")
    del net.nodes["fw2"]
    net.run(2.9)
    assert not net.nodes["fw1"].in_sync
    net.run(0.2)
    assert net.nodes["fw1"].in_sync and net.insync["fw1"] == [True]
    assert net.nodes["fw1"].peers["fw2"].resync == "absent"


def test_a_peer_heard_through_carp_is_not_absent_however_long_its_sync_silence():
    """Sync link down, CARP link up (issue 19 #4): the rebooted member must
    not count the master it hears as absent and claim the vips with an empty
    table. Once carpd stops hearing it (or the sync link returns), it is."""
    net = two()
    net.down.add("fw2")
    del net.nodes["fw2"]
    net.nodes["fw1"].set_carp_heard(True)
    net.run(30)
    assert not net.nodes["fw1"].in_sync and net.nodes["fw1"].peers["fw2"].resync == "pending"
    net.nodes["fw1"].set_carp_heard(False)
    net.run(0.1)
    assert net.nodes["fw1"].in_sync and net.nodes["fw1"].peers["fw2"].resync == "absent"


def test_a_peer_that_went_down_is_absent_after_its_silence_unless_heard_through_carp():
    net = two()
    net.run(0.5)
    net.nodes["fw1"].resync(net.now)      # pending again; in_sync stays
    net.nodes["fw1"].in_sync = False      # as a new run would be
    net.nodes["fw1"].set_carp_heard(True)
    net.down.add("fw2")
    net.run(10)
    assert net.nodes["fw1"].peers["fw2"].state == "down"
    assert net.nodes["fw1"].peers["fw2"].resync == "pending" and not net.nodes["fw1"].in_sync
    net.nodes["fw1"].set_carp_heard(False)
    net.run(0.1)
    assert net.nodes["fw1"].in_sync


def test_queue_overflow_repaired_by_bulk():
    net = two()
    net.run(0.2)
    for n in net.nodes.values():
        n.t = Timing(max_queue=5)
    net.loss = 1.0
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(400)])   # ~15 messages, 5 kept
    net.loss = 0.0
    net.run(1.5)
    assert net.tables["fw2"] == net.tables["fw1"]
    c = net.nodes["fw1"].peers["fw2"].counters
    assert c["msgs_lost"] > 0 and c["bulk_sent"] >= 2


def test_three_members_all_replicate():
    net = Net(MEMBERS)
    net.run(0.2)
    net.local("fw2", [(OP_UPSERT, entry(i)) for i in range(60)])
    assert net.tables["fw1"] == net.tables["fw2"] == net.tables["fw3"]
    st = net.nodes["fw2"].status(net.now)
    assert set(st["peers"]) == {"fw1", "fw3"} and st["peers"]["fw3"]["entries_sent"] == 60


def test_status_reports_peer_table_size_and_lag():
    net = two()
    net.run(0.2)
    net.nodes["fw1"].local_entries = 42
    net.run(1)
    st = net.nodes["fw2"].status(net.now)
    p = st["peers"]["fw1"]
    assert p["table_size"] == 42 and p["state"] == "up" and p["lag"] == 0.0
    assert st["in_sync"] is True


def test_resync_after_role_loss_gets_a_bulk_and_keeps_in_sync():
    net = two()
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(50)])
    fw2 = net.nodes["fw2"]
    bulks = fw2.peers["fw1"].counters["bulk_received"]
    fw2.resync(net.now)
    assert fw2.in_sync                                  # no new demotion while it waits
    for a in fw2.actions:
        assert not isinstance(a, InSync)
    net.run(0.5)
    assert fw2.peers["fw1"].counters["bulk_received"] == bulks + 1
    assert fw2.peers["fw1"].resync == "done"
    assert net.applied["fw2"][-50:] == [(OP_UPSERT, entry(i)) for i in range(50)]
    assert net.tables["fw2"] == net.tables["fw1"]


def test_bulk_datagrams_are_flagged_for_replacement():
    net = two()
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(1))])
    fw1 = net.nodes["fw1"]
    fw1.bulk("fw2", [entry(2)], net.now)
    sends = [a for a in fw1.drain() if isinstance(a, Send)]
    msgs = [wire.decode(KEY, s.data) for s in sends]
    data = [m for m in msgs if m.type == wire.DATA]
    assert data and all(m.flags & wire.FLAG_BULK for m in data)
    fw2 = net.nodes["fw2"]
    for s in sends:
        fw2.datagram("203.0.113.1", s.data, net.now)
    applies = [a for a in fw2.drain() if isinstance(a, Apply)]
    assert applies and all(a.replace for a in applies)
    fw1.local([(OP_UPSERT, entry(3))], net.now)
    fw1.flush(net.now)
    for a in fw1.drain():
        if isinstance(a, Send):
            fw2.datagram("203.0.113.1", a.data, net.now)
    applies = [a for a in fw2.drain() if isinstance(a, Apply)]
    assert len(applies) == 1 and applies[0].replace is False


def test_delayed_ack_sent_after_ack_delay_ack_every_or_the_next_tick():
    t = Timing(ack_delay=0.25, ack_every=4)
    fw1 = Sync(MEMBERS[:2], "fw1", KEY, 100, 10.0, t)
    fw2 = Sync(MEMBERS[:2], "fw2", KEY, 100, 10.0, t)
    handshake({"fw1": fw1, "fw2": fw2}, 9.0)
    d0 = fw2.peers["fw1"].rx.expected - 1         # the handshake's bulk came first

    def deliver(n, now):
        """n DATA messages (one record each) from fw1 to fw2 at time now."""
        for i in range(n):
            fw1.local([(OP_UPSERT, entry(i))], now)
            fw1.flush(now)
        for a in fw1.drain():
            if isinstance(a, Send):
                fw2.datagram("203.0.113.1", a.data, now)

    def acks() -> list[int]:
        """The dseq of every ACK fw2 sent since the last call."""
        msgs = [wire.decode(KEY, a.data) for a in fw2.drain() if isinstance(a, Send)]
        return [m.dseq for m in msgs if m.type == wire.ACK]

    deliver(1, 10.0)
    fw2.flush(10.0, delay_acks=True)
    assert acks() == []
    fw2.flush(10.125, delay_acks=True)             # younger than ack_delay
    assert acks() == []
    fw2.flush(10.25, delay_acks=True)              # ack_delay reached
    assert acks() == [d0 + 1]
    fw2.flush(10.5, delay_acks=True)               # nothing new: no repeat
    assert acks() == []

    deliver(3, 11.0)
    fw2.flush(11.0, delay_acks=True)
    assert acks() == []
    deliver(1, 11.0)                               # the ack_every-th message: at once
    fw2.flush(11.0, delay_acks=True)
    assert acks() == [d0 + 5]

    deliver(1, 12.0)
    fw2.flush(12.0, delay_acks=True)
    assert acks() == []
    fw2.tick(12.05)                                # the next tick sends it, however young
    assert acks() == [d0 + 6]

    deliver(1, 13.0)
    fw2.flush(13.0)                                # without delay_acks: at once
    assert acks() == [d0 + 7]


def test_a_refresh_claims_no_entry_an_up_peer_speaks_for():
    """Active-active (or no carpd): every member refreshes its table. A
    replica of fw1's entry in fw2's dump must not go back to fw1 as fw2's:
    it would take the entry over with an old copy and bring back on fw1
    what fw1 deleted since fw2's dump. Once fw1 is down, fw2 carries its
    entries and may claim them; fw2's own are always claimable."""
    net = Net(MEMBERS)
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(10)])
    net.local("fw2", [(OP_UPSERT, entry(i)) for i in range(10, 15)])
    fw2 = net.nodes["fw2"]
    dump = [entry(i) for i in range(20)]          # 15..19: nobody's
    assert fw2.claimable(dump) == dump[10:]
    net.down.add("fw1")
    net.run(fw2.t.peer_timeout + 1)
    assert fw2.peers["fw1"].state == "down"
    assert fw2.claimable(dump) == dump


def test_the_routine_refresh_resends_only_what_runs_out_on_the_peers_before_long():
    """An entry a live event sent at t=0 with 300 s left needs no refresh
    at t=10 (a 60 s horizon); at t=250 it does. One with 30 s left (an
    unreplied UDP flow) always does, as does one never sent as ours; the
    peer's own entries never."""
    net = Net(MEMBERS[:2])
    net.run(0.2)
    fw1 = net.nodes["fw1"]
    t0 = net.now
    long_lived, short = entry(1), entry(2)._replace(timeout=30)
    net.local("fw1", [(OP_UPSERT, long_lived), (OP_UPSERT, short)])
    net.local("fw2", [(OP_UPSERT, entry(3))])
    dump = [long_lived, short, entry(3), entry(4)]
    assert fw1.refreshable(dump, t0 + 10, 60) == [short, entry(4)]
    assert fw1.refreshable(dump, t0 + 250, 60) == [long_lived, short, entry(4)]
    net.local("fw1", [(OP_DELETE, long_lived)])
    assert long_lived in fw1.refreshable(dump, t0 + 10, 60)     # sent again as new if it is back


def idle_pair(t: Timing) -> tuple[Sync, Sync]:
    """fw1 and fw2 in sync at 10.0, the handshake's acks exchanged at 10.1:
    nothing in flight either way."""
    fw1 = Sync(MEMBERS[:2], "fw1", KEY, 100, 10.0, t)
    fw2 = Sync(MEMBERS[:2], "fw2", KEY, 100, 10.0, t)
    handshake({"fw1": fw1, "fw2": fw2}, 10.0)
    for n in (fw1, fw2):                                  # the handshake's acks
        n.tick(10.1)
    for a in fw1.drain() + fw2.drain():
        if isinstance(a, Send):
            (fw2 if a.addr == "203.0.113.2" else fw1).datagram(
                "203.0.113.1" if a.addr == "203.0.113.2" else "203.0.113.2", a.data, 10.1)
    fw1.drain(), fw2.drain()
    return fw1, fw2


def test_next_tick_waits_for_the_alive_on_an_idle_stream_and_one_tick_while_work_is_in_flight():
    """The daemon sleeps until next_tick: an idle pair wakes for its ALIVEs
    (and peer timeouts) only, but anything a timer repairs or completes
    (an unacked message, a held-back ACK, a peer not up) keeps the tick."""
    t = Timing()
    fw1 = Sync(MEMBERS[:2], "fw1", KEY, 100, 10.0, t)
    assert fw1.next_tick(10.0, 0.05) == 10.05            # peer not heard yet
    fw1, fw2 = idle_pair(t)
    p = fw1.peers["fw2"]
    assert not p.tx.queue and not p.rx.ack_due
    idle = fw1.next_tick(10.2, 0.05)
    assert idle == min(p.tx.last_send + t.alive, p.last_seen + t.peer_timeout)
    assert idle > 10.2 + 0.05                             # asleep through several ticks
    fw1.tick(idle)
    assert any(isinstance(a, Send) and wire.decode(KEY, a.data).type == wire.ALIVE for a in fw1.drain())

    now = idle + 0.1
    fw1.local([(OP_UPSERT, entry(1))], now)               # sent, not yet acked
    fw1.flush(now)
    assert fw1.next_tick(now, 0.05) == pytest.approx(now + 0.05)
    data = [a.data for a in fw1.drain() if isinstance(a, Send)]
    for d in data:
        fw2.datagram("203.0.113.1", d, now)
    fw2.flush(now, delay_acks=True)                       # the ACK waits for ack_delay
    assert fw2.peers["fw1"].rx.ack_due
    assert fw2.next_tick(now, 0.05) == pytest.approx(now + 0.05)


def test_next_tick_wakes_for_every_links_alive_and_for_a_link_going_silent():
    """With redundant links, a daemon that ticks only at next_tick still
    sends an ALIVE on a link whose carrier came back at once, and moves the
    stream off a link that stopped answering as soon as it counts silent."""
    from tests.unit.test_sync_linkchoice import SILENT_AFTER, T, TwoLinks
    net = TwoLinks()
    net.run(3)
    fw1 = net.nodes["fw1"]
    p = net.peer("fw1")
    assert p.links.chosen == 0 and fw1.in_sync
    fw1.set_carrier(1, False, net.now)
    net.run(1)
    fw1.set_carrier(1, True, net.now)
    assert fw1.next_tick(net.now, 0.05) <= net.now       # link 1's ALIVE is overdue

    # Tick each member only when its next_tick is due (as the daemon's ticker).
    net.cut.add(("fw2", 0))
    moved = None
    for _ in range(2000):
        due = {n: node.next_tick(net.now, 0.05) for n, node in net.nodes.items()}
        net.now = max(min(due.values()), net.now + 0.001)
        for n, node in net.nodes.items():
            if due[n] <= net.now:
                node.tick(net.now)
        net.pump()
        if p.links.chosen == 1:
            moved = net.now
            break
    assert moved is not None
    assert moved - p.links.heard[0] <= SILENT_AFTER + 0.002, (moved, p.links.heard)
    assert p.state == "up" and T.alive < SILENT_AFTER


def test_the_daemons_ticker_keeps_the_tick_while_an_expectation_waits_for_its_master(tmp_path):
    """An expectation that came before its master entry is retried by the
    ticker (ctexp retry): on an idle stream the daemon still wakes every
    TICK for it, not only for the next ALIVE."""
    import types
    from syncd import daemon as syncd_daemon
    from syncd.core import expect
    from tests.unit.test_sync_carpd_link import daemon
    d = daemon(tmp_path)
    d.sync, _ = idle_pair(Timing())
    d.exp = types.SimpleNamespace(waiting=expect.Waiting())
    assert d.tick_due(10.2) > 10.2 + syncd_daemon.TICK                 # idle: asleep until the ALIVE
    x = expect.Expectation(4, 6, 0, (6, "192.0.2.100", "198.51.100.100", 40021, 21),
                           "192.0.2.100", "198.51.100.100", 0, 40022, "255.255.255.255", 0)
    d.exp.waiting.hold(x, 10.2 + expect.WAIT)
    assert d.tick_due(10.2) == pytest.approx(10.2 + syncd_daemon.TICK)

"""Redundant sync links (pure): which link carries a peer's stream, moving
on carrier loss and on silence and back, without a bulk; a peer is absent
only when every link is silent."""
import random

import pytest

from syncd.core import keys, links
from syncd.core.entry import OP_UPSERT
from syncd.core.links import NO_CARRIER, SILENT, UP, PeerLinks, link_state, preferred
from syncd.core.protocol import Apply, Dump, Send, Sync, Timing
from tests.unit.test_sync_protocol import entry

KEY = keys.sync_key(b"secret", "edge")
T = Timing()
SILENT_AFTER = links.silent_after(T.alive)
MEMBERS = [("fw1", ("203.0.113.1", "198.51.100.201")), ("fw2", ("203.0.113.2", "198.51.100.202"))]


# --- the rule ---------------------------------------------------------------------

def test_state_of_a_link():
    assert link_state(False, 10.0, 10.0, 1.5) == NO_CARRIER
    assert link_state(True, None, 10.0, 1.5) == SILENT
    assert link_state(True, 8.4, 10.0, 1.5) == SILENT
    assert link_state(True, 8.6, 10.0, 1.5) == UP


@pytest.mark.parametrize("states, current, want", [
    ([UP, UP], 1, 0),                   # the first preferred: back as soon as it answers
    ([SILENT, UP], 0, 1),               # stops answering: the next one
    ([NO_CARRIER, SILENT], 0, 1),       # no carrier: anything with carrier beats it
    ([SILENT, SILENT], 1, 1),           # nothing answers: stay
    ([NO_CARRIER, NO_CARRIER], 1, 1),
    ([SILENT, NO_CARRIER, UP], 0, 2),
])
def test_preferred(states, current, want):
    assert preferred(states, current) == want


def test_peer_links_count_switches():
    pl = PeerLinks(("a", "b"))
    pl.heard = [0.0, 0.0]
    assert not pl.choose([True, True], 1.0, 1.5)
    assert pl.choose([False, True], 1.1, 1.5) and pl.chosen == 1
    assert pl.choose([True, True], 1.2, 1.5) and pl.chosen == 0
    assert pl.switches == 2
    assert pl.alive_due([True, False], 5.0, 0.5) == [0]


# --- two members on two links -------------------------------------------------------

class TwoLinks:
    """fw1 and fw2, a link set per member; `cut` holds (member, link) pairs
    whose datagrams, both ways, are lost (the member's side of the link)."""

    def __init__(self, seed=1):
        rng = random.Random(seed)
        self.now = 0.0
        self.nodes = {n: Sync(MEMBERS, n, KEY, 1, self.now, T, lambda: rng.getrandbits(64))
                      for n, _ in MEMBERS}
        self.addr = {a: (n, i) for n, addrs in MEMBERS for i, a in enumerate(addrs)}
        self.cut: set = set()
        self.tables = {n: {} for n in self.nodes}
        self.sent_on = {n: [0, 0] for n in self.nodes}   # data-bearing sends per link

    def pump(self):
        for _ in range(1000):
            flight = []
            for name, node in self.nodes.items():
                for a in node.drain():
                    if isinstance(a, Send):
                        dst, link = self.addr[a.addr]
                        assert link == a.link      # the address of the link it leaves by
                        self.sent_on[name][link] += 1
                        if (name, link) not in self.cut and (dst, link) not in self.cut:
                            flight.append((name, a.addr, a.data, link))
                    elif isinstance(a, Apply):
                        for op, e in a.records:
                            if op == OP_UPSERT:
                                self.tables[name][e.key] = e
                    elif isinstance(a, Dump):
                        node.bulk(a.peer, list(self.tables[name].values()), self.now)
            if not flight:
                return
            for src, addr, data, link in flight:
                dst, _ = self.addr[addr]
                self.nodes[dst].datagram(MEMBERS[[n for n, _ in MEMBERS].index(src)][1][link],
                                         data, self.now)
            for node in self.nodes.values():
                node.flush(self.now)
        raise AssertionError("did not settle")

    def run(self, seconds, step=0.05):
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            for node in self.nodes.values():
                node.tick(self.now)
            self.pump()

    def local(self, name, n, start=0):
        recs = [(OP_UPSERT, entry(start + i)) for i in range(n)]
        for _, e in recs:
            self.tables[name][e.key] = e
        self.nodes[name].local(recs, self.now)
        self.nodes[name].flush(self.now)
        self.pump()

    def peer(self, name):
        other = "fw2" if name == "fw1" else "fw1"
        return self.nodes[name].peers[other]


def synced():
    net = TwoLinks()
    net.run(3)
    for n in net.nodes:
        assert net.nodes[n].in_sync and net.peer(n).state == "up"
        assert net.peer(n).links.chosen == 0
    return net


def test_carrier_loss_moves_the_stream_at_once_without_a_bulk():
    net = synced()
    net.local("fw1", 50)
    bulks = net.peer("fw1").counters["bulk_sent"]
    sessions = net.peer("fw2").sessions
    net.cut.add(("fw1", 0))
    net.nodes["fw1"].set_carrier(0, False, net.now)
    assert net.peer("fw1").links.chosen == 1
    net.local("fw1", 50, start=50)      # goes out on link 1 at once
    assert len(net.tables["fw2"]) == 100
    net.run(3)      # fw2 hears nothing on link 0: moves too
    assert net.peer("fw2").links.chosen == 1
    st = net.nodes["fw2"].status(net.now)["peers"]["fw1"]
    assert st["links"] == [SILENT, UP] and st["link"] == 1
    assert net.peer("fw1").counters["bulk_sent"] == bulks      # no bulk
    assert net.peer("fw2").sessions == sessions                # same session
    assert net.peer("fw1").state == net.peer("fw2").state == "up"


def test_silence_moves_the_stream_and_lost_data_is_resent():
    net = synced()
    net.cut.add(("fw2", 0))           # fw2's side of link 0 is dead, carrier or not
    t_cut = net.now
    net.local("fw1", 30)              # sent on link 0: lost
    assert len(net.tables["fw2"]) == 0
    moved = []
    while net.now < t_cut + 3 and not moved:
        net.run(0.05)
        if net.peer("fw1").links.chosen == 1:
            moved.append(net.now - t_cut)
    assert moved and moved[0] <= SILENT_AFTER + T.alive + 0.1, moved
    net.run(1)
    assert len(net.tables["fw2"]) == 30     # resent on link 1, in the same stream
    assert net.peer("fw1").counters["bulk_sent"] == 1   # only the start-up one
    assert net.peer("fw2").state == "up"


def test_back_to_the_preferred_link_when_it_returns():
    net = synced()
    net.cut.add(("fw1", 0))
    net.nodes["fw1"].set_carrier(0, False, net.now)
    net.run(3)
    assert net.peer("fw1").links.chosen == net.peer("fw2").links.chosen == 1
    net.cut.clear()
    net.nodes["fw1"].set_carrier(0, True, net.now)
    net.run(T.alive * 2 + 0.1)      # an ALIVE each way on link 0
    assert net.peer("fw1").links.chosen == net.peer("fw2").links.chosen == 0
    assert net.peer("fw1").links.switches == 2
    before = list(net.sent_on["fw1"])
    net.local("fw1", 10)
    assert net.sent_on["fw1"][0] > before[0] and len(net.tables["fw2"]) == 10
    assert net.peer("fw1").counters["bulk_sent"] == 1


def test_a_peer_is_absent_only_when_every_link_is_silent():
    # fw2 starts alone with link 0 dead: fw1 answers on link 1, so it is never absent
    net = TwoLinks()
    net.cut.add(("fw1", 0))
    net.run(T.absent_after + 2)
    assert net.peer("fw2").resync == "done" and net.peer("fw2").state == "up"
    # both links dead: absent after absent_after
    net = TwoLinks()
    net.cut |= {("fw1", 0), ("fw1", 1)}
    net.run(T.absent_after + 0.2)
    assert net.peer("fw2").resync == "absent"


def test_alives_go_on_every_link_data_on_one():
    net = synced()
    before = [list(net.sent_on[n]) for n in ("fw1", "fw2")]
    for i in range(20):
        net.local("fw1", 5, start=5 * i)
        net.run(0.1)
    data0 = net.sent_on["fw1"][0] - before[0][0]
    data1 = net.sent_on["fw1"][1] - before[0][1]
    # link 1 carries ALIVEs only: one per interval over 2 s
    assert data1 <= 2 / T.alive + 1 and data0 >= 20, (data0, data1)
    assert net.peer("fw2").links.states(net.nodes["fw2"].carrier, net.now, SILENT_AFTER) == [UP, UP]


def test_random_cuts_never_start_a_bulk_and_lose_nothing():
    """Seeded: links cut and healed at random (never both at once for
    longer than a peer's timeout); every entry arrives, one bulk each."""
    for seed in range(20):
        rng = random.Random(seed)
        net = synced()
        n = 0
        for _step in range(40):
            link = rng.randrange(2)
            side = rng.choice(["fw1", "fw2"])
            for node in net.nodes.values():     # the last cut heals
                for i in range(2):
                    if not node.carrier[i]:
                        node.set_carrier(i, True, net.now)
            net.cut = set()
            if rng.random() < 0.5:
                net.cut = {(side, link)}
                if rng.random() < 0.5:
                    net.nodes[side].set_carrier(link, False, net.now)
            net.local("fw1", 3, start=n)
            n += 3
            net.run(rng.choice([0.1, 0.5, 1.0, 2.0]))
        net.cut = set()
        net.run(3)
        assert len(net.tables["fw2"]) == n, seed
        assert net.peer("fw1").counters["bulk_sent"] == 1, seed
        assert net.peer("fw2").sessions == 1, seed

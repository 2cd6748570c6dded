"""A bulk transfer handed out in pieces (Sync.bulk_begin / bulk_add /
bulk_end, pure): the daemon reads the dump a turn at a time and sends it
behind live events, so live events reach the peer between the pieces.
Live changes made during the bulk must win over the dump's older copies."""
from __future__ import annotations

from syncd.core import wire
from syncd.core.entry import OP_DELETE, OP_UPSERT
from syncd.core.protocol import Apply, InSync, Send
from tests.unit.test_sync_protocol import MEMBERS, Net, entry


class PacedNet(Net):
    """While paced, Dump actions are noted, not answered: the test hands
    the bulk out in pieces."""
    paced = False

    def start(self, name, epoch):
        super().start(name, epoch)
        node = self.nodes[name]
        whole = node.bulk

        def bulk(peer, entries, now):
            if self.paced:
                self.dumps.append((name, peer))
            else:
                whole(peer, entries, now)
        node.bulk = bulk
        self.dumps = []


def synced(n: int = 50) -> PacedNet:
    net = PacedNet(MEMBERS[:2])
    net.run(0.2)
    net.local("fw1", [(OP_UPSERT, entry(i)) for i in range(n)])
    assert net.tables["fw2"] == net.tables["fw1"]
    net.paced = True
    return net


def request_bulk(net: PacedNet) -> list:
    """fw2 asks fw1 for a bulk (it lost the master role); fw1's table as its
    dump reads it now."""
    net.nodes["fw2"].resync(net.now)
    net.pump()
    assert net.dumps == [("fw1", "fw2")]
    net.dumps.clear()
    net.nodes["fw1"].bulk_begin("fw2", net.now)
    net.pump()
    return list(net.tables["fw1"].values())


def add(net: PacedNet, entries) -> int:
    sent = net.nodes["fw1"].bulk_add("fw2", entries, net.now)
    net.pump()
    return sent


def end(net: PacedNet) -> None:
    net.nodes["fw1"].bulk_end("fw2", net.now)
    net.pump()


def test_a_bulk_in_pieces_completes_the_resync_only_at_its_end():
    net = synced()
    dump = request_bulk(net)
    fw2 = net.nodes["fw2"]
    for i in range(0, len(dump), 8):
        assert add(net, dump[i:i + 8]) == len(dump[i:i + 8])
        assert fw2.peers["fw1"].resync == "pending"
    end(net)
    assert fw2.peers["fw1"].resync == "done" and fw2.peers["fw1"].counters["bulk_received"] == 2
    assert net.tables["fw2"] == net.tables["fw1"]
    assert net.nodes["fw1"].own.touched is None     # nobody watches any more


def test_pieces_go_out_with_the_bulk_flags_and_own_entries_are_the_peers_view():
    net = synced(10)
    dump = request_bulk(net)
    fw1, fw2 = net.nodes["fw1"], net.nodes["fw2"]
    fw1.bulk_add("fw2", dump[:5], net.now)
    sends = [a for a in fw1.actions if isinstance(a, Send)]
    msgs = [wire.decode(KEY_OF(net), s.data) for s in sends]
    assert msgs and all(m.flags == wire.FLAG_BULK | wire.FLAG_OWN for m in msgs if m.type == wire.DATA)
    net.pump()
    applies = []
    fw1.bulk_add("fw2", dump[5:], net.now)
    for a in fw1.drain():
        if isinstance(a, Send):
            fw2.datagram(dict(MEMBERS)["fw1"], a.data, net.now)
    applies = [a for a in fw2.drain() if isinstance(a, Apply)]
    assert applies and all(a.replace and not a.keep for a in applies)
    end(net)
    assert len(fw2.peers["fw1"].view) == 10


def KEY_OF(net):
    return net.nodes["fw1"].key


def test_a_live_delete_during_the_bulk_is_not_undone_by_the_dumps_older_copy():
    net = synced()
    dump = request_bulk(net)                    # holds entry 30
    add(net, dump[:20])
    net.local("fw1", [(OP_DELETE, entry(30))])  # the session ends meanwhile
    assert entry(30).key not in net.tables["fw2"]
    assert add(net, dump[20:]) == len(dump) - 21    # its copy is not sent
    end(net)
    assert entry(30).key not in net.tables["fw2"]
    assert net.tables["fw2"] == net.tables["fw1"]


def test_a_live_change_during_the_bulk_is_not_reverted_by_the_dumps_older_copy():
    net = synced()
    dump = request_bulk(net)
    add(net, dump[:20])
    newer = entry(40)._replace(tcp_state=5)
    net.local("fw1", [(OP_UPSERT, newer)])
    add(net, dump[20:])
    end(net)
    assert net.tables["fw2"][newer.key] == newer
    assert net.tables["fw2"] == net.tables["fw1"]


def test_entries_created_during_the_bulk_arrive_between_the_pieces():
    net = synced()
    dump = request_bulk(net)
    add(net, dump[:10])
    net.local("fw1", [(OP_UPSERT, entry(500))])
    assert entry(500).key in net.tables["fw2"]      # not behind the rest of the table
    add(net, dump[10:])
    end(net)
    assert net.tables["fw2"] == net.tables["fw1"]


def test_a_new_request_during_the_bulk_restarts_it_and_only_its_end_completes():
    net = synced()
    dump = request_bulk(net)
    add(net, dump[:10])
    fw1, fw2 = net.nodes["fw1"], net.nodes["fw2"]
    dump = request_bulk(net)                    # fw2 asks again: a new generation
    assert fw1.own.watchers == 1                # the first bulk's watch is gone
    add(net, dump)
    assert fw2.peers["fw1"].resync == "pending"
    end(net)
    assert fw2.peers["fw1"].resync == "done"
    assert net.tables["fw2"] == net.tables["fw1"]


def test_an_aborted_bulk_sends_no_done_and_is_started_again():
    net = synced()
    dump = request_bulk(net)
    add(net, dump[:10])
    net.nodes["fw1"].bulk_abort("fw2")          # its dump failed
    net.paced = False                           # answered whole from now on
    assert net.nodes["fw2"].peers["fw1"].resync == "pending"
    assert add(net, dump[10:]) == 0             # the new Dump action came meanwhile
    net.run(0.1)
    assert net.nodes["fw2"].peers["fw1"].resync == "done"
    assert net.tables["fw2"] == net.tables["fw1"]
    assert not [a for a in net.nodes["fw2"].drain() if isinstance(a, InSync)]


def test_a_bulk_for_a_session_the_peer_left_stops_when_the_stream_moves_on():
    """fw2 restarts in the middle of fw1's paced bulk: the rest of that dump
    was for fw2's old session and must not land in its new one (simulation
    seed 4985 once applied such pieces); the new session gets its own bulk."""
    net = synced(20)
    dump = request_bulk(net)
    assert add(net, dump[:5]) == 5
    net.start("fw2", 101)                      # a new run: new nonces, a fresh request
    net.tables["fw2"] = {}
    net.run(1.5)                               # fw1 asks again (once a second); fw2 echoes
    fw1 = net.nodes["fw1"]
    assert fw1.peers["fw2"].bulk_mark is None    # the old bulk stopped
    assert add(net, dump[5:]) == 0               # its remaining pieces go nowhere
    assert ("fw1", "fw2") in net.dumps            # the new session asks for its own
    assert fw1.own.touched is None               # nobody watches any more

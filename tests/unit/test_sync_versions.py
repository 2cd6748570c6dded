"""Sync wire versions 2 and 3, negotiated per peer (pure): the wire, the
choice of version per peer and run, a capped build, and a peer this member
cannot understand (docs/sync.md, "Versions and upgrades")."""
import pytest

from fwcluster.core import contract
from syncd.core import wire
from syncd.core.entry import OP_UPSERT
from syncd.core.protocol import PeerSpeaks, Sync, Timing, wire_versions
from tests.unit.test_sync_protocol import KEY, MEMBERS, Net, entry

NEW, CAPPED = (2, 3), (2, 2)
ABOUT = {NEW: wire.About("0.3.0", (("sync", 2, 3), ("config", 1, 1))),
         CAPPED: wire.About("0.3.0", (("sync", 2, 2), ("config", 1, 1)))}


# --- the wire ------------------------------------------------------------------------
def test_every_type_round_trips_at_version_2_and_3():
    rec = wire.encode_record(OP_UPSERT, entry(1))
    for version in (2, 3):
        for mtype in wire.TYPE_NAMES:
            body = {wire.DATA: rec, wire.ALIVE: wire.encode_about(ABOUT[NEW]) if version == 3
                    else b""}.get(mtype, bytes(wire.BODY_LEN.get(mtype, 0)))
            m = wire.Message(mtype, 0, 1, 7, 8, 9, 1, 2, 1 if mtype == wire.DATA else 5,
                             version=version)
            got = wire.decode(KEY, wire.encode(KEY, m, body))
            assert (got.type, got.version, got.seq, got.arg) == (mtype, version, 9, m.arg)
            assert got.records == ((OP_UPSERT, entry(1)),) if mtype == wire.DATA else not got.records


def test_a_version_3_alive_tells_the_release_and_the_ranges_under_the_mac():
    about = wire.About("0.3.0.post2+gabc", (("sync", 2, 3), ("config", 1, 2), ("carp_hardened", 4, 4)))
    data = wire.encode(KEY, wire.Message(wire.ALIVE, 0, 1, 1, 1, 1), wire.encode_about(about))
    assert wire.decode(KEY, data).about == about
    assert wire.decode(KEY, wire.encode(KEY, wire.Message(wire.ALIVE, 0, 1, 1, 1, 1, version=2))).about \
        is None
    tampered = data[:60] + b"1" + data[61:]     # inside the release text
    with pytest.raises(wire.WireError) as e:
        wire.decode(KEY, tampered)
    assert e.value.reason == "bad_auth"


@pytest.mark.parametrize("version,body", [
    (3, b""),                                   # a version 3 ALIVE has its body
    (3, b"\x05abc"),                            # release longer than the body
    (3, b"\x00\x01\x04sync\x00\x02"),           # a range cut short
    (3, b"\x00\x00x"),                          # trailing bytes
    (3, b"\x02\xff\xfe\x00"),                   # not UTF-8
    (3, b"\x00\x11" + b"\x00\x00\x00\x00\x00" * 17),   # more protocols than allowed
    (2, b"\x00\x00"),                           # version 2 ALIVEs have none
])
def test_a_malformed_alive_body_is_dropped(version, body):
    data = wire.encode(KEY, wire.Message(wire.ALIVE, 0, 1, 1, 1, 1, version=version), body)
    with pytest.raises(wire.WireError) as e:
        wire.decode(KEY, data)
    assert e.value.reason == "malformed"


def test_a_capped_build_refuses_version_3_as_bad_version():
    data = wire.encode(KEY, wire.Message(wire.ACK, 0, 1, 1, 1, 1, version=3))
    assert wire.decode(KEY, data).version == 3
    with pytest.raises(wire.WireError) as e:
        wire.decode(KEY, data, CAPPED)
    assert e.value.reason == "bad_version"


# --- the rule ------------------------------------------------------------------------
def test_the_version_rule():
    assert wire_versions(NEW, None, alive=True) == (2, 3)      # unheard: ALIVE at each
    assert wire_versions(NEW, None, alive=False) == (2,)       # the rest at the oldest
    assert wire_versions(NEW, 2, alive=True) == (2,)           # heard: newest both speak
    assert wire_versions(NEW, 3, alive=False) == (3,)
    assert wire_versions(CAPPED, None, alive=True) == (2,)     # capped: 2 only, ever
    assert wire_versions(CAPPED, 3, alive=True) == (2,)


# --- negotiation between members -----------------------------------------------------
class VNet(Net):
    """Net whose members speak the ranges in self.speaks (by name)."""

    def __init__(self, speaks: dict, **kw):
        self.speaks = dict(speaks)
        super().__init__(MEMBERS[:2], **kw)

    def start(self, name, epoch):
        super().start(name, epoch)
        r = self.speaks[name]
        self.nodes[name] = Sync(self.members, name, KEY, epoch, self.now, Timing(),
                                lambda: self.nonces.getrandbits(64), self.counter_base,
                                speaks=r, about=ABOUT[r])

    def versions_sent(self, src: str, since: int = 0) -> set:
        return {data[2] for s, _a, data in self.wire_log[since:] if s == src}


def peer(net, name):
    return net.nodes[name].status(net.now)["peers"]["fw2" if name == "fw1" else "fw1"]


def test_two_current_members_use_version_3_and_learn_each_others_release():
    net = VNet({"fw1": NEW, "fw2": NEW})
    net.run(1.5)
    for name in ("fw1", "fw2"):
        p = peer(net, name)
        assert p["sync_version"] == 3 and p["version"] == "0.3.0"
        assert p["speaks"] == {"sync": [2, 3], "config": [1, 1]}
    mark = len(net.wire_log)
    net.local("fw1", [(OP_UPSERT, entry(1))])
    net.run(1.0)
    assert net.versions_sent("fw1", mark) == net.versions_sent("fw2", mark) == {3}
    assert entry(1).key in net.tables["fw2"]


def test_a_capped_member_only_ever_speaks_2_and_its_peer_sends_it_nothing_newer_once_heard():
    net = VNet({"fw1": NEW, "fw2": CAPPED})
    net.run(0.05)       # fw2's request came in: heard at 2
    assert peer(net, "fw1")["sync_version"] == 2
    mark = len(net.wire_log)
    net.local("fw1", [(OP_UPSERT, entry(1))])
    net.local("fw2", [(OP_UPSERT, entry(2))])
    net.run(2.0)
    assert net.versions_sent("fw1", mark) == {2}
    assert net.versions_sent("fw2") == {2}
    assert entry(1).key in net.tables["fw2"] and entry(2).key in net.tables["fw1"]
    assert peer(net, "fw1")["sync_version"] == peer(net, "fw2")["sync_version"] == 2
    assert peer(net, "fw1")["version"] is None          # version 2 tells no release
    assert peer(net, "fw2")["unintelligible"] is None   # fw1 is up: heard at 2
    assert net.nodes["fw2"].in_sync and net.nodes["fw1"].in_sync


def test_before_it_has_heard_a_peer_a_member_sends_alives_at_each_version_the_rest_at_2():
    net = VNet({"fw1": NEW, "fw2": NEW})
    net.down.add("fw2")
    net.run(1.2)
    sent = {(data[3], data[2]) for s, _a, data in net.wire_log if s == "fw1"}
    assert sent == {(wire.RESYNC_REQ, 2), (wire.ALIVE, 2), (wire.ALIVE, 3)}


def test_a_new_run_of_the_peer_is_negotiated_afresh_both_ways():
    """Upgrade (capped -> current) and roll back (current -> capped): the
    version follows the peer's run, and its entries keep coming."""
    net = VNet({"fw1": NEW, "fw2": CAPPED})
    net.run(1.0)
    assert peer(net, "fw1")["sync_version"] == 2
    net.speaks["fw2"] = NEW
    net.start("fw2", 101)
    net.run(1.5)
    assert peer(net, "fw1")["sync_version"] == peer(net, "fw2")["sync_version"] == 3
    net.speaks["fw2"] = CAPPED
    net.start("fw2", 102)
    net.run(1.5)
    assert peer(net, "fw1")["sync_version"] == 2
    mark = len(net.wire_log)
    net.local("fw1", [(OP_UPSERT, entry(3))])
    net.run(1.0)
    assert net.versions_sent("fw1", mark) == {2}
    assert entry(3).key in net.tables["fw2"]


def test_a_pair_that_lost_its_first_version_3_alives_still_reaches_3():
    """Both hear each other only at 2 before their sessions lock: version 2
    ALIVEs carry the sender's newest, so the pair still moves to 3."""
    net = VNet({"fw1": NEW, "fw2": NEW})
    deliver = Sync.datagram

    def drop_v3_until_locked(self, addr, data, now):
        if data[2] == 3 and any(p.rx.boot is None for p in self.peers.values()):
            return
        deliver(self, addr, data, now)
    Sync.datagram = drop_v3_until_locked
    try:
        net.run(0.05)
        assert peer(net, "fw1")["sync_version"] == 2
        net.run(1.5)
    finally:
        Sync.datagram = deliver
    assert peer(net, "fw1")["sync_version"] == peer(net, "fw2")["sync_version"] == 3


# --- a peer this member cannot understand --------------------------------------------
def foreign(net, version=4):
    """A datagram of another sync version from fw2's address to fw1."""
    data = b"FS" + bytes([version]) + bytes(wire.HEADER.size - 3 + wire.MAC_LEN)
    net.nodes["fw1"].datagram(net.addr["fw2"], data, net.now)


def test_an_unintelligible_peer_is_never_absent_and_says_why():
    net = VNet({"fw1": NEW, "fw2": NEW})
    net.down.add("fw2")                 # fw2 runs a release that speaks sync 4 only
    del net.nodes["fw2"]
    for _ in range(int(3 * Timing().absent_after / 0.5)):
        foreign(net)
        net.run(0.5)
    fw1 = net.nodes["fw1"]
    assert not fw1.in_sync and fw1.peers["fw2"].resync == "pending"
    assert peer(net, "fw1")["unintelligible"] == 4
    assert fw1.drops["bad_version"] > 0
    # once it stops, it is silent like any other peer: absent after absent_after
    net.run(Timing().absent_after + 0.1)
    assert fw1.in_sync and fw1.peers["fw2"].resync == "absent"
    assert peer(net, "fw1")["unintelligible"] is None


def test_the_absence_rule():
    assert contract.peer_absent(3.0, 3.0, False)
    assert not contract.peer_absent(3.0, 3.0, True)
    assert not contract.peer_absent(10.0, 3.0, False, foreign_for=0.5)
    assert contract.peer_absent(10.0, 3.0, False, foreign_for=3.0)
    assert not contract.unintelligible(None, 3.0) and contract.unintelligible(2.9, 3.0)


class SpeaksNet(VNet):
    """VNet that keeps every PeerSpeaks each member hands its shell."""

    def start(self, name, epoch):
        super().start(name, epoch)
        node, said = self.nodes[name], self.said.setdefault(name, [])
        drain = node.drain

        def keep():
            out = drain()
            said.extend(a for a in out if isinstance(a, PeerSpeaks))
            return out
        node.drain = keep

    def __init__(self, speaks: dict, **kw):
        self.said = {}
        super().__init__(speaks, **kw)


def test_a_peers_alive_tells_the_shell_what_its_run_speaks_once_per_run():
    """carpd learns through syncd what a peer speaks (docs/carp.md): a
    capped peer (a release before sync 3) reports nothing and speaks only
    sync 2, a current one reports its ranges; said once per run of the
    peer, again after it restarts."""
    net = SpeaksNet({"fw1": NEW, "fw2": CAPPED})
    net.run(2.0)
    assert net.said["fw1"] == [PeerSpeaks("fw2", 2, None)]
    assert net.said["fw2"] == [PeerSpeaks("fw1", 3, None)]     # a capped member reads no report
    net.speaks["fw2"] = NEW
    net.start("fw2", 101)      # upgraded: its ALIVE reports its ranges
    net.run(2.0)
    after = net.said["fw1"][1:]     # its version 2 ALIVE may come first: newest 3, no report yet
    assert after[-1] == PeerSpeaks("fw2", 3, {"sync": [2, 3], "config": [1, 1]})
    assert all(a.sync_newest == 3 for a in after) and len(after) <= 2
    told = len(net.said["fw1"])
    net.run(3.0)
    assert len(net.said["fw1"]) == told     # later ALIVEs say nothing new

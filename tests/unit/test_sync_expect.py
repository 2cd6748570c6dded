"""Conntrack expectations on the sync stream (syncd/core/expect.py, pure;
the ctnetlink codec of syncd/ctexp.py): records, version 3 only, the
members' own expectations, those waiting for their master."""
import pytest

from syncd import ctexp, ctnl
from syncd.core import expect, wire
from syncd.core.entry import OP_UPSERT
from syncd.core.expect import OP_EXPECT, OP_UNEXPECT, Expectation
from syncd.core.protocol import Expect, Sync, Timing
from tests.unit.test_sync_protocol import KEY, entry
from tests.unit.test_sync_versions import ABOUT, CAPPED, NEW, VNet

# What this release's ALIVE tells; ABOUT[NEW] is a sync 3 peer that does not read expectations.
READS = wire.About("0.3.0", ABOUT[NEW].speaks + ((expect.PROTOCOL, *expect.SPEAKS),))


class ENet(VNet):
    """VNet whose members tell the About of abouts[name] (default READS)."""

    def __init__(self, speaks: dict, abouts: dict | None = None):
        self.abouts = abouts or {}
        super().__init__(speaks)

    def start(self, name, epoch):
        super().start(name, epoch)
        r = self.speaks[name]
        self.nodes[name] = Sync(self.members, name, KEY, epoch, self.now, Timing(),
                                lambda: self.nonces.getrandbits(64), self.counter_base,
                                speaks=r, about=self.abouts.get(name, READS))

# An active FTP data connection announced by PORT: from the server, any
# source port, to the client's announced port.
FTP_DATA = Expectation(4, 6, 0, (6, "192.0.2.100", "198.51.100.100", 40021, 21),
                       "198.51.100.100", "192.0.2.100", 0, 41217, "255.255.255.255", 0,
                       timeout=297, helper="ftp")
SIP_RTP6 = Expectation(6, 17, 3, (17, "2001:db8:1::100", "2001:db8:2::100", 5060, 5060),
                       "2001:db8:2::100", "2001:db8:1::100", 0, 16384, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                       0, klass=1, flags=2, timeout=180, helper="sip")


def test_records_round_trip():
    for x in (FTP_DATA, SIP_RTP6):
        for op in expect.OPS:
            rec = expect.encode_record(op, x)
            assert len(rec) == expect.REC_LEN[x.family]
            assert expect.decode_record(b"pad" + rec, 3) == (op, x, 3 + len(rec))
    with pytest.raises(expect.Malformed):
        expect.decode_record(expect.encode_record(OP_EXPECT, FTP_DATA)[:-1], 0)


def _data(version: int, body: bytes, count: int) -> bytes:
    return wire.encode(KEY, wire.Message(wire.DATA, 0, 1, 1, 1, 1, 1, 1, count, version=version), body)


def test_expectation_records_ride_beside_entries_at_version_3_only():
    body = wire.encode_record(OP_UPSERT, entry(1)) + expect.encode_record(OP_EXPECT, FTP_DATA)
    got = wire.decode(KEY, _data(3, body, 2))
    assert got.records == ((OP_UPSERT, entry(1)), (OP_EXPECT, FTP_DATA))
    with pytest.raises(wire.WireError) as e:    # what a version 2 peer would make of it
        wire.decode(KEY, _data(2, body, 2))
    assert e.value.reason == "malformed"


def _capture(net) -> dict:
    """Every Expect action of each node, in order."""
    got = {name: [] for name in net.nodes}
    for name, node in net.nodes.items():
        def drain(orig=node.drain, name=name):
            actions = orig()
            got[name].extend(a for a in actions if isinstance(a, Expect))
            return actions
        node.drain = drain
    return got


def test_a_peer_that_reads_them_gets_the_expectation_after_its_master():
    net = ENet({"fw1": NEW, "fw2": NEW})
    net.run(1.5)
    got = _capture(net)
    master = entry(1)
    net.local("fw1", [(OP_UPSERT, master)])
    net.nodes["fw1"].local_expectations([expect.encode_record(OP_EXPECT, FTP_DATA)], net.now)
    net.run(1.0)
    assert [a.records for a in got["fw2"]] == [((OP_EXPECT, FTP_DATA),)]
    assert master.key in net.tables["fw2"]
    assert net.nodes["fw2"].status(net.now)["peers"]["fw1"]["expectations_received"] == 1


@pytest.mark.parametrize("speaks,about", [(CAPPED, READS), (NEW, ABOUT[NEW])],
                         ids=["sync 2", "sync 3 without sync_expect"])
def test_a_peer_that_does_not_read_them_is_never_sent_one_and_its_stream_goes_on(speaks, about):
    net = ENet({"fw1": NEW, "fw2": speaks}, {"fw2": about})
    net.run(1.5)
    got = _capture(net)
    net.nodes["fw1"].local_expectations([expect.encode_record(OP_EXPECT, FTP_DATA)], net.now)
    net.local("fw1", [(OP_UPSERT, entry(2))])
    net.run(1.0)
    assert got["fw2"] == [] and entry(2).key in net.tables["fw2"]
    assert net.nodes["fw2"].status(net.now)["drops"].get("malformed", 0) == 0


def test_only_the_end_of_an_own_expectation_is_news():
    """A replica that runs out (or goes with its master's replica) must not
    delete the original on the member that made it."""
    mine = expect.Announced(limit=2)
    assert not mine.ended(FTP_DATA)            # a replica's end
    mine.new(FTP_DATA)
    assert mine.ended(FTP_DATA) and not mine.ended(FTP_DATA)
    mine.new(FTP_DATA)
    mine.new(SIP_RTP6)
    mine.new(FTP_DATA._replace(dport=1))       # past the bound: the oldest is forgotten
    assert not mine.ended(FTP_DATA) and mine.ended(SIP_RTP6)


def test_an_expectation_waits_for_its_master_then_is_dropped_counted():
    w = expect.Waiting(wait=2.0, limit=2)
    w.hold(FTP_DATA, 10.0 + w.wait)
    assert w.due(11.0) == [(FTP_DATA, 12.0)] and not w.items
    w.hold(FTP_DATA, 12.0)                     # still no master: back, same deadline
    assert w.due(12.0) == [] and w.dropped == 1
    w.hold(FTP_DATA, 20.0)
    w.forget(FTP_DATA)                         # its end came first
    assert w.due(15.0) == [] and w.dropped == 1
    for port in (1, 2, 3):                     # bounded: the oldest goes
        w.hold(FTP_DATA._replace(dport=port), 30.0)
    assert w.dropped == 2 and [x.dport for x, _ in w.due(25.0)] == [2, 3]


def test_the_kernel_request_names_master_tuple_and_mask():
    """EXP_NEW parses back into the same expectation (the kernel's event
    carries the same attributes); EXP_DELETE always names the one tuple
    (without one the kernel deletes every expectation)."""
    for x in (FTP_DATA, SIP_RTP6):
        msg = ctexp.encode_create(x, 5)
        # The helper goes only with sip's media classes: ftp data gets none.
        assert ctexp.parse(msg, 16, len(msg)) == (x if x.klass else x._replace(helper=""))
        d = ctexp.encode_delete(x, 6)
        attrs = ctnl._attrs_of(d, 20, len(d))
        assert ctexp.CTA_EXPECT_TUPLE in attrs and ctexp.parse(d, 16, len(d)) is None
    icmp_master = FTP_DATA._replace(master=(1, "192.0.2.100", "198.51.100.100", 0, 0))
    msg = ctexp.encode_create(icmp_master, 7)
    assert ctexp.parse(msg, 16, len(msg)) is None     # not carried

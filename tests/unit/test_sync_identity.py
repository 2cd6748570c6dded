"""Members are named on the sync wire by a stable id (their place among the
member names sorted), not by the order of [[member]] tables in cluster.toml:
two members whose configs list the members differently sync with each other."""
from __future__ import annotations

import tomllib

from fwcluster.core import config
from syncd.core.protocol import Sync, Timing
from syncd.core.entry import OP_UPSERT
from tests.unit.test_sync_protocol import KEY, MEMBERS, Net, entry


def test_reordered_member_lists_still_sync_both_ways():
    net = Net(MEMBERS)
    # fw2 was reloaded with the [[member]] tables in another order.
    net.nodes["fw2"] = Sync(list(reversed(MEMBERS)), "fw2", KEY, 100, net.now, Timing(),
                            lambda: net.nonces.getrandbits(64))
    net.run(3.0)
    net.local("fw1", [(OP_UPSERT, entry(1))])
    net.local("fw2", [(OP_UPSERT, entry(2))])
    net.run(1.0)
    assert entry(1).key in net.tables["fw2"] and entry(2).key in net.tables["fw1"]
    assert entry(2).key in net.tables["fw3"]
    for n in net.nodes.values():
        assert n.in_sync and not n.drops.get("misdirected") and not n.drops.get("unknown_peer")


def test_the_wire_index_is_the_place_among_sorted_names():
    text = """[cluster]\nname = "c"\nsecret_file = "/s"\n[sync]\ninterface = "s0"\n{members}
[[vip]]\nvhid = 1\ninterface = "l0"\naddress = "192.0.2.1/24"\n"""
    m = '[[member]]\nname = "{}"\nsync_address = "203.0.113.{}"\n'
    a = config.parse(tomllib.loads(text.format(members=m.format("fw2", 2) + m.format("fw1", 1))))
    b = config.parse(tomllib.loads(text.format(members=m.format("fw1", 1) + m.format("fw2", 2))))
    assert [a.wire_index(n) for n in ("fw1", "fw2")] == [b.wire_index(n) for n in ("fw1", "fw2")] == [0, 1]

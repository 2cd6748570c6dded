"""Unicast CARP ([[vip]] peers, as keepalived's unicast_peer) on a segment
that drops multicast: the election, a node loss and the preemption back all
work, while multicast adverts would not arrive at all."""
from __future__ import annotations

from carp_helpers import fast, loss_and_preemption_back, stays_settled, wait_settled
from tests.labkit import SERVER4, default_vips


def drop_carp_multicast(lab) -> None:
    """The switch drops the CARP group (IGMP snooping gone wrong, a cloud
    network): on both bridges, both families."""
    lab.run("sw", ["nft", "-f", "-"], input="""
table bridge nomcast {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ip daddr 224.0.0.18 counter drop
    ip6 daddr ff02::12 counter drop
  }
}
""")


def dropped(lab) -> int:
    out = lab.run("sw", ["nft", "list", "table", "bridge", "nomcast"]).stdout
    return sum(int(w.split()[1]) for w in out.split("counter")[1:])


def unicast_vips(lab) -> list[dict]:
    vips = default_vips(False, 0)
    for v, seg in zip(vips, ("lan", "wan")):
        v["peers"] = [lab.addr4(m, seg) for m in lab.members]
    return vips


def test_unicast_carp_fails_over_where_multicast_is_dropped(carp_lab):
    lab = carp_lab(members=2, ipv6=False, **fast())
    drop_carp_multicast(lab)
    lab.write_config(vips=unicast_vips(lab))
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1", timeout=10)
    stays_settled(lab, "fw1")
    assert dropped(lab) == 0  # nothing went to the group
    st = lab.status("fw2")
    assert all(v["counters"]["adverts_received"] > 0 for v in st["vips"])
    loss_and_preemption_back(lab, SERVER4)

"""Virtual MAC (vip.mac = "virtual") and the periodic re-announcement
(vip.garp_refresh) in the namespace lab. The LAN vips live
on macvlans with the VRRP MACs of their vhids, up on the master only, so a
client whose neighbour entries for them are static (nud permanent) keeps
forwarding through a failover and back; the strict ruleset passes what
arrives on the macvlans. The control pins the member's own MAC instead, as
a neighbour that ignores gratuitous ARP does, and is cut off."""
from __future__ import annotations

import json

from carp_helpers import fast, forwards, largest_gap, mac, neigh_mac, takeover_bound
from fwcluster.core import virtualmac
from tests.labkit import LAN_VIP4, LAN_VIP6, SERVER4, SERVER6
from tests.labkit.addresses import default_vips

LAN_VHIDS = {4: 1, 6: 3}  # default_vips: the LAN vip of each family
LAN_VIPS = {4: LAN_VIP4, 6: LAN_VIP6}


def lan_vips(**keys) -> list[dict]:
    vips = default_vips(ipv6=True, advbase=0)
    for v in vips:
        if v["interface"] == "lan0":
            v.update(keys)
    return vips


def link_up(lab, member: str, ifname: str) -> bool:
    out = lab.run(member, ["ip", "-j", "link", "show", "dev", ifname], check=False).stdout
    links = json.loads(out or "[]")
    return bool(links) and "UP" in links[0]["flags"]


def virtual_at(lab, master: str, members) -> bool:
    """Every LAN vip on its macvlan of master only, that macvlan up there
    and down on every other member (which must neither answer for the MAC
    nor take frames sent to it); the vips never on lan0 itself."""
    for family, vhid in LAN_VHIDS.items():
        name = virtualmac.ifname(vhid)
        for m in members:
            if lab.vip_state(m, vhid) != ("MASTER" if m == master else "BACKUP"):
                return False
            if (lab.has_addr(m, name, LAN_VIPS[family]) != (m == master)
                    or link_up(lab, m, name) != (m == master)
                    or lab.has_addr(m, "lan0", LAN_VIPS[family])):
                return False
    return True


def pin(lab, macs: dict) -> None:
    """The client's neighbour entries for the LAN vips, static."""
    for family, lladdr in macs.items():
        lab.run("client", ["ip", "neigh", "replace", LAN_VIPS[family], "lladdr", lladdr,
                           "dev", "eth0", "nud", "permanent"])


def test_static_neighbour_keeps_reaching_a_virtual_mac_vip(carp_lab):
    lab = carp_lab(members=2, vips=lan_vips(mac="virtual"), **fast())
    for m in lab.members:
        lab.start_carpd(m)
    assert lab.wait_for(lambda: virtual_at(lab, "fw1", lab.members), 10), lab.log_tail("fw1", "carpd")
    for m in lab.members:
        assert mac(lab, m, virtualmac.ifname(1)) == "00:00:5e:00:01:01"
        assert mac(lab, m, virtualmac.ifname(3)) == "00:00:5e:00:02:03"
    # A neighbour that resolves the vip learns the virtual MAC, never the
    # member's own (the kernel would answer for it on lan0 too).
    for _ in range(3):
        lab.run("client", ["ip", "neigh", "flush", "dev", "eth0"])
        forwards(lab, SERVER4)
        assert neigh_mac(lab, "client", LAN_VIP4) == virtualmac.mac(1, 4)
    forwards(lab, SERVER6)
    assert neigh_mac(lab, "client", LAN_VIP6) == virtualmac.mac(3, 6)
    pin(lab, {f: virtualmac.mac(h, f) for f, h in LAN_VHIDS.items()})

    bound = takeover_bound(lab, "fw1", "fw2")
    gap = largest_gap(lab, SERVER4, lambda: lab.node_loss("fw1"), watch=bound + 1.0)
    assert gap <= bound, f"client cut off {gap:.3f} s (bound {bound:.3f} s)"
    assert lab.wait_for(lambda: virtual_at(lab, "fw2", ["fw2"]), 2)
    forwards(lab, SERVER6)
    assert neigh_mac(lab, "client", LAN_VIP4) == virtualmac.mac(1, 4)  # still the pinned entry

    lab.node_return("fw1")
    lab.start_carpd("fw1")  # it preempts: the macvlan moves back
    assert lab.wait_for(lambda: virtual_at(lab, "fw1", lab.members), 8), lab.log_tail("fw1", "carpd")
    forwards(lab, SERVER4)
    forwards(lab, SERVER6)


def test_control_static_entry_for_a_members_own_mac_is_cut_off(carp_lab):
    """Without a virtual MAC the vip answers with the master's own MAC: a
    neighbour pinned to it keeps sending to the lost member."""
    lab = carp_lab(members=2, ipv6=False, **fast())
    for m in lab.members:
        lab.start_carpd(m)
    assert lab.wait_for(lambda: lab.vip_state("fw1", 1) == "MASTER"
                        and lab.vip_state("fw2", 1) == "BACKUP", 10)
    forwards(lab, SERVER4)
    pin(lab, {4: mac(lab, "fw1", "lan0")})
    bound = takeover_bound(lab, "fw1", "fw2")
    gap = largest_gap(lab, SERVER4, lambda: lab.node_loss("fw1"), watch=bound + 1.0)
    assert lab.vip_state("fw2", 1) == "MASTER"
    assert gap > bound + 0.9  # never answered again


REFRESH = 1  # s


def test_garp_refresh_repairs_a_neighbour_that_missed_the_announcement(carp_lab):
    """garp_refresh = 1: a client whose entry for the vip went wrong (it
    missed or dropped the takeover's gratuitous ARP) points at the master
    again within one refresh period and one advert; the control (refresh
    off) still has the wrong entry after that long."""
    from fwcluster.carp.core import machine
    for refresh in (REFRESH, 0):
        lab = carp_lab(members=2, ipv6=False, vips=[
            {**v, "garp_refresh": refresh} for v in default_vips(ipv6=False, advbase=0)], **fast())
        for m in lab.members:
            lab.start_carpd(m)
        assert lab.wait_for(lambda: lab.vip_state("fw1", 1) == "MASTER"
                            and lab.vip_state("fw2", 1) == "BACKUP", 10)
        forwards(lab, SERVER4)
        wrong = "02:00:00:00:00:01"
        lab.run("client", ["ip", "neigh", "replace", LAN_VIP4, "lladdr", wrong, "dev", "eth0",
                           "nud", "reachable"])
        bound = REFRESH + machine.advert_interval(0, lab.advskews["fw1"]) + 0.15
        repaired = lab.wait_for(lambda: neigh_mac(lab, "client", LAN_VIP4) == mac(lab, "fw1", "lan0"),
                                bound, 0.02)
        assert repaired == bool(refresh), (refresh, neigh_mac(lab, "client", LAN_VIP4))
        lab.teardown()

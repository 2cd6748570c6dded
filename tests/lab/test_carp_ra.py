"""IPv6 first hop (vip.ra_interval) in the namespace lab: the master of a
link-local vip sends router advertisements from it; a SLAAC client (no
static route, accept_ra) routes through that address and keeps reaching
the server through a node loss within the takeover bound."""
from __future__ import annotations

import json
import time

import pytest

from fwcluster.carp.core.ramsg import router_lifetime
from carp_helpers import fast, forwards, largest_gap, neigh_mac, takeover_bound
from fwcluster.core import virtualmac
from tests.labkit import LAN_VIP6, SERVER6
from tests.labkit.addresses import default_vips

ROUTER = "fe80::1"
RA_VHID = 5


def ra_vips(**keys) -> list[dict]:
    return default_vips(ipv6=True, advbase=0) + [
        {"vhid": RA_VHID, "interface": "lan0", "address": f"{ROUTER}/64", "advbase": 0,
         "ra_interval": 1, **keys}]


def default_routes(lab) -> list[dict]:
    out = lab.run("client", ["ip", "-j", "-6", "route", "show", "default"]).stdout
    return json.loads(out or "[]")


def slaac_client(lab) -> None:
    """The lab's client, made a SLAAC host: no static IPv6 default route,
    router adverts accepted."""
    lab.run("client", ["ip", "-6", "route", "del", "default", "via", LAN_VIP6])
    lab.run("client", ["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1",
                       "net.ipv6.conf.eth0.autoconf=1"])


@pytest.mark.parametrize("mac", ["own", "virtual"])
def test_slaac_client_keeps_its_first_hop_through_a_failover(carp_lab, mac):
    """With mac = virtual the router's address and MAC both fail over (the
    adverts name 00:00:5e:00:02:05, traffic arrives on fwvmac5)."""
    lab = carp_lab(members=2, vips=ra_vips(mac=mac), **fast())
    where = virtualmac.ifname(RA_VHID) if mac == "virtual" else "lan0"
    slaac_client(lab)
    assert default_routes(lab) == []
    for m in lab.members:
        lab.start_carpd(m)
    # the first advert on taking over, the next within ra_interval (1 s)
    assert lab.wait_for(lambda: [(r.get("gateway"), r.get("protocol")) for r in default_routes(lab)]
                        == [(ROUTER, "ra")], 10), (default_routes(lab), lab.log_tail("fw1", "carpd"))
    assert lab.vip_state("fw1", RA_VHID) == "MASTER" and lab.has_addr("fw1", where, ROUTER)
    assert not lab.has_addr("fw2", where, ROUTER)
    addrs = lab.run("client", ["ip", "-j", "-6", "addr", "show", "dev", "eth0"]).stdout
    assert any(a.get("dynamic") and a["local"].startswith("2001:db8:1:")
               for link in json.loads(addrs) for a in link["addr_info"]), addrs  # SLAAC
    forwards(lab, SERVER6)
    if mac == "virtual":
        assert neigh_mac(lab, "client", ROUTER) == virtualmac.mac(RA_VHID, 6)

    bound = takeover_bound(lab, "fw1", "fw2")
    gap = largest_gap(lab, SERVER6, lambda: lab.node_loss("fw1"), watch=bound + 1.0)
    assert gap <= bound, f"client cut off {gap:.3f} s (bound {bound:.3f} s)"
    assert lab.vip_state("fw2", RA_VHID) == "MASTER"
    # fw2 advertises now: the route outlives the lifetime fw1 last gave it
    # (3 intervals, ramsg.router_lifetime), checked every 0.1 s past it
    lifetime = router_lifetime(1)
    for _ in range(int((lifetime + 1) / 0.1)):
        assert [r.get("gateway") for r in default_routes(lab)] == [ROUTER], \
            lab.run("client", ["ip", "-6", "route"]).stdout + lab.run("client", ["ip", "-6", "neigh"]).stdout
        time.sleep(0.1)
    forwards(lab, SERVER6)

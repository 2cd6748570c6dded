"""Router advertisements of the IPv6 first hop (fwcluster.carp.core.ramsg)."""
import ipaddress
import struct

from fwcluster.carp.core import ramsg
from fwcluster.core.config import Vip


def vip(vhid, address, interface="lan0", **kw):
    return Vip(vhid, interface, ipaddress.ip_interface(address), **kw)


def test_router_advert_fields():
    msg = ramsg.ra_message(3, ["2001:db8:1::/64", "2001:db8:5::/56"], "00:00:5e:00:02:05")
    kind, code, _, hops, flags, lifetime, reachable, retrans = struct.unpack_from("!BBHBBHII", msg)
    assert (kind, code, hops, flags, lifetime, reachable, retrans) == (134, 0, 64, 0, 3, 0, 0)
    assert msg[16:24] == bytes([1, 1]) + bytes.fromhex("00005e000205")  # source link-layer address
    first, second = msg[24:56], msg[56:88]
    assert len(msg) == 88
    kind, length, plen, pflags, valid, preferred, _, prefix = struct.unpack("!BBBBIII16s", first)
    assert (kind, length, plen, pflags) == (3, 4, 64, 0xC0)  # on-link, autonomous
    assert (valid, preferred) == (ramsg.PREFIX_VALID, ramsg.PREFIX_PREFERRED)
    assert prefix == ipaddress.ip_address("2001:db8:1::").packed
    assert second[2:4] == bytes([56, 0x80])  # not a /64: on-link only, no SLAAC


def test_router_lifetime_is_three_intervals_within_the_bound():
    assert ramsg.router_lifetime(1) == 3 and ramsg.router_lifetime(200) == 600
    assert ramsg.router_lifetime(5000) == ramsg.MAX_ROUTER_LIFETIME


def test_prefixes_are_the_global_ipv6_vips_of_the_interface():
    ra = vip(5, "fe80::1/64", ra_interval=10)
    vips = [vip(1, "192.0.2.1/24"), vip(3, "2001:db8:1::1/64"), vip(6, "2001:db8:1::2/64"),
            vip(4, "2001:db8:2::1/64", interface="wan0"), ra, vip(7, "2001:db8:3::1/64")]
    assert ramsg.advertised_prefixes(vips, ra) == [ipaddress.ip_network("2001:db8:1::/64"),
                                                   ipaddress.ip_network("2001:db8:3::/64")]

"""Router advertisements of the IPv6 first hop (pure: bytes out).

SLAAC hosts route through the link-local source of the router
advertisements they hear. A member's own link-local address dies with the
member, so the cluster advertises from a link-local vip (`ra_interval`),
which moves with the master as every vip does (as VRRPv3 makes its first
IPv6 vip link-local). RFC 4861 4.2 and 4.6.
"""
from __future__ import annotations

import ipaddress
import struct

ND_ROUTER_ADVERT = 134
CUR_HOP_LIMIT = 64
MAX_ROUTER_LIFETIME = 9000  # s, RFC 4861 6.2.1
PREFIX_VALID = 2592000  # s, RFC 4861 6.2.1 AdvValidLifetime default (30 days)
PREFIX_PREFERRED = 604800  # s, AdvPreferredLifetime default (7 days)
OPT_SOURCE_LLADDR = 1
OPT_PREFIX = 3
PREFIX_ON_LINK = 0x80
PREFIX_AUTONOMOUS = 0x40
SLAAC_PREFIXLEN = 64  # RFC 4862 with Ethernet interface identifiers


def router_lifetime(interval: int) -> int:
    """How long hosts keep the default route through us: three advert
    intervals (RFC 4861's AdvDefaultLifetime default), within its bound.
    A failover longer than that would cost the LAN its default route."""
    return min(MAX_ROUTER_LIFETIME, 3 * interval)


def ra_message(lifetime: int, prefixes, mac: str) -> bytes:
    """An ICMPv6 router advertisement (the kernel fills the checksum):
    default router for `lifetime` s, each of `prefixes` on-link and, if it
    is a /64, for address autoconfiguration; our link-layer address."""
    out = struct.pack("!BBHBBHII", ND_ROUTER_ADVERT, 0, 0, CUR_HOP_LIMIT, 0, lifetime, 0, 0)
    out += struct.pack("!BB6s", OPT_SOURCE_LLADDR, 1, bytes.fromhex(mac.replace(":", "")))
    for net in prefixes:
        net = ipaddress.IPv6Network(net)
        flags = PREFIX_ON_LINK | (PREFIX_AUTONOMOUS if net.prefixlen == SLAAC_PREFIXLEN else 0)
        out += struct.pack("!BBBBIII16s", OPT_PREFIX, 4, net.prefixlen, flags, PREFIX_VALID,
                           PREFIX_PREFERRED, 0, net.network_address.packed)
    return out


def advertised_prefixes(vips, ra_vip) -> list:
    """The prefixes a link-local vip advertises: those of the global IPv6
    vips on its interface, once each, in config order."""
    out = []
    for v in vips:
        if (v.interface == ra_vip.interface and v.family == 6 and not v.address.ip.is_link_local
                and v.address.network not in out):
            out.append(v.address.network)
    return out

"""Which conntrack entries state sync carries (pure).

Not synced: CARP (it is per member by nature), the sync link's own UDP,
multicast and link-local flows (never forwarded), and every flow to or from
an address of the member itself (its sessions end with it). Virtual
addresses are not "the member's own": they move, and their flows (SNAT to a
vip, DNAT from one) must follow them.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from syncd.entry import CARP, IPS_TEMPLATE, IPS_UNTRACKED, UDP, Entry


@lru_cache(maxsize=65536)
def _scoped(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return a.is_multicast or a.is_link_local or a.is_loopback or a.is_unspecified


def syncable(e: Entry, own: frozenset, sync_port: int) -> bool:
    if e.proto == CARP or e.status & (IPS_TEMPLATE | IPS_UNTRACKED):
        return False
    if e.proto == UDP and sync_port in (e.osport, e.odport, e.rsport, e.rdport):
        return False
    for a in (e.osrc, e.odst, e.rsrc, e.rdst):
        if a in own or _scoped(a):
            return False
    return True


def own_addresses(interface_addrs, vips) -> frozenset:
    """This member's addresses (normalised strings) minus the virtual ones."""
    virtual = {str(ipaddress.ip_interface(v).ip) for v in vips}
    return frozenset(str(ipaddress.ip_address(a.split("%")[0])) for a in interface_addrs) - virtual

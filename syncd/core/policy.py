"""Which conntrack entries state sync carries (pure).

Not synced: CARP (it is per member by nature), multicast and link-local
flows (never forwarded), and every flow to or from an address of the member
itself (its sessions end with it) or any member's sync address (the sync
link's own traffic). A port alone says nothing: a forwarded flow may well
use the sync port. Virtual
addresses are not "the member's own": they move, and their flows (SNAT to a
vip, DNAT from one) must follow them.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from syncd.core.entry import CARP, IPS_TEMPLATE, IPS_UNTRACKED, Entry


@lru_cache(maxsize=65536)
def _scoped(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return a.is_multicast or a.is_link_local or a.is_loopback or a.is_unspecified


def syncable(e: Entry, own: frozenset) -> bool:
    if e.proto == CARP or e.status & (IPS_TEMPLATE | IPS_UNTRACKED):
        return False
    for a in (e.osrc, e.odst, e.rsrc, e.rdst):
        if a in own or _scoped(a):
            return False
    return True


def own_addresses(interface_addrs, vips, sync_addresses=()) -> frozenset:
    """This member's addresses (normalised strings) minus the virtual ones,
    plus every member's sync address."""
    virtual = {str(ipaddress.ip_interface(v).ip) for v in vips}
    own = {str(ipaddress.ip_address(a.split("%")[0])) for a in interface_addrs} - virtual
    return frozenset(own | {str(ipaddress.ip_address(a)) for a in sync_addresses})

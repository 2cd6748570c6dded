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


@lru_cache(maxsize=65536)
def _scoped_packed(addr: bytes) -> bool:
    return _scoped(str(ipaddress.ip_address(addr)))


# Where a wire record's addresses start (wire.py: a 24-byte head, then the
# original src, dst, 4 bytes of ports, the reply src, dst).
_ADDR_AT = {4: (24, 28, 36, 40), 6: (24, 40, 60, 76)}


def syncable_record(rec: bytes, own_packed: frozenset) -> bool:
    """syncable() of a wire record (the live event path: no Entry);
    own_packed is packed(own)."""
    # status is big endian at 8..11: TEMPLATE (bit 11) and UNTRACKED (bit 12) in byte 10
    if rec[2] == CARP or rec[10] << 8 & (IPS_TEMPLATE | IPS_UNTRACKED):
        return False
    at = _ADDR_AT.get(rec[1])
    if at is None:
        return False
    n = 4 if rec[1] == 4 else 16
    for i in at:
        a = rec[i:i + n]
        if a in own_packed or _scoped_packed(a):
            return False
    return True


@lru_cache(maxsize=4)
def packed(own: frozenset) -> frozenset:
    """own_addresses() as packed bytes, for syncable_record."""
    return frozenset(ipaddress.ip_address(a).packed for a in own)


def own_addresses(interface_addrs, vips, sync_addresses=()) -> frozenset:
    """This member's addresses (normalised strings) minus the virtual ones,
    plus every member's sync address."""
    virtual = {str(ipaddress.ip_interface(v).ip) for v in vips}
    own = {str(ipaddress.ip_address(a.split("%")[0])) for a in interface_addrs} - virtual
    return frozenset(own | {str(ipaddress.ip_address(a)) for a in sync_addresses})

"""Which conntrack entries state sync carries (pure).

Not synced: CARP (it is per member by nature), multicast and link-local
flows (never forwarded), and every flow to or from an address of the member
itself (its sessions end with it) or any member's sync address (the sync
link's own traffic). A port alone says nothing: a forwarded flow may well
use the sync port. Virtual
addresses are not "the member's own": they move, and their flows (SNAT to a
vip, DNAT from one) must follow them.

Within that scope, [sync] filter (config.SyncFilter, compiled by
compile_filter) says which entries carry sessions worth replicating; by
default only assured ones (TCP once established, UDP and the others once
they have traffic both ways) and their ends. `kept` is that rule, and the
live events, every dump (refresh, claim, bulk, anti-entropy) and a peer's
upserts all go through it: a dump that sent what events skip would
replicate the flood the filter is there to keep off the sync link, and
anti-entropy would see a difference it could never repair.
"""
from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache

from typing import NamedTuple

from fwcluster.core.config import NOSYNC_MARK, SyncFilter
from syncd.core.entry import (CARP, ICMP, ICMPV6, IPS_ASSURED, IPS_SEEN_REPLY, IPS_TEMPLATE,
                              IPS_UNTRACKED, TCP, Entry)


class Filter(NamedTuple):
    """A compiled [sync] filter."""
    sessions: bool              # only assured entries
    protocols: frozenset        # empty: every protocol
    ignore: tuple               # (version, first, last) integer ranges


EVERY = Filter(False, frozenset(), ())      # no filter: every entry in scope


@lru_cache(maxsize=4)
def compile_filter(f: SyncFilter) -> Filter:
    nets = [ipaddress.ip_network(n) for n in f.ignore]
    return Filter(f.states == "sessions", frozenset(f.protocols),
                  tuple((n.version, int(n.network_address), int(n.broadcast_address)) for n in nets))


def kept(proto: int, status: int, mark: int, flt: Filter) -> bool:
    """The filter's rule on an entry's protocol, conntrack status and mark
    (its addresses: _ignored)."""
    if mark & NOSYNC_MARK:
        return False
    # status 0: the kernel did not say (a kernel whose DESTROY events carry
    # no status; a live entry is always CONFIRMED). Losing the end of a
    # replicated session would leave its copy for days.
    if flt.sessions and status and not status & IPS_ASSURED:
        return False
    return not flt.protocols or proto in flt.protocols


def _ignored(version: int, n: int, flt: Filter) -> bool:
    return any(v == version and lo <= n <= hi for v, lo, hi in flt.ignore)


@lru_cache(maxsize=65536)
def _scoped(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return a.is_multicast or a.is_link_local or a.is_loopback or a.is_unspecified


def syncable(e: Entry, own: frozenset, flt: Filter = EVERY) -> bool:
    if e.proto == CARP or e.status & (IPS_TEMPLATE | IPS_UNTRACKED):
        return False
    if not kept(e.proto, e.status, e.mark, flt):
        return False
    for a in (e.osrc, e.odst, e.rsrc, e.rdst):
        if a in own or _scoped(a):
            return False
        if flt.ignore and _ignored(e.family, int(ipaddress.ip_address(a)), flt):
            return False
    return True


def young_session(e: Entry, own: frozenset, flt: Filter) -> bool:
    """An entry the sessions filter holds back only because conntrack has
    not assured it yet, though it has traffic both ways: a UDP flow (or
    GRE, UDP-Lite...) answered for less than 2 s. A member that stops
    forwarding it hands it over marked assured (syncd/handover.py): the
    new owner would otherwise drop a stream the far end pushes to the LAN.
    Not TCP (a handshake not yet complete: the client retransmits) nor ICMP
    (a new echo request opens its own entry)."""
    if not flt.sessions or e.proto in (TCP, ICMP, ICMPV6):
        return False
    if e.status & IPS_ASSURED or not e.status & IPS_SEEN_REPLY:
        return False
    return syncable(e._replace(status=e.status | IPS_ASSURED), own, flt)


@lru_cache(maxsize=65536)
def _scoped_packed(addr: bytes) -> bool:
    return _scoped(str(ipaddress.ip_address(addr)))


_U32 = struct.Struct("!I").unpack_from
# Where a wire record's addresses start (wire.py: a 24-byte head, then the
# original src, dst, 4 bytes of ports, the reply src, dst).
_ADDR_AT = {4: (24, 28, 36, 40), 6: (24, 40, 60, 76)}


def syncable_record(rec: bytes, own_packed: frozenset, flt: Filter = EVERY) -> bool:
    """syncable() of a wire record (the live event path: no Entry);
    own_packed is packed(own)."""
    # status is big endian at 8..11: TEMPLATE (bit 11) and UNTRACKED (bit 12) in byte 10
    if rec[2] == CARP or rec[10] << 8 & (IPS_TEMPLATE | IPS_UNTRACKED):
        return False
    if not kept(rec[2], _U32(rec, 8)[0], _U32(rec, 16)[0], flt):    # status, mark
        return False
    at = _ADDR_AT.get(rec[1])
    if at is None:
        return False
    n = 4 if rec[1] == 4 else 16
    for i in at:
        a = rec[i:i + n]
        if a in own_packed or _scoped_packed(a):
            return False
        if flt.ignore and _ignored(rec[1], int.from_bytes(a, "big"), flt):
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

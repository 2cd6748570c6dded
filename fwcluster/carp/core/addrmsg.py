"""rtnetlink address requests, built and read without I/O.

A takeover adds every vip that moves in one netlink write: the messages of
encode_batch() go to the kernel in one buffer, which rtnetlink handles in
the writer's own system call, so the addresses are in place (and the acks
queued) when the write returns. parse_acks() reads the acks back.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_DELADDR = 21
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
IFF_UP = 0x1
AF_INET, AF_INET6 = 2, 10
RT_SCOPE_UNIVERSE = 0

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change


@dataclass(frozen=True)
class AddrChange:
    add: bool  # False: delete
    index: int  # interface index
    vip: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    # No route for the vip's prefix: a vip on a virtual-MAC macvlan, whose
    # segment is routed through the interface itself (docs/carp.md).
    noprefixroute: bool = False


@dataclass(frozen=True)
class LinkChange:
    """Set an interface up or down (a virtual-MAC macvlan at a role change)."""
    up: bool
    index: int


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def encode(change: AddrChange | LinkChange, seq: int) -> bytes:
    """One RTM_NEWADDR / RTM_DELADDR (RTM_NEWLINK) request with an ack
    asked for. IPv6 vips skip duplicate address detection: the address must
    answer at once (the peer may still hold it for a moment)."""
    if isinstance(change, LinkChange):
        body = IFINFOMSG.pack(0, 0, change.index, IFF_UP if change.up else 0, IFF_UP)
        return NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_NEWLINK,
                             NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
    ip = change.vip.ip
    family = AF_INET if ip.version == 4 else AF_INET6
    flags = IFA_F_NODAD if ip.version == 6 and change.add else 0
    if change.add and change.noprefixroute:
        flags |= IFA_F_NOPREFIXROUTE
    body = IFADDRMSG.pack(family, change.vip.network.prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE,
                          change.index)
    body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    if flags:
        body += _attr(IFA_FLAGS, struct.pack("=I", flags))
    if change.add:
        kind, nl_flags = RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    else:
        kind, nl_flags = RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, nl_flags, seq, 0) + body


def encode_batch(changes: list, first_seq: int) -> bytes:
    """The requests in order (sequence numbers first_seq, first_seq+1, ...):
    the kernel applies them in that order."""
    return b"".join(encode(c, first_seq + i) for i, c in enumerate(changes))


def parse_acks(data: bytes) -> dict[int, int]:
    """Sequence number -> errno (0 = done) of the acks in data. Anything
    that is not an ack, or is cut short, is skipped."""
    out = {}
    pos = 0
    while pos + NLMSGHDR.size <= len(data):
        length, kind, _, seq, _ = NLMSGHDR.unpack_from(data, pos)
        if length < NLMSGHDR.size or pos + length > len(data):
            break
        if kind == NLMSG_ERROR and length >= NLMSGHDR.size + 4:
            (error,) = struct.unpack_from("=i", data, pos + NLMSGHDR.size)
            out[seq] = -error
        pos += (length + 3) & ~3
    return out

"""Tell the segment that a vip now lives here.

IPv4: gratuitous ARP (a request and a reply, sender = target = the vip), so
neighbours update an existing cache entry to our MAC. IPv6: an unsolicited
neighbour advertisement to all-nodes with the Override flag and our link-layer
address and the Router flag (a member forwards: a host that saw the vip's
owner as a router and hears an advertisement without the flag drops it
from its default routers, RFC 4861 7.2.5, and with it the route through
a link-local vip that sends router adverts). Frame builders are pure;
send_* do the I/O.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ALL_NODES = "ff02::1"
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
NA_FLAG_ROUTER = 0x80000000
NA_FLAG_SOLICITED = 0x40000000
NA_FLAG_OVERRIDE = 0x20000000
ICMP6_FILTER = 1  # <netinet/icmp6.h>: a socket option at IPPROTO_ICMPV6
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def mac_bytes(mac: str) -> bytes:
    b = bytes.fromhex(mac.replace(":", ""))
    if len(b) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return b


def garp_frames(mac: str, vip: str) -> list[bytes]:
    """Ethernet frames: gratuitous ARP request and reply for vip at mac."""
    src, ip = mac_bytes(mac), ipaddress.IPv4Address(vip).packed
    frames = []
    for op, target_mac in ((1, bytes(6)), (2, BROADCAST)):
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, src, ip, target_mac, ip)
        frames.append(BROADCAST + src + struct.pack("!H", ETH_P_ARP) + arp)
    return frames


def na_message(mac: str, vip: str, solicited: bool = False) -> bytes:
    """ICMPv6 neighbour advertisement body (the kernel fills the checksum)."""
    target = ipaddress.IPv6Address(vip).packed
    option = struct.pack("!BB6s", 2, 1, mac_bytes(mac))  # target link-layer address
    flags = NA_FLAG_ROUTER | NA_FLAG_OVERRIDE | (NA_FLAG_SOLICITED if solicited else 0)
    return struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, flags) + target + option


def ns_target(message: bytes) -> str | None:
    """The target of an ICMPv6 neighbour solicitation, or None for anything
    else (hop limit and source checks are the caller's)."""
    if len(message) < 24 or message[0] != ND_NEIGHBOR_SOLICIT or message[1] != 0:
        return None
    return str(ipaddress.IPv6Address(message[8:24]))


def ns_filter() -> bytes:
    """struct icmp6_filter passing neighbour solicitations only (a set bit blocks)."""
    words = [0xFFFFFFFF] * 8
    words[ND_NEIGHBOR_SOLICIT >> 5] &= ~(1 << (ND_NEIGHBOR_SOLICIT & 31))
    return struct.pack("@8I", *words)


# One packet socket for every frame carpd sends itself, opened on first use
# and kept: opening a packet socket for ARP and binding it, and closing any
# packet socket, each wait in the kernel for an RCU grace period
# (synchronize_net). Measured on the loaded 2-core lab host: 9 ms before a
# takeover's first gratuitous ARP could leave, and 15 ms more of the event
# loop at the close. Protocol 0: it receives nothing, so it hooks into
# nothing and needs no bind; each frame names its interface.
_packet_socket: socket.socket | None = None


def send_frames(ifname: str, frames: list[bytes]) -> None:
    """Ethernet frames (ARP) out of ifname."""
    global _packet_socket
    if _packet_socket is None:
        _packet_socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    for frame in frames:
        _packet_socket.sendto(frame, (ifname, ETH_P_ARP))


def send_garp(ifname: str, mac: str, vip: str) -> None:
    send_frames(ifname, garp_frames(mac, vip))


def send_na(ifname: str, ifindex: int, mac: str, vip: str, to: str | None = None) -> None:
    """An unsolicited NA to all-nodes, or (to=) the answer to a solicitation."""
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        msg = na_message(mac, vip, solicited=to is not None)
        dest = (to or ALL_NODES, 0, 0, ifindex)
        pktinfo = [(socket.IPPROTO_IPV6, IPV6_PKTINFO,
                    ipaddress.IPv6Address(vip).packed + struct.pack("@I", ifindex))]
        try:
            s.sendmsg([msg], pktinfo, 0, dest)  # from the vip itself
        except OSError:
            s.sendmsg([msg], [], 0, dest)  # let the kernel pick (link-local)

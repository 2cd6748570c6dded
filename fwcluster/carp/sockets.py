"""Raw IP-protocol-112 sockets, one per (interface, family).

Each socket is bound to its interface, joined to the CARP group there, sends
with TTL/hop limit 255 (to the group, or unicast to configured peers) and
does not loop its own multicast back. Received
packets come out as (payload, ttl, source) for wire.decode().
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from fwcluster.carp.core import wire

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPTOS_LOWDELAY = 0x10  # what OpenBSD and ucarp set on adverts


class CarpSocket:
    def __init__(self, ifname: str, ifindex: int, family: int):
        self.ifname, self.ifindex, self.family = ifname, ifindex, family
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        s = socket.socket(af, socket.SOCK_RAW, wire.PROTO)
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
            if family == 4:
                mreqn = socket.inet_aton(wire.GROUP4) + bytes(4) + struct.pack("@i", ifindex)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, wire.TTL)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, wire.TTL)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, IPTOS_LOWDELAY)
            else:
                mreq = socket.inet_pton(socket.AF_INET6, wire.GROUP6) + struct.pack("@I", ifindex)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, wire.TTL)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, wire.TTL)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        except BaseException:
            s.close()
            raise
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes, source: str | None, dest: str | None = None) -> None:
        """Send to the CARP group (or, unicast CARP, to dest) from source (our
        own address, not a vip)."""
        if self.family == 4:
            anc = []
            if source:
                anc = [(socket.IPPROTO_IP, IP_PKTINFO,
                        struct.pack("@i4s4s", self.ifindex, socket.inet_aton(source), bytes(4)))]
            self.sock.sendmsg([payload], anc, 0, (dest or wire.GROUP4, 0))
        else:
            anc = []
            if source:
                anc = [(socket.IPPROTO_IPV6, IPV6_PKTINFO,
                        socket.inet_pton(socket.AF_INET6, source) + struct.pack("@I", self.ifindex))]
            self.sock.sendmsg([payload], anc, 0, (dest or wire.GROUP6, 0, 0, self.ifindex))

    def send_advert(self, codec, auth, action, source: str | None, peers=()) -> OSError | None:
        """Encode one advert (machine.SendAdvert) and send it to the group, or
        to each unicast peer but ourselves. Returns the error that kept it
        (or a copy of it) from going out, None when it went out."""
        payload = codec.encode(auth, action.advbase, action.advskew, action.demote, source)
        if payload is None:
            return OSError(errno.EADDRNOTAVAIL, "no address of ours to sign the advert with")
        err = None
        for dest in ([p for p in peers if p != source] if peers else [None]):
            try:
                self.send(payload, source, dest)
            except OSError as e:
                if e.errno in (errno.EADDRNOTAVAIL, errno.EINVAL) and source and not codec.binds_source:
                    try:
                        self.send(payload, None, dest)  # our address vanished: let the kernel pick
                        continue
                    except OSError as e2:
                        e = e2
                err = e
        return err

    def receive(self) -> tuple[bytes, int, str] | None:
        """One packet as (CARP payload, ttl, source); None if nothing or unparsable IP."""
        try:
            data, anc, _flags, addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(4))
        except (BlockingIOError, InterruptedError):
            return None
        if self.family == 4:
            return parse_ipv4(data)
        hops = -1
        for level, kind, value in anc:
            if level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT and len(value) >= 4:
                hops = struct.unpack("@i", value[:4])[0]
        return data, hops, addr[0].split("%")[0]


def parse_ipv4(data: bytes) -> tuple[bytes, int, str] | None:
    """Split a raw IPv4 datagram (as a raw socket returns it) into payload, TTL, source."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl:
        return None
    total = struct.unpack("!H", data[2:4])[0]
    end = total if ihl <= total <= len(data) else len(data)
    return data[ihl:end], data[8], str(ipaddress.IPv4Address(data[12:16]))

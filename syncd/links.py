"""syncd's sync links ([sync] interfaces): a UDP socket per link, bound to
this member's address on it, and the links' carrier from rtnetlink.

Which link carries a peer's stream is the core's to decide
(syncd/core/links.py); this module only reads, sends and tells the core
when a link gains or loses carrier.
"""
from __future__ import annotations

import logging
import socket
from typing import Callable

from fwcluster.carp.netlink import LinkState, Links

log = logging.getLogger("syncd")

IP_FREEBIND, IPV6_FREEBIND = 15, 78
UDP_BUF = 8 << 20


def udp_socket(addr, port: int) -> socket.socket:
    fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    s = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    # Bind before the address is configured (boot order, link flaps).
    if fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    # FORCE: past net.core.[rw]mem_max, so a burst (bulk transfer, a busy
    # moment of the peer) waits in the buffer instead of being dropped.
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):   # SO_*BUFFORCE
        try:
            s.setsockopt(socket.SOL_SOCKET, force, UDP_BUF)
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, plain, UDP_BUF)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((str(addr), port))
    return s


class LinkSet:
    """The member's sync links, in config order (the first preferred)."""

    def __init__(self, interfaces: tuple, addrs: tuple, port: int):
        self.interfaces = tuple(interfaces)
        self.port = port
        self.socks = [udp_socket(a, port) for a in addrs]
        self.carrier = [True] * len(self.socks)     # until rtnetlink tells

    def send(self, link: int, data: bytes, addr: str) -> None:
        self.socks[link].sendto(data, (addr, self.port))

    async def watch(self, on_carrier: Callable[[int, bool], None]) -> None:
        """Tell on_carrier(link, up) the carrier of every link now and on
        every change (a pulled cable moves the streams at once)."""
        nl = Links()
        await nl.open()
        try:
            states = await nl.links()
            for i, name in enumerate(self.interfaces):
                st = states.get(name)
                self._set(i, st is not None and st.carrier, on_carrier, force=True)
            async for ev in nl.watch():
                if isinstance(ev, LinkState) and ev.ifname in self.interfaces:
                    self._set(self.interfaces.index(ev.ifname), ev.carrier, on_carrier)
        finally:
            nl.close()

    def _set(self, link: int, up: bool, on_carrier, force: bool = False) -> None:
        if up == self.carrier[link] and not force:
            return
        if up != self.carrier[link]:
            log.warning("sync link %s: %s", self.interfaces[link], "carrier" if up else "no carrier")
        self.carrier[link] = up
        on_carrier(link, up)

    def close(self) -> None:
        for s in self.socks:
            s.close()

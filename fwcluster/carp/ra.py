"""The IPv6 first hop's router advertisements (`vip.ra_interval`): sent by
the master of a link-local vip, from it, to all-nodes, on taking over and
every ra_interval s while it stays master (fwcluster.carp.core.ramsg).

Leaving MASTER sends no final advert of router lifetime 0 (RFC 4861
6.2.5): the router address is the vip, which lives on at the new master,
and a zero lifetime from it, arriving after the new master's first advert,
would withdraw the hosts' default route the failover is meant to keep.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct

from fwcluster.carp.announce import ALL_NODES, IPV6_PKTINFO, SO_BINDTODEVICE
from fwcluster.carp.core import ramsg

log = logging.getLogger("carpd")


def send(ifname: str, index: int, source: str, message: bytes) -> None:
    """One router advert from `source` (a local link-local address) out of ifname."""
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        pktinfo = [(socket.IPPROTO_IPV6, IPV6_PKTINFO,
                    ipaddress.IPv6Address(source).packed + struct.pack("@I", index))]
        s.sendmsg([message], pktinfo, 0, (ALL_NODES, 0, 0, index))


class Routers:
    """One advertising task per link-local vip this member is master of."""

    def __init__(self):
        self._tasks: dict[int, asyncio.Task] = {}

    def start(self, vhid: int, interval: int, advertise) -> None:
        """Advertise now and every interval s (advertise() sends one), unless
        already advertising."""
        task = self._tasks.get(vhid)
        if task is None or task.done():
            self._tasks[vhid] = asyncio.get_running_loop().create_task(self._loop(interval, advertise))

    def stop(self, vhid: int) -> None:
        task = self._tasks.pop(vhid, None)
        if task is not None:
            task.cancel()

    def stop_all(self) -> None:
        for vhid in list(self._tasks):
            self.stop(vhid)

    @staticmethod
    async def _loop(interval: int, advertise) -> None:
        while True:
            try:
                advertise()
            except Exception as e:  # e.g. the link went down: the next one may pass
                log.warning("router advert: %s", e)
            await asyncio.sleep(interval)


def advertisement(vips, v, mac: str) -> bytes:
    return ramsg.ra_message(ramsg.router_lifetime(v.ra_interval),
                            ramsg.advertised_prefixes(vips, v), mac)

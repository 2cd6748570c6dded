"""Kernel side of carpd through pyroute2: interface state, addresses, vips.

Links.watch() yields a LinkState whenever an interface appears, changes or
disappears, and an AddressesChanged when its addresses change; carpd keeps
the carrier of every vip interface and its own (non-vip) addresses from it.
"""
from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08


@dataclass(frozen=True)
class LinkState:
    ifname: str
    index: int
    carrier: bool  # administratively up and lower layer up
    mac: str | None
    gone: bool = False


@dataclass(frozen=True)
class AddressesChanged:
    index: int


@dataclass(frozen=True)
class Address:
    family: int
    address: str
    prefixlen: int
    flags: int


def _link_state(msg, gone=False) -> LinkState:
    flags = msg.get("flags") or 0
    return LinkState(ifname=msg.get("ifname"), index=msg.get("index"),
                     carrier=not gone and bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP),
                     mac=msg.get("address"), gone=gone)


def _addr_flags(msg) -> int:
    return msg.get("IFA_FLAGS") or msg.get("flags") or 0


class Links:
    def __init__(self):
        self._ipr: AsyncIPRoute | None = None
        self._mon: AsyncIPRoute | None = None

    async def open(self) -> None:
        self._ipr = AsyncIPRoute()
        self._mon = AsyncIPRoute()
        await self._mon.bind(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)

    def close(self) -> None:
        for s in (self._ipr, self._mon):
            if s is not None:
                s.close()

    async def links(self) -> dict[str, LinkState]:
        return {m.get("ifname"): _link_state(m) async for m in await self._ipr.link("dump")}

    async def addresses(self, index: int) -> list[Address]:
        out = []
        async for m in await self._ipr.addr("dump", index=index):
            out.append(Address(4 if m["family"] == 2 else 6, m.get("address"),
                               m["prefixlen"], _addr_flags(m)))
        return out

    async def watch(self):
        while True:
            async for msg in self._mon.get():
                ev = msg.get("event")
                if ev == "RTM_NEWLINK":
                    yield _link_state(msg)
                elif ev == "RTM_DELLINK":
                    yield _link_state(msg, gone=True)
                elif ev in ("RTM_NEWADDR", "RTM_DELADDR"):
                    yield AddressesChanged(msg.get("index"))

    async def add_vip(self, index: int, vip) -> None:
        """Add vip (an ip_interface); already present is fine. IPv6 skips DAD:
        the address must answer at once, and the peer may still hold it."""
        kw = {"index": index, "address": str(vip.ip), "prefixlen": vip.network.prefixlen}
        if vip.version == 6:
            kw["flags"] = IFA_F_NODAD
        try:
            await self._ipr.addr("add", **kw)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise

    async def del_vip(self, index: int, vip) -> None:
        try:
            await self._ipr.addr("del", index=index, address=str(vip.ip),
                                 prefixlen=vip.network.prefixlen)
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                raise


def own_address(addresses: list[Address], family: int, vips: set[str]) -> str | None:
    """The address adverts are sent from: a usable address of the family that
    is not a vip; for IPv6 a global one if there is one, else link-local."""
    usable = [a for a in addresses if a.family == family and a.address not in vips
              and not a.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)]
    if family == 4:
        primary = [a for a in usable if not a.flags & IFA_F_SECONDARY]
        pick = primary or usable
        return pick[0].address if pick else None
    glob = [a for a in usable if not ipaddress.IPv6Address(a.address).is_link_local]
    pick = glob or usable
    return pick[0].address if pick else None

"""Kernel side of carpd through pyroute2: interface state, addresses, vips.

Links.watch() yields a LinkState whenever an interface appears, changes or
disappears, and an AddressesChanged when its addresses change; carpd keeps
the carrier of every vip interface and its own (non-vip) addresses from it.
Vip changes skip pyroute2: change_vips() writes all of them to a plain
rtnetlink socket at once (fwcluster.carp.core.addrmsg), a system call and no
round trip through the event loop.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

from fwcluster.carp.core.addrmsg import AddrChange, LinkChange, encode_batch, parse_acks

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_SECONDARY = 0x01
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks of failed requests without the request echoed
ACK_WAIT = 0.5  # s; rtnetlink acks as it handles the write, so this is a safety net
# Errors that mean the kernel already is as asked.
ALREADY = {True: {errno.EEXIST}, False: {errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV}}


@dataclass(frozen=True)
class LinkState:
    ifname: str
    index: int
    carrier: bool  # administratively up and lower layer up
    mac: str | None
    gone: bool = False
    operstate: str | None = None  # RFC 2863 operational state, lower case ("up", "down", ...)


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
                     mac=msg.get("address"), gone=gone,
                     operstate=(msg.get("IFLA_OPERSTATE") or "").lower() or None)


def _addr_flags(msg) -> int:
    return msg.get("IFA_FLAGS") or msg.get("flags") or 0


class Links:
    def __init__(self):
        self._ipr: AsyncIPRoute | None = None
        self._mon: AsyncIPRoute | None = None
        self._rt: socket.socket | None = None  # vip changes: plain writes, no round trips
        self._seq = 0  # last sequence number used on _rt

    async def open(self) -> None:
        self._ipr = AsyncIPRoute()
        self._mon = AsyncIPRoute()
        await self._mon.bind(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        self._rt = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._rt.bind((0, 0))
        try:
            self._rt.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass

    def close(self) -> None:
        for s in (self._ipr, self._mon, self._rt):
            if s is not None:
                s.close()

    async def links(self) -> dict[str, LinkState]:
        return {m.get("ifname"): _link_state(m) async for m in await self._ipr.link("dump")}

    async def link(self, ifname: str) -> LinkState | None:
        """One interface's state by name; None when there is no such interface."""
        try:
            msgs = list(await self._ipr.link("get", ifname=ifname))
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return _link_state(msgs[0]) if msgs else None

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

    async def add_macvlan(self, ifname: str, parent: int, mac: str) -> int:
        """A macvlan (mode private, down) on interface index `parent`; its index."""
        await self._ipr.link("add", ifname=ifname, kind="macvlan", link=parent,
                             macvlan_mode="private", address=mac)
        return (await self._ipr.link_lookup(ifname=ifname))[0]

    async def delete_link(self, ifname: str) -> None:
        """Delete an interface by name; a missing one is fine."""
        found = await self._ipr.link_lookup(ifname=ifname)
        if found:
            await self._ipr.link("del", index=found[0])

    def change_vips(self, changes: list[AddrChange | LinkChange]) -> list[tuple[AddrChange, int]]:
        """Apply address (and macvlan up/down) changes in one netlink write,
        in order; return the ones that failed with their errno (already
        present on add, already gone on delete count as done)."""
        if not changes:
            return []
        if self._rt is None:
            raise OSError(errno.ENOTCONN, "netlink socket not open")
        first = self._seq + 1
        self._seq += len(changes)
        self._rt.send(encode_batch(changes, first))
        want = set(range(first, first + len(changes)))
        acks: dict[int, int] = {}
        while want - acks.keys():
            ready, _, _ = select.select([self._rt], [], [], ACK_WAIT)
            if not ready:
                break
            acks.update(parse_acks(self._rt.recv(65536)))
        failed = []
        for i, c in enumerate(changes):
            err = acks.get(first + i, errno.ETIMEDOUT)
            if err and not (isinstance(c, AddrChange) and err in ALREADY[c.add]):
                failed.append((c, err))
        return failed

    def add_vip(self, index: int, vip) -> None:
        """Add vip (an ip_interface); already present is fine."""
        self._raise(self.change_vips([AddrChange(True, index, vip)]))

    def del_vip(self, index: int, vip) -> None:
        self._raise(self.change_vips([AddrChange(False, index, vip)]))

    @staticmethod
    def _raise(failed) -> None:
        for c, err in failed:
            raise OSError(err, f"{'adding' if c.add else 'removing'} {c.vip}: {os.strerror(err)}")


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

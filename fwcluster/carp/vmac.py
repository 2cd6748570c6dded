"""Virtual-MAC vips (`mac = "virtual"`): one macvlan per vip, master only.

carpd creates fwvmac<vhid> on the vip's interface with the vhid's VRRP MAC
(fwcluster.core.virtualmac) and keeps it down: a backup neither answers for
that MAC nor accepts frames sent to it. Taking over sets it up and adds the
vip to it, releasing removes the vip and sets it down, in the same netlink
write as every other vip change. The vip has no prefix route there: traffic
to the segment keeps leaving through the interface itself, with the
member's own MAC; only what is sent to the vip's MAC arrives on the
macvlan, which the ruleset matches by its name (fwcluster.nft).
"""
from __future__ import annotations

import logging
from pathlib import Path

from fwcluster.carp.core.addrmsg import AddrChange, LinkChange
from fwcluster.core import virtualmac
from fwcluster.core.config import Vip

log = logging.getLogger("carpd")

PROC_NET = Path("/proc/sys/net")
# Every macvlan (of either family): it answers ARP only for an IPv4 vip of
# its own (not for the parent's addresses nor another macvlan's vip, which
# it would name with its own MAC), accepts its clients' traffic although
# their route leaves through the parent (loose reverse path), and has no
# IPv6 address of its own nor learns from router adverts.
MACVLAN_SYSCTLS = {"ipv4/conf/{}/arp_ignore": "1", "ipv4/conf/{}/rp_filter": "2",
                   "ipv6/conf/{}/addr_gen_mode": "1", "ipv6/conf/{}/accept_ra": "0",
                   "ipv6/conf/{}/accept_dad": "0"}
# The parent answers ARP only for its own addresses: by default Linux
# answers for any local address, the vip on the macvlan included, with the
# parent's MAC, and the last reply wins in the neighbour's cache.
PARENT_SYSCTLS = {4: {"ipv4/conf/{}/arp_ignore": "1"}, 6: {}}


def _sysctls(settings: dict, ifname: str) -> None:
    for key, value in settings.items():
        try:
            (PROC_NET / key.format(ifname)).write_text(value)
        except OSError as e:
            log.warning("sysctl %s = %s: %s", key.format(ifname), value, e)


class Macvlans:
    def __init__(self, links):
        self.links = links
        self.index: dict[int, int] = {}  # vhid -> macvlan index
        self._parent: dict[int, int] = {}  # vhid -> parent index it was made on

    async def ensure(self, vips, parent: str, parent_index: int) -> None:
        """The macvlans of the virtual-MAC vips on interface `parent` exist
        (made afresh at start, after a reload and when the parent was
        re-created, which takes its macvlans along); those of vips that are
        gone or no longer virtual are deleted."""
        want = {v.vhid: v for v in vips if v.interface == parent and v.mac == virtualmac.VIRTUAL}
        for vhid in [h for h in self._parent if h not in {v.vhid for v in vips
                                                         if v.mac == virtualmac.VIRTUAL}]:
            await self._delete(vhid)
        for vhid, v in want.items():
            if self._parent.get(vhid) == parent_index:
                continue
            name = virtualmac.ifname(vhid)
            try:
                await self.links.delete_link(name)  # a leftover may be up with the vip
                _sysctls(PARENT_SYSCTLS[v.family], parent)
                self.index[vhid] = await self.links.add_macvlan(
                    name, parent_index, virtualmac.mac(vhid, v.family))
                self._parent[vhid] = parent_index
                _sysctls(MACVLAN_SYSCTLS, name)
                log.info("vhid %d: virtual MAC %s on %s (on %s)", vhid,
                         virtualmac.mac(vhid, v.family), name, parent)
            except Exception as e:
                log.error("vhid %d: cannot create macvlan %s on %s: %s", vhid, name, parent, e)

    async def _delete(self, vhid: int) -> None:
        self.index.pop(vhid, None)
        self._parent.pop(vhid, None)
        try:
            await self.links.delete_link(virtualmac.ifname(vhid))
        except Exception as e:
            log.warning("deleting %s: %s", virtualmac.ifname(vhid), e)

    async def remove_all(self) -> None:
        for vhid in list(self._parent):
            await self._delete(vhid)

    def changes(self, add: bool, v: Vip, parent_index: int) -> list:
        """The netlink changes that add or remove vip v."""
        if v.mac != virtualmac.VIRTUAL:
            return [AddrChange(add, parent_index, v.address)]
        index = self.index.get(v.vhid)
        if index is None:
            log.warning("vhid %d: no macvlan %s: vip %s not %s", v.vhid, virtualmac.ifname(v.vhid),
                        v.address, "added" if add else "removed")
            return []
        if add:
            return [LinkChange(True, index), AddrChange(True, index, v.address, noprefixroute=True)]
        return [AddrChange(False, index, v.address), LinkChange(False, index)]

    def announcer(self, v: Vip, ifname: str, index: int, mac: str) -> tuple[str, int, str]:
        """(interface, index, MAC) a vip is announced from."""
        if v.mac == virtualmac.VIRTUAL and v.vhid in self.index:
            return virtualmac.ifname(v.vhid), self.index[v.vhid], virtualmac.mac(v.vhid, v.family)
        return ifname, index, mac

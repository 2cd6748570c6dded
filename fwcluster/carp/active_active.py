"""Active-active balancing inside carpd: one CARP election per hash bucket,
the owned-bucket set in nftables, and the vips held on every member.

fwcluster.core.hashbuckets decides (pure): the buckets, each one's vhid and rotated
advskew, which buckets a set of CARP states owns. This module is carpd's
I/O for it, hooked into the shell (fwcluster.carp.node) at a few points:
events and timers of the bucket machines, the actions they produce, link
and demotion changes, shutdown and status.

* Bucket elections are ordinary CARP machines (fwcluster.carp.core.machine)
  with their own vhids, advertised on the first vip's interface and
  family. Their HMAC covers the first vip's address. Demotion (link,
  maintenance, syncd / sync_hold) applies to them exactly as to the vips,
  so a returning member takes its buckets back only once it is in sync.
* A bucket machine's AddVip / RemoveVip mean "claim" / "release": the
  worker makes the nft owned set match the machines (one transaction).
* Every vip resolves to its multicast MAC and is held on every member whose
  interface is up; the MAC is joined with a packet socket, so a killed
  carpd leaves no membership behind. IPv4: the template rewrites the
  members' ARP, our gratuitous ARP is built with that MAC. IPv6: the kernel
  would answer neighbour solicitations with the member's own MAC (and nft
  cannot rewrite an ICMPv6 option and its checksum), so the template drops
  the kernel's advertisements for a balanced vip and carpd answers the
  solicitations itself (a raw ICMPv6 socket per interface, hop limit 255
  checked), naming the vip's MAC, and announces it with unsolicited NAs.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Coroutine

from fwcluster import nft
from fwcluster.core import hashbuckets
from fwcluster.carp import announce, timers
from fwcluster.carp.core import machine, wire

log = logging.getLogger("carpd")

SOL_PACKET = 263
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
RETRY_OWNED = 1.0  # seconds between attempts to set the owned set after a failure


# --- actions of the balancing side (queued on carpd's ordered worker) -----------

@dataclass(frozen=True)
class HoldVips:
    """Add an interface's vips, join their MACs, announce them."""
    interface: str


@dataclass(frozen=True)
class SyncOwned:
    """Make the nft owned-bucket set match the bucket machines."""


@dataclass(frozen=True)
class Release:
    """Shutdown: drop the vips, the MAC memberships and every bucket."""


# --- pure helpers ------------------------------------------------------------------

def _counters() -> dict:
    return {"adverts_sent": 0, "adverts_received": 0,
            "drops": {r: 0 for r in sorted(wire.DROP_REASONS)}}


def bucket_status(plan, states: dict, masters: dict, applied, error: str | None,
                  interface: str, counters: dict | None = None) -> dict:
    """The "buckets" object of carpd's status. states/masters: vhid -> CARP
    state / master address (None when unknown)."""
    per = []
    by_master: dict[str, list[int]] = {}
    for e in plan:
        st, master = states.get(e.vhid), masters.get(e.vhid)
        row = {"bucket": e.bucket, "vhid": e.vhid, "state": st, "master": master,
               "advskew": e.advskew, "preferred": e.preferred}
        if counters is not None:
            c = counters[e.vhid]
            row["counters"] = {"adverts_sent": c["adverts_sent"],
                               "adverts_received": c["adverts_received"],
                               "drops": sum(c["drops"].values())}
        per.append(row)
        if master:
            by_master.setdefault(master, []).append(e.bucket)
    return {"count": len(plan), "interface": interface,
            "owned": sorted(hashbuckets.owned_buckets(states, plan)),
            "applied": None if applied is None else sorted(applied),
            "error": error, "by_master": by_master, "per_bucket": per}


def _hop_limit(ancillary) -> int:
    for level, kind, value in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT and len(value) >= 4:
            return struct.unpack("@i", value[:4])[0]
    return -1


def membership_request(ifindex: int, mac: str) -> bytes:
    """struct packet_mreq for PACKET_ADD_MEMBERSHIP of a multicast MAC."""
    return struct.pack("@iHH8s", ifindex, PACKET_MR_MULTICAST, 6, announce.mac_bytes(mac))


def garp_frames(eth_source: str, sender_mac: str, vip: str) -> list[bytes]:
    """Gratuitous ARP request and reply for vip at sender_mac (the vip's
    multicast MAC), sent in Ethernet frames from eth_source (our own MAC:
    a bridge drops frames with a multicast source)."""
    src, hw, ip = announce.mac_bytes(eth_source), announce.mac_bytes(sender_mac), \
        ipaddress.IPv4Address(vip).packed
    frames = []
    for op, target_mac in ((1, bytes(6)), (2, announce.BROADCAST)):
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, hw, ip, target_mac, ip)
        frames.append(announce.BROADCAST + src + struct.pack("!H", announce.ETH_P_ARP) + arp)
    return frames


# --- the I/O side --------------------------------------------------------------------

@dataclass
class Host:
    """What carpd lends its active-active side, and all that side may use of it."""
    cfg: object                              # fwcluster.core.config.Config
    node: str
    iface: Callable[[str], object]           # name -> carpd's Iface (index, mac, own, socks) or None
    links: object                            # fwcluster.carp.netlink.Links
    queue: Callable[[object], None]          # onto carpd's ordered worker (-> Balancing.do)
    publish: Callable[[dict], None]          # a role event for control-socket subscribers
    changed: Callable[[], None]              # a role changed (metrics)
    spawn: Callable[[Coroutine], object]     # a task carpd cancels when it stops
    codec: object                            # fwcluster.carp.core.modes: signs the adverts


@dataclass
class BucketRun:
    election: hashbuckets.BucketElection
    machine: machine.VhidMachine
    auth: object  # the codec's Auth (wire.Auth or hardened.Auth)
    counters: dict = field(default_factory=_counters)
    timer: asyncio.TimerHandle | None = None


class Balancing:
    """The active-active part of one carpd (fwcluster.carp.node.Carpd)."""

    def __init__(self, host: Host, plan, secret: bytes, demotion: int):
        self.host = host
        cfg = host.cfg
        first = cfg.vips[0]
        self.interface, self.family = first.interface, first.family
        self.peers = first.peers  # unicast CARP: bucket adverts go where the first vip's go
        self.plan = tuple(plan)
        self.runs: dict[int, BucketRun] = {}
        for e in self.plan:
            m = machine.VhidMachine(e.vhid, e.advbase, e.advskew, preempt=cfg.carp.preempt,
                                    demotion=demotion)
            cookie = int.from_bytes(secrets.token_bytes(8), "big") or 1
            self.runs[e.vhid] = BucketRun(e, m, host.codec.auth(secret, e.vhid, [first.address.ip],
                                                                cookie))
        self.held = list(cfg.vips)
        self.applied: frozenset | None = None  # contents of the nft set we last wrote
        self.error: str | None = None
        self.stopping = False
        self._joined: dict[str, tuple[int, socket.socket]] = {}  # ifname -> (ifindex, packet socket)
        self._ns: dict[str, tuple[int, socket.socket]] = {}  # ifname -> (ifindex, ICMPv6 NS socket)
        self._retry: asyncio.Task | None = None

    @classmethod
    def create(cls, host: Host, secret: bytes, demotion: int) -> "Balancing | None":
        """The active-active side, or None in active-standby mode."""
        if host.cfg.balance.mode != "active-active":
            return None
        return cls(host, hashbuckets.elections_for(host.cfg, host.node), secret, demotion)

    # --- hooks called by carpd ----------------------------------------------------
    def runs_on(self, ifname: str, family: int) -> dict[int, BucketRun]:
        """Bucket runs whose adverts arrive on (ifname, family)."""
        if (ifname, family) != (self.interface, self.family):
            return {}
        return self.runs

    def event(self, vhid: int, event) -> None:
        actions = self.runs[vhid].machine.handle(event, timers.now())
        timers.carry_out(actions, self.runs, self._timer, self._role_changed, self._queue)

    def addresses_changed(self, ifname: str, own: dict) -> None:
        """Our own addresses on ifname (family -> address): the bucket
        elections' source address and tie-break."""
        if ifname == self.interface:
            for vhid in self.runs:
                self.event(vhid, machine.AddressChanged(own.get(self.family)))

    def _queue(self, action) -> None:
        """A bucket machine's action, on carpd's ordered worker: a claim
        updates the owned set before the advert that follows it goes out."""
        if isinstance(action, (machine.AddVip, machine.RemoveVip)):
            self.host.queue(SyncOwned())  # claim / release the bucket
        elif isinstance(action, machine.SendAdvert) and action.to is None:
            self.host.queue(action)
        # Announce, and the advert that asks the winner for one (machine's
        # _tell_winner): a bucket has no address to announce.

    def _timer(self, vhid: int, at: float) -> None:
        self.runs[vhid].timer = None
        self.event(vhid, machine.TimerFired(at))

    def _role_changed(self, run: BucketRun, change: machine.RoleChanged) -> None:
        log.info("bucket %d (vhid %d): %s -> %s (%s)", run.election.bucket, change.vhid,
                 change.old.value, change.new.value, change.reason)
        self.host.publish({"event": "role", "vhid": change.vhid, "state": change.new.value,
                                "time": time.time(), "bucket": run.election.bucket})
        self.host.changed()

    def role_snapshot(self, now: float) -> list[dict]:
        return [{"event": "role", "vhid": vhid, "state": r.machine.state.value, "time": now,
                 "bucket": r.election.bucket} for vhid, r in self.runs.items()]

    def link_changed(self, ifname: str, up: bool) -> None:
        if ifname == self.interface:
            for vhid in self.runs:
                self.event(vhid, machine.LinkChanged(up))
        if up and not self.stopping and any(v.interface == ifname for v in self.held):
            self.host.queue(HoldVips(ifname))

    def demotion_changed(self, total: int) -> None:
        for vhid in self.runs:
            self.event(vhid, machine.DemotionChanged(total))

    def start(self) -> None:
        """At start nothing is ours: a carpd that was killed may have left
        its buckets in the set (they would be carried twice)."""
        self.host.queue(SyncOwned())
        self._retry = self.host.spawn(self._retry_owned())

    def shutdown(self) -> None:
        self.stopping = True
        for vhid in self.runs:
            self.event(vhid, machine.Shutdown())
        self.host.queue(Release())

    def handles(self, action) -> bool:
        """Actions the balancing side carries out instead of carpd."""
        if isinstance(action, (HoldVips, SyncOwned, Release)):
            return True
        vhid = getattr(action, "vhid", None)
        if vhid in self.runs:
            return True
        # A held vip stays when its election is lost; an IPv4 vip is
        # announced with its multicast MAC.
        held = {v.vhid for v in self.held}
        return vhid in held and isinstance(action, (machine.RemoveVip, machine.Announce))

    async def do(self, action) -> None:
        """Bucket and hold/release work, on carpd's ordered worker."""
        if isinstance(action, SyncOwned):
            await self._sync_owned()
        elif isinstance(action, machine.SendAdvert):
            self._send_advert(action)
        elif isinstance(action, HoldVips):
            await self._hold(action.interface)
        elif isinstance(action, Release):
            await self._release()

    def do_now(self, action) -> None:
        """A held vip's action from carpd's vip flush (no waiting involved)."""
        if isinstance(action, machine.Announce):
            self._announce_vip(action.vhid)
        # RemoveVip of a held vip: kept (released only by Release).

    def status(self) -> dict:
        states = {vhid: r.machine.state.value for vhid, r in self.runs.items()}
        masters = {vhid: (r.machine.master if r.machine.state != machine.State.INIT else None)
                   for vhid, r in self.runs.items()}
        counters = {vhid: r.counters for vhid, r in self.runs.items()}
        return bucket_status(self.plan, states, masters, self.applied, self.error,
                             self.interface, counters)

    # --- owned set ------------------------------------------------------------------
    def owned(self) -> frozenset[int]:
        if self.stopping:
            return frozenset()
        states = {vhid: r.machine.state.value for vhid, r in self.runs.items()}
        return hashbuckets.owned_buckets(states, self.plan)

    async def _sync_owned(self) -> None:
        want = self.owned()
        if want == self.applied:
            return
        try:
            await asyncio.to_thread(nft.set_owned_buckets, want, run_dir=self.host.cfg.run_dir)
        except (nft.RulesetError, OSError) as e:
            if self.error != str(e):
                log.error("owned buckets %s not set: %s (retrying)", sorted(want), e)
            self.error = str(e)
            self.applied = None
            return
        if self.error:
            log.info("owned buckets set again")
        self.error = None
        self.applied = want
        log.info("owned buckets: %s", ",".join(map(str, sorted(want))) or "none")

    async def _retry_owned(self) -> None:
        """A failed update (rules not applied yet) is retried until it works."""
        while True:
            await asyncio.sleep(RETRY_OWNED)
            if not self.stopping and self.applied != self.owned():
                self.host.queue(SyncOwned())

    # --- adverts ---------------------------------------------------------------------
    def _send_advert(self, action: machine.SendAdvert) -> None:
        run = self.runs[action.vhid]
        iface = self.host.iface(self.interface)
        sock = iface.socks.get(self.family)
        if sock is None:
            return
        err = sock.send_advert(self.host.codec, run.auth, action, iface.own.get(self.family),
                               self.peers)
        if err is not None:
            log.debug("advert for bucket vhid %d not sent: %s", action.vhid, err)
            return
        run.counters["adverts_sent"] += 1

    # --- vips on every member --------------------------------------------------------
    async def _hold(self, ifname: str) -> None:
        iface = self.host.iface(ifname)
        if iface is None or iface.index is None:
            return
        for v in self.held:
            if v.interface != ifname:
                continue
            self.host.links.add_vip(iface.index, v.address)
            self._join(ifname, iface.index, hashbuckets.vip_mac(v.vhid))
            if v.family == 6:
                self._listen_ns(ifname, iface.index)
            self._announce_vip(v.vhid)

    def _listen_ns(self, ifname: str, ifindex: int) -> None:
        """Answer neighbour solicitations for the interface's IPv6 vips."""
        old = self._ns.get(ifname)
        if old is not None and old[0] == ifindex:
            return
        if old is not None:  # interface re-created
            self._close_ns(ifname)
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, announce.SO_BINDTODEVICE, ifname.encode())
            s.setsockopt(socket.IPPROTO_ICMPV6, announce.ICMP6_FILTER, announce.ns_filter())
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        except OSError as e:
            s.close()
            log.error("cannot answer neighbour solicitations on %s: %s", ifname, e)
            return
        self._ns[ifname] = (ifindex, s)
        asyncio.get_running_loop().add_reader(s.fileno(), self._ns_readable, ifname)

    def _close_ns(self, ifname: str) -> None:
        _, s = self._ns.pop(ifname)
        asyncio.get_running_loop().remove_reader(s.fileno())
        s.close()

    def _ns_readable(self, ifname: str) -> None:
        ifindex, s = self._ns[ifname]
        mine = {str(v.address.ip): v.vhid for v in self.held
                if v.interface == ifname and v.family == 6}
        for _ in range(64):  # bounded: a flood must not starve the loop
            try:
                data, anc, _flags, addr = s.recvmsg(512, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("neighbour solicitation on %s: %s", ifname, e)
                return
            target = announce.ns_target(data)
            if target not in mine or _hop_limit(anc) != 255:
                continue  # another address, or not from the link itself
            source = addr[0].split("%")[0]
            try:
                announce.send_na(ifname, ifindex, hashbuckets.vip_mac(mine[target]), target,
                                 to=None if source == "::" else source)
            except OSError as e:
                log.debug("answering %s for %s on %s: %s", source, target, ifname, e)

    def _join(self, ifname: str, ifindex: int, mac: str) -> None:
        """The NIC must accept the vip's multicast MAC. A packet socket with
        protocol 0 receives nothing; its membership ends with the socket."""
        joined = self._joined.get(ifname)
        if joined is not None and joined[0] != ifindex:  # interface re-created
            joined[1].close()
            joined = None
        if joined is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            joined = self._joined[ifname] = (ifindex, s)
        try:
            joined[1].setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership_request(ifindex, mac))
        except OSError as e:
            log.error("cannot join %s on %s: %s", mac, ifname, e)

    def _announce_vip(self, vhid: int) -> None:
        v = next(v for v in self.held if v.vhid == vhid)
        iface = self.host.iface(v.interface)
        if iface is None or iface.index is None or not iface.mac:
            return
        # Ethernet source: our own MAC (a bridge drops a multicast source);
        # ARP sender / NA target link-layer address: the vip's multicast MAC.
        try:
            if v.family == 6:
                announce.send_na(iface.name, iface.index, hashbuckets.vip_mac(vhid), str(v.address.ip))
            else:
                announce.send_frames(iface.name, garp_frames(iface.mac, hashbuckets.vip_mac(vhid),
                                                    str(v.address.ip)))
        except OSError as e:
            log.debug("announcing %s on %s: %s", v.address.ip, iface.name, e)

    async def _release(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        await self._sync_owned()  # stopping: empty
        for v in self.held:
            iface = self.host.iface(v.interface)
            if iface is not None and iface.index is not None:
                self.host.links.del_vip(iface.index, v.address)
        for _, s in self._joined.values():
            s.close()
        self._joined.clear()
        for ifname in list(self._ns):
            self._close_ns(ifname)

"""carpd's asyncio shell: turns sockets, netlink, timers and control requests
into machine events, and the machines' actions into packets and addresses.

Decisions are the machines' (fwcluster.carp.core.machine); this module only does
I/O. The vip actions of everything that happens in one turn of the event
loop (all the adverts read, timers fired, a demotion change) are carried
out together at the end of that turn: every address change in one netlink
write, then the adverts, then the gratuitous ARP / NA. So a takeover is
always vip added, advert, announce, and the vips that move together move
in one go, never queued behind slower work (the balancing side's nft
updates keep their own ordered worker).
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from fwcluster import configfile, ctlsock, version
from fwcluster import metrics as prom
from fwcluster.carp import active_active, announce, bootid, hooks, metrics, netlink, ra, timers, tracking, vmac
from fwcluster.carp.core import hookevent, machine, tracks, wire
from fwcluster.carp.core.group import FailoverGroup, Groups
from fwcluster.carp.core.hardened import Solicit
from fwcluster.carp.core.addrmsg import AddrChange
from fwcluster.carp.ctlserver import ControlServer
from fwcluster.carp.sockets import CarpSocket
from fwcluster.core import contract, reloadplan
from fwcluster.core.config import DEFAULT_GROUP, Config, ConfigError, Vip
from fwcluster.core.contract import MAINTENANCE_SOURCE, SYNC_HOLD_DEMOTE, SYNC_SOURCE

log = logging.getLogger("carpd")

MAINTENANCE_FILE = "maintenance"
RETRY_SOCKETS = 1.0  # seconds between attempts to open a missing socket
RESYNC_EVERY = 5  # re-read link state every this many RETRY_SOCKETS periods
# Textfile metrics: counter-only changes are written at most every
# TEXTFILE_PERIOD s; role/demotion changes within TEXTFILE_MIN_GAP s.
TEXTFILE_PERIOD = 5.0
TEXTFILE_MIN_GAP = 1.0
TEXTFILE_NAME = "carpd"


def new_counters() -> dict:
    return {"adverts_sent": 0, "adverts_received": 0,
            "drops": {r: 0 for r in sorted(wire.DROP_REASONS)}}


@dataclass
class VipRun:
    vip: Vip
    machine: machine.VhidMachine
    auth: wire.Auth
    counters: dict = field(default_factory=new_counters)
    timer: asyncio.TimerHandle | None = None
    told_master: str | None = None  # the heard master the last role line named


def heard_master(m: machine.VhidMachine) -> str | None:
    """The master a BACKUP hears adverts from (None otherwise): syncd's
    view of its peers' liveness (contract.peer_absent)."""
    return m.master if m.state == machine.State.BACKUP else None


@dataclass
class Iface:
    name: str
    index: int | None = None
    carrier: bool = False
    seen: bool = False  # carrier known at least once
    mac: str | None = None
    own: dict = field(default_factory=dict)  # family -> our address there
    socks: dict = field(default_factory=dict)  # family -> CarpSocket


class Carpd:
    def __init__(self, cfg: Config, node: str, secret: bytes):
        self.cfg = cfg
        self.node = node
        self.member = cfg.member(node)
        self.demotion = machine.Demotion()
        self.maintenance = self._read_maintenance()
        if self.maintenance:
            self.demotion.set(MAINTENANCE_SOURCE, cfg.carp.maintenance_demote)
        if cfg.carp.sync_hold > 0:
            self.demotion.set(SYNC_SOURCE, SYNC_HOLD_DEMOTE)
        self.secret = secret
        self.codec = bootid.codec_for(cfg)  # [carp] mode: how adverts are signed and checked
        self.vips: dict[int, VipRun] = {v.vhid: self._new_run(v) for v in cfg.vips}
        self.group = self._groups()
        self.ifaces = {name: Iface(name) for name in cfg.interfaces}
        self.links = netlink.Links()
        # [[track]]: each starts failed (demoting by its weight) until it rises.
        self.tracker = tracking.Tracker(cfg.tracks, self._track_changed, self.links)
        for source, value in self.tracker.demotions().items():
            self.demotion.set(source, value)
        self.hooks = hooks.HookRunner(lambda: self.cfg.hooks)
        self.group_role: dict[str, str] = {}  # group -> what its role hooks were last told
        self.vmacs = vmac.Macvlans(self.links)
        self.routers = ra.Routers()  # IPv6 first hop: router adverts of link-local vips
        self.ctl = ControlServer(ctlsock.socket_path(cfg.run_dir, contract.CARPD), self.handle_request,
                                 self._role_snapshot)
        self.actions: asyncio.Queue = asyncio.Queue()  # the balancing side's ordered work
        self._pending: list = []  # vip actions of this loop turn, see _flush
        self._flush_soon: asyncio.Handle | None = None
        self.stopping = asyncio.Event()
        self._sync_hold: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task] = []
        self._metrics_server: asyncio.AbstractServer | None = None
        self._metrics_kick = asyncio.Event()  # a role or demotion changed
        self._textfile_last: str | None = None
        # Active-active: per-bucket elections and vips on every member (None otherwise).
        self.balancing = active_active.Balancing.create(active_active.Host(
            cfg=cfg, node=node, iface=self.ifaces.get, links=self.links,
            queue=self.actions.put_nowait, publish=self.ctl.publish,
            changed=self._metrics_kick.set, spawn=self._spawn, codec=self.codec), secret,
            self.demotion.total)

    def _new_run(self, v: Vip) -> VipRun:
        g = self.cfg.group(v.group)
        m = machine.VhidMachine(v.vhid, v.advbase, g.skew(self.node), preempt=g.preempt,
                                demotion=self.demotion.total, garp_refresh=v.garp_refresh,
                                preempt_delay=g.preempt_delay)
        cookie = int.from_bytes(secrets.token_bytes(8), "big") or 1
        return VipRun(v, m, self._auth(v, cookie))

    def _groups(self) -> Groups:
        """One FailoverGroup per [[group]]: claims spread within a group only."""
        return Groups({g.name: FailoverGroup({vhid: r.machine for vhid, r in self.vips.items()
                                              if r.vip.group == g.name})
                       for g in self.cfg.groups})

    def _auth(self, v: Vip, cookie: int):
        return self.codec.auth(self.secret, v.vhid, [v.address.ip], cookie)

    # --- lifecycle ----------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.links.open()
        try:
            await self._start(loop)
            await self.stopping.wait()
            self.tracker.stop()
            await self._shutdown()
            await self.hooks.drain(self.cfg.hooks.timeout)
            self._write_textfile()  # leave the final (released) state behind
        finally:
            for t in self._tasks:
                t.cancel()
            if self._metrics_server is not None:
                self._metrics_server.close()
            for i in self.ifaces.values():
                self._close_sockets(i)
            self.routers.stop_all()
            await self.vmacs.remove_all()
            await self.ctl.stop()
            self.links.close()

    def stop(self) -> None:
        self.stopping.set()

    def _spawn(self, coro) -> asyncio.Task:
        """A long-lived task, cancelled when carpd stops."""
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    async def _start(self, loop) -> None:
        self._spawn(self._worker())
        self._spawn(self.hooks.run())
        if self.balancing is not None:
            self.balancing.start()
        links = await self.links.links()
        # A carpd that died as master may have left its vips behind.
        leftovers = [AddrChange(False, links[r.vip.interface].index, r.vip.address)
                     for r in self.vips.values() if r.vip.interface in links]
        for change, err in self.links.change_vips(leftovers):
            log.warning("removing leftover vip %s: %s", change.vip, os.strerror(err))
        await self.ctl.start()
        await self._start_metrics()
        if self._sync_hold is None and SYNC_SOURCE in self.demotion.sources:
            self._sync_hold = loop.call_later(self.cfg.carp.sync_hold, self._sync_hold_over)
        self._spawn(self._watch())
        self._spawn(self._retry_sockets())
        self.tracker.start()
        log.info("carpd %s (cluster %s) started: vhids %s, advskew %d, demotion %d %s",
                 self.node, self.cfg.name, ",".join(str(v) for v in self.vips),
                 self.member.advskew, self.demotion.total, self.demotion.sources or "")
        for name, iface in self.ifaces.items():
            st = links.get(name)
            if st is None:
                log.warning("interface %s does not exist (yet): treating it as down", name)
                self._link_changed(iface, False)
            else:
                await self._update_link(iface, st)

    async def _shutdown(self) -> None:
        log.info("shutting down: releasing vips")
        for vhid in self.vips:
            self._event(vhid, machine.Shutdown())
        self._flush()
        if self.balancing is not None:
            self.balancing.shutdown()
        await self.actions.join()

    # --- links and addresses ------------------------------------------------
    async def _watch(self) -> None:
        while True:
            try:
                async for ev in self.links.watch():
                    await self._netlink_event(ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # e.g. a netlink overrun: resync and go on
                log.warning("netlink monitor: %s; resynchronising", e)
                await asyncio.sleep(1.0)
                await self._resync()

    async def _netlink_event(self, ev) -> None:
        try:
            if isinstance(ev, netlink.LinkState):
                iface = self.ifaces.get(ev.ifname)
                if iface is not None:
                    await self._update_link(iface, ev)
            elif isinstance(ev, netlink.AddressesChanged):
                for iface in self.ifaces.values():
                    if iface.index == ev.index:
                        await self._refresh_addresses(iface)
        except Exception:
            log.exception("handling %s", ev)

    async def _resync(self) -> None:
        """Re-read every vip interface's state: a safety net for missed events."""
        try:
            links = await self.links.links()
        except Exception as e:
            log.debug("link dump: %s", e)
            return
        for name, iface in self.ifaces.items():
            st = links.get(name)
            if st is None:
                if iface.index is not None or iface.carrier:
                    await self._update_link(iface, netlink.LinkState(name, iface.index or 0, False,
                                                                     None, gone=True))
            else:
                await self._update_link(iface, st)

    async def _update_link(self, iface: Iface, st: netlink.LinkState) -> None:
        if st.gone:
            self._close_sockets(iface)
            iface.index = None
            self._link_changed(iface, False)
            return
        if iface.index is not None and iface.index != st.index:
            self._close_sockets(iface)  # re-created under the same name
        iface.index, iface.mac = st.index, st.mac
        await self.vmacs.ensure(self.cfg.vips, iface.name, st.index)
        await self._refresh_addresses(iface)
        self._open_sockets(iface)
        self._link_changed(iface, st.carrier)

    async def _refresh_addresses(self, iface: Iface) -> None:
        if iface.index is None:
            return
        try:
            addrs = await self.links.addresses(iface.index)
        except Exception as e:
            log.debug("addresses of %s: %s", iface.name, e)
            return
        vips = {str(r.vip.address.ip) for r in self.vips.values()}
        for fam in (4, 6):
            iface.own[fam] = netlink.own_address(addrs, fam, vips)
        for vhid, run in self.vips.items():
            if run.vip.interface == iface.name:
                self._event(vhid, machine.AddressChanged(iface.own.get(run.vip.family)))
        if self.balancing is not None:
            self.balancing.addresses_changed(iface.name, iface.own)

    def _link_changed(self, iface: Iface, up: bool) -> None:
        """Carrier of a vip interface: its vhids go INIT/BACKUP, and while it
        is down the whole member is demoted (all vips fail over together)."""
        if up != iface.carrier or not iface.seen:
            log.info("interface %s %s", iface.name, "up" if up else "down: demoting the member")
        iface.carrier, iface.seen = up, True
        source = contract.LINK_SOURCE_PREFIX + iface.name
        if up:
            self._set_demotion(source, 0)
        for vhid, run in self.vips.items():
            if run.vip.interface == iface.name:
                self._event(vhid, machine.LinkChanged(up))
        if self.balancing is not None:
            self.balancing.link_changed(iface.name, up)
        if not up:
            self._set_demotion(source, self.cfg.carp.link_demote)

    # --- sockets ------------------------------------------------------------
    def _families(self, iface: Iface) -> set[int]:
        return {r.vip.family for r in self.vips.values() if r.vip.interface == iface.name}

    def _open_sockets(self, iface: Iface) -> None:
        if iface.index is None:
            return
        loop = asyncio.get_running_loop()
        for fam in self._families(iface):
            if fam in iface.socks:
                continue
            try:
                s = CarpSocket(iface.name, iface.index, fam)
            except OSError as e:
                log.debug("cannot open IPv%d socket on %s yet: %s", fam, iface.name, e)
                continue
            iface.socks[fam] = s
            loop.add_reader(s.fileno(), self._readable, iface, s)

    def _close_sockets(self, iface: Iface) -> None:
        loop = asyncio.get_running_loop()
        for s in iface.socks.values():
            loop.remove_reader(s.fileno())
            s.close()
        iface.socks.clear()

    async def _retry_sockets(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(RETRY_SOCKETS)
            n += 1
            try:
                for iface in self.ifaces.values():
                    if iface.index is not None and len(iface.socks) < len(self._families(iface)):
                        self._open_sockets(iface)
                if n % RESYNC_EVERY == 0:
                    await self._resync()
            except Exception:
                log.exception("periodic check")

    def _readable(self, iface: Iface, sock: CarpSocket) -> None:
        for _ in range(64):  # bounded: never starve the loop under a flood
            try:
                pkt = sock.receive()
            except OSError as e:
                log.debug("receive on %s: %s", iface.name, e)
                return
            if pkt is None:
                return
            try:
                self._packet(iface, sock.family, *pkt)
            except Exception:  # never let one packet take the daemon down
                log.exception("handling a packet from %s on %s", pkt[2], iface.name)

    def _packet(self, iface: Iface, family: int, payload: bytes, ttl: int, source: str) -> None:
        here = {vhid: r for vhid, r in self.vips.items()
                if r.vip.interface == iface.name and r.vip.family == family}
        if self.balancing is not None:
            here.update(self.balancing.runs_on(iface.name, family))
        named = here.get(payload[1]) if len(payload) >= 2 else None
        if isinstance(named, VipRun) and not machine.hears_from(named.vip.peers, source):
            named.counters["drops"]["unlisted_source"] += 1   # unicast CARP: not a listed peer
            log.debug("dropped CARP packet from unlisted %s on %s (vhid %d)",
                      source, iface.name, payload[1])
            return
        own = iface.own.get(family)
        got = self.codec.decode(payload, ttl, source, {vhid: r.auth for vhid, r in here.items()}, own)
        if isinstance(got, Solicit):
            # A peer asks us to prove we are live: a master answers with its advert.
            run = here[got.vhid]
            advert = run.machine.current_advert()
            if advert is not None:
                self._send_to(iface, family, source,
                              self.codec.prove(run.auth, advert, own, got, source, timers.now()))
            return
        if isinstance(got, wire.Drop):
            targets = [here[got.vhid]] if got.vhid in here else \
                [r for r in here.values() if isinstance(r, VipRun)]
            for r in targets:
                r.counters["drops"][got.reason] += 1
            log.debug("dropped CARP packet from %s on %s: %s (vhid %s)",
                      source, iface.name, got.reason, got.vhid)
            if got.reason == "unproven":   # authentic: ask the sender to prove it is live
                self._send_to(iface, family, source,
                              self.codec.solicit(here[got.vhid].auth, source, own, timers.now()))
                # and, as master, assert ourselves: a member deaf to our
                # adverts may hold the vip too (and cannot answer the proof)
                self._event(got.vhid, machine.ContenderHeard())
            return
        here[got.vhid].counters["adverts_received"] += 1
        # hardened: a sender heard at version 4 is told we speak newer (if we do)
        self._send_to(iface, family, source,
                      self.codec.probe(here[got.vhid].auth, source, own, timers.now()))
        self._event(got.vhid, machine.AdvertReceived(got, source))

    def _send_to(self, iface: Iface, family: int, dest: str, payload: bytes | None) -> None:
        """A hardened solicitation or proof, unicast to dest (None: nothing to send)."""
        sock = iface.socks.get(family)
        if payload is None or sock is None:
            return
        try:
            sock.send(payload, iface.own.get(family), dest)
        except OSError as e:
            log.debug("CARP packet to %s on %s not sent: %s", dest, iface.name, e)

    # --- machines -----------------------------------------------------------
    def _event(self, vhid: int, event) -> None:
        if self.balancing is not None and vhid in self.balancing.runs:
            return self.balancing.event(vhid, event)
        timers.carry_out(self.group.handle(vhid, event, timers.now()), self.vips,
                         self._timer, self._role_changed, self._later)
        # A BACKUP that starts hearing a master changes no role, but syncd
        # must know (a peer heard through CARP is never absent).
        for r in self.vips.values():
            if heard_master(r.machine) != r.told_master:
                self._publish_role(r)

    def _later(self, action) -> None:
        """Gather a vip action; all of this loop turn's go out together."""
        self._pending.append(action)
        if self._flush_soon is None:
            # Runs after every callback already due in this turn.
            self._flush_soon = asyncio.get_running_loop().call_soon(self._flush)

    def _timer(self, vhid: int, at: float) -> None:
        self.vips[vhid].timer = None
        self._event(vhid, machine.TimerFired(at))

    def _role_changed(self, run: VipRun, change: machine.RoleChanged) -> None:
        v = run.vip
        log.info("vhid %d (%s %s): %s -> %s (%s)", v.vhid, v.interface, v.address,
                 change.old.value, change.new.value, change.reason)
        if change.old == machine.State.MASTER:
            self.routers.stop(v.vhid)
        self._publish_role(run)
        self._metrics_kick.set()
        self._group_role_changed(v.group, change.reason)

    def _group_role_changed(self, group: str, reason: str) -> None:
        """Role hooks run when a failover group's role changes
        (core.hookevent), once per group. They are told the group's name,
        or the cluster's for the implicit default group (one group: as
        before there were groups)."""
        vips = {vhid: r for vhid, r in self.vips.items() if r.vip.group == group}
        role = hookevent.group_role(r.machine.state.value for r in vips.values())
        old = self.group_role.get(group, hookevent.INIT)
        if role != old:
            name = self.cfg.name if group == DEFAULT_GROUP else group
            self.hooks.transition(hookevent.event(name, vips, old, role, reason, self.node,
                                                  time.time()))
            self.group_role[group] = role

    def _track_changed(self, name: str, demotion: int) -> None:
        self._set_demotion(tracks.source(name), demotion)

    def _publish_role(self, run: VipRun) -> None:
        run.told_master = heard_master(run.machine)
        self.ctl.publish(contract.role_line(run.vip.vhid, run.machine.state.value,
                                            run.told_master, time.time()))

    def _role_snapshot(self) -> list[dict]:
        now = time.time()
        lines = [contract.role_line(vhid, r.machine.state.value, heard_master(r.machine), now)
                 for vhid, r in self.vips.items()]
        if self.balancing is not None:
            lines += self.balancing.role_snapshot(now)
        return lines + [{"event": contract.SNAPSHOT_END}]

    def _set_demotion(self, source: str, value: int) -> int:
        before = self.demotion.total
        total = self.demotion.set(source, value)
        if total != before:
            log.info("demotion %d -> %d (%s)", before, total,
                     ", ".join(f"{k}={v}" for k, v in sorted(self.demotion.sources.items())) or "none")
            for vhid in self.vips:
                self._event(vhid, machine.DemotionChanged(total))
            if self.balancing is not None:
                self.balancing.demotion_changed(total)
            self._metrics_kick.set()
        return total

    def _sync_hold_over(self) -> None:
        self._sync_hold = None
        if SYNC_SOURCE in self.demotion.sources:
            log.info("sync_hold of %ds over without word from syncd: lifting its demotion",
                     self.cfg.carp.sync_hold)
            self._set_demotion(SYNC_SOURCE, 0)

    # --- carrying out actions ----------------------------------------------
    def _flush(self) -> None:
        """The vip actions gathered in this loop turn: address changes in one
        netlink write (in order), then adverts, then announcements."""
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        mine = []
        for action in batch:
            if self.balancing is not None and self.balancing.handles(action):
                self._guard(self.balancing.do_now, action)
            else:
                mine.append(action)
        changes = []
        for action in mine:
            if isinstance(action, (machine.AddVip, machine.RemoveVip)):
                v = self.vips[action.vhid].vip
                index = self.ifaces[v.interface].index
                if index is not None:
                    changes += self.vmacs.changes(isinstance(action, machine.AddVip), v, index)
        try:
            for change, err in self.links.change_vips(changes):
                log.warning("%s vip %s failed: %s", "adding" if change.add else "removing",
                            change.vip, os.strerror(err))
        except OSError as e:
            log.warning("vip changes %s failed: %s", [str(c.vip) for c in changes], e)
        for action in mine:
            if isinstance(action, machine.SendAdvert):
                self._guard(self._send_advert, action)
        for action in mine:
            if isinstance(action, machine.Announce):
                self._guard(self._announce, action)

    @staticmethod
    def _guard(do, action) -> None:
        try:
            do(action)
        except Exception as e:  # one failed send must not stop the others
            log.warning("%s failed: %s", action, e)

    def _send_advert(self, action: machine.SendAdvert) -> None:
        run = self.vips[action.vhid]
        v = run.vip
        iface = self.ifaces[v.interface]
        sock = iface.socks.get(v.family)
        if sock is None:
            return
        err = sock.send_advert(self.codec, run.auth, action, iface.own.get(v.family),
                               (action.to,) if action.to else v.peers)
        if err is not None:
            log.debug("advert for vhid %d on %s not sent: %s", v.vhid, v.interface, err)
            return
        run.counters["adverts_sent"] += 1

    def _announce(self, action: machine.Announce) -> None:
        v = self.vips[action.vhid].vip
        iface = self.ifaces[v.interface]
        if iface.index is None or not iface.mac:
            return
        ifname, index, mac = self.vmacs.announcer(v, iface.name, iface.index, iface.mac)
        if v.family == 4:
            announce.send_garp(ifname, mac, str(v.address.ip))
        else:
            announce.send_na(ifname, index, mac, str(v.address.ip))
        if v.ra_interval:
            self.routers.start(v.vhid, v.ra_interval, lambda: self._advertise_router(v.vhid))

    def _advertise_router(self, vhid: int) -> None:
        v = self.vips[vhid].vip
        iface = self.ifaces[v.interface]
        if iface.index is None or not iface.mac:
            return
        ifname, index, mac = self.vmacs.announcer(v, iface.name, iface.index, iface.mac)
        ra.send(ifname, index, str(v.address.ip), ra.advertisement(self.cfg.vips, v, mac))

    async def _worker(self) -> None:
        """The balancing side's actions, one after another (nft updates)."""
        while True:
            action = await self.actions.get()
            try:
                await self.balancing.do(action)
            except Exception as e:
                log.warning("%s failed: %s", action, e)
            finally:
                self.actions.task_done()

    # --- live reload (SIGHUP, {"cmd": "reload"}) ------------------------------
    async def reload(self, told_by: str | None = None) -> dict:
        """Re-read cluster.toml and the secret and apply what changed
        (fwcluster.core.reloadplan, the plan syncd's reload uses too): vips
        kept keep their role, removed ones are bowed out of, new ones start
        as BACKUP. A config that is bad, or that needs a restart, is refused
        and the old one runs on. Then syncd is told to reload, unless it
        asked: its own-address filter and keys come from the same config."""
        try:
            new = configfile.load(self.cfg.path, self.node)
            secret = configfile.secret(new)
        except ConfigError as e:
            log.error("reload refused: %s (the running config stays)", e)
            return {"ok": False, "error": str(e)}
        for what in ("run_dir", "state_dir"):
            if getattr(new, what) != getattr(self.cfg, what):
                log.warning("reload: cluster.%s change applies at the next restart", what)
        new = dataclasses.replace(new, run_dir=self.cfg.run_dir, state_dir=self.cfg.state_dir)
        both = reloadplan.plan(self.cfg, new, self.node, secret != self.secret)
        if isinstance(both, str):
            log.error("reload refused: %s (the running config stays)", both)
            return {"ok": False, "error": both}
        plan = both.carpd
        self._apply_reload(new, secret, plan)
        self.tracker.reconfigure(new.tracks)
        await self._resync()  # new vips and interfaces learn their links and addresses
        log.info("reloaded %s: vips added %s, removed %s, kept %s%s%s", new.path,
                 list(plan.added) or "none", list(plan.removed) or "none", list(plan.kept) or "none",
                 ", new timing" if plan.retime else "", ", new key" if plan.rekey else "")
        self._metrics_kick.set()
        if told_by != contract.SYNCD:
            why = await ctlsock.ask_reload(new.run_dir, contract.SYNCD, contract.CARPD)
            if why:
                log.info("%s", why)
        return {"ok": True, **plan.summary()}

    def _apply_reload(self, new: Config, secret: bytes, plan: reloadplan.CarpPlan) -> None:
        for vhid in plan.removed:
            self._event(vhid, machine.Shutdown())  # a master bows out and releases
        self._flush()
        for vhid in plan.removed:
            run = self.vips.pop(vhid)
            timers.rearm(run, None, None)
        self.cfg, self.member, self.secret = new, new.member(self.node), secret
        if plan.rekey:
            self.codec = self.codec.renamed(new.name)  # hardened: the key binds the name
        self.codec.keep_told({m.name for m in new.peers(self.node)})
        by_vhid = {v.vhid: v for v in new.vips}
        for vhid in plan.kept:
            run = self.vips[vhid]
            run.vip = by_vhid[vhid]
            if plan.rekey:
                run.auth = self._auth(run.vip, run.auth.cookie)
        for vhid in plan.added:
            self.vips[vhid] = self._new_run(by_vhid[vhid])
        self.vips = {v.vhid: self.vips[v.vhid] for v in new.vips}  # config order
        self.group = self._groups()
        for name in new.interfaces:
            self.ifaces.setdefault(name, Iface(name))
        for name in [n for n in self.ifaces if n not in new.interfaces]:
            self._close_sockets(self.ifaces.pop(name))
            self._set_demotion(contract.LINK_SOURCE_PREFIX + name, 0)
        if plan.retime:
            for vhid in plan.kept:
                g = new.group(by_vhid[vhid].group)
                self._event(vhid, machine.Reconfigured(g.skew(self.node), g.preempt, g.preempt_delay))
        if plan.carp_changed:
            if self.maintenance:
                self._set_demotion(MAINTENANCE_SOURCE, new.carp.maintenance_demote)
            for iface in self.ifaces.values():
                if iface.seen and not iface.carrier:
                    self._set_demotion(contract.LINK_SOURCE_PREFIX + iface.name, new.carp.link_demote)

    # --- control requests ---------------------------------------------------
    async def handle_request(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "maintenance":
            on = req.get("on")
            if not isinstance(on, bool):
                return {"ok": False, "error": "maintenance needs \"on\": true or false"}
            self.set_maintenance(on)
            return {"ok": True, "maintenance": self.maintenance}
        if cmd == contract.RELOAD:
            return await self.reload(req.get(contract.RELOAD_FROM))
        if cmd == "metrics":
            return {"ok": True, "text": self.metrics_text()}
        if cmd == contract.SET_DEMOTION:
            checked = contract.check_set_demotion(req)
            if isinstance(checked, str):
                return {"ok": False, "error": checked}
            source, value = checked
            if source == SYNC_SOURCE and self._sync_hold is not None:
                # syncd is alive and owns its demotion from now on.
                self._sync_hold.cancel()
                self._sync_hold = None
            return {"ok": True, "demotion": self._set_demotion(source, value)}
        if cmd == contract.PEER_SPEAKS:
            checked = contract.check_peer_speaks(req, [m.name for m in self.cfg.peers(self.node)])
            if isinstance(checked, str):
                return {"ok": False, "error": checked}
            member, newest = checked
            if self.codec.tell(member, newest):
                log.info("%s speaks hardened CARP up to %d (syncd heard it): adverts at %s", member,
                         newest, sorted({self.codec.version(v) for v in self.vips}))
                # A silent backup (rolled back) must read one before its
                # master-down: the next scheduled advert may come too late.
                for run in self.vips.values():
                    ad = run.machine.current_advert()
                    if ad is not None:
                        self._guard(self._send_advert, ad)
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {cmd!r} "
                "(known: status, metrics, maintenance, set-demotion, peer-speaks, reload, subscribe)"}

    def status(self) -> dict:
        total = self.demotion.total
        vips = []
        for vhid, r in self.vips.items():
            m = r.machine
            vips.append({
                "vhid": vhid, "group": r.vip.group, "interface": r.vip.interface, "address": str(r.vip.address),
                "family": r.vip.family, "state": m.state.value,
                "master": m.master if m.state != machine.State.INIT else None,
                "advbase": r.vip.advbase, "advskew": self.member.advskew,
                "demotion": total, "transitions": m.transitions,
                # hardened: the version its adverts go out at, and each sender's (None: compatible)
                "hardened_version": self.codec.version(vhid),
                "hardened_peers": self.codec.peer_versions(vhid)
                if self.codec.version(vhid) is not None else {},
                "counters": {"adverts_sent": r.counters["adverts_sent"],
                             "adverts_received": r.counters["adverts_received"],
                             "drops": dict(r.counters["drops"])},
            })
        out = {"node": self.node, "cluster": self.cfg.name, "demotion": total,
               "demotion_sources": dict(self.demotion.sources),
               "maintenance": self.maintenance, "preempt": self.cfg.carp.preempt,
               # every member must agree on both (they do not interoperate)
               "mode": self.cfg.carp.mode, "balance": self.cfg.balance.mode, "vips": vips,
               "tracks": self.tracker.status(),
               # the first group's (the only one without [[group]]), and each group's
               "group_role": self.group_role.get(self.cfg.groups[0].name, hookevent.INIT)
               if self.cfg.groups else hookevent.INIT,
               "group_roles": {g.name: self.group_role.get(g.name, hookevent.INIT)
                               for g in self.cfg.groups},
               # what syncd heard each peer speaks of hardened CARP (peer-speaks)
               "hardened_told": self.codec.told(),
               "hooks": {"runs": self.hooks.runs, "failures": self.hooks.failures,
                         "dropped": self.hooks.dropped},
               "release": version.release()}
        if self.balancing is not None:
            out["buckets"] = self.balancing.status()
        return out

    # --- metrics ----------------------------------------------------------------
    def metrics_text(self) -> str:
        return prom.render(metrics.families(self.status(), self.cfg.interfaces))

    async def _start_metrics(self) -> None:
        """The HTTP endpoint and the textfile writer, each only if configured.
        Metrics are never worth a failover: a failure is logged, not fatal."""
        listen = self.cfg.metrics.listen
        if listen:
            try:
                self._metrics_server = await prom.serve(listen, self.metrics_text)
                log.info("metrics on http://%s/metrics", listen)
            except OSError as e:
                log.error("metrics endpoint %s: %s (carrying on without it)", listen, e)
        if self.cfg.metrics.textfile_dir:
            self._metrics_kick.set()
            self._spawn(self._textfile_loop())

    def _textfile_dir(self) -> str | None:
        configured = self.cfg.metrics.textfile_dir
        return prom.textfile_dir(configured, self.node) if configured else None

    def _write_textfile(self) -> None:
        directory = self._textfile_dir()
        if directory is None:
            return
        text = self.metrics_text()
        if text == self._textfile_last:
            return
        try:
            prom.write_textfile(directory, TEXTFILE_NAME, text)
            self._textfile_last = text
        except OSError as e:
            log.warning("metrics textfile in %s: %s", directory, e)

    async def _textfile_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._metrics_kick.wait(), TEXTFILE_PERIOD - TEXTFILE_MIN_GAP)
            except asyncio.TimeoutError:
                pass
            self._metrics_kick.clear()
            self._write_textfile()
            await asyncio.sleep(TEXTFILE_MIN_GAP)

    # --- maintenance ----------------------------------------------------------
    def _maintenance_path(self) -> Path:
        return Path(self.cfg.state_dir) / MAINTENANCE_FILE

    def _read_maintenance(self) -> bool:
        try:
            return self._maintenance_path().read_text().strip() == "on"
        except FileNotFoundError:
            return False
        except OSError as e:
            log.warning("cannot read %s: %s (assuming maintenance off)", self._maintenance_path(), e)
            return False

    def set_maintenance(self, on: bool) -> None:
        path = self._maintenance_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("on\n" if on else "off\n")
        os.replace(tmp, path)  # survives a crash half-way: old or new, never empty
        if on != self.maintenance:
            log.info("maintenance %s", "on" if on else "off")
        self.maintenance = on
        self._set_demotion(MAINTENANCE_SOURCE, self.cfg.carp.maintenance_demote if on else 0)
        self._metrics_kick.set()

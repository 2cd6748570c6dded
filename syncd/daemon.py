"""syncd's asyncio shell: UDP sockets, ctnetlink, carpd link, control socket.

Everything it decides, protocol.Sync (pure) decided; this file only moves
bytes between the kernel, the network and the core, and keeps the clock.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from pathlib import Path

from pyroute2 import AsyncIPRoute

from fwcluster import ctlsock, version
from fwcluster.core import contract, hashbuckets, versions
from fwcluster import metrics as prom
from syncd.configchannel import ConfigService
from syncd import metrics
from syncd.core import keys
from syncd.conntrack import Conntrack, Overrun
from syncd.core.digest import record_key
from syncd.core.entry import OP_UPSERT, TCP
from syncd.core import wire
from syncd.core.policy import EVERY, Filter, compile_filter, own_addresses, packed, syncable, syncable_record
from syncd.core.refreshfeed import RefreshFeed
from syncd.core import ownership
from syncd.core.protocol import (Apply, Claim, Dump, Expect, InSync, PeerSpeaks, Send, Sync, Timing,
                                 Yield)
from syncd.ctexp import Expectations
from syncd.supervise import Supervisor
from syncd import antientropy, pacing, reload as live_reload
from syncd.antientropy import Rounds
from syncd.bulk import Bulks
from syncd.ctshow import Queries
from syncd.dumps import PacedDump
from syncd.handover import Handover
from syncd.links import LinkSet
from syncd.trace import Trace, profiler

log = logging.getLogger("syncd")

TICK = 0.05                  # timer resolution (resends, NACK repeats, alive)
TICK_MIN = 0.001             # a timer due now still yields to the loop
ADDR_REFRESH = 10.0          # re-read the member's own addresses (they rarely change)
COUNT_REFRESH = 2.0          # local table size reported to peers
ROLE_RESYNC_DELAY = 0.5      # after losing MASTER, let every vip move first
# Only state changes make events, so a long-lived UDP/ICMP flow would time
# out on the peers (30-180 s) while the master keeps it alive: re-send
# non-TCP entries (with their current timeouts) this often.
REFRESH_INTERVAL = 30.0
# ... but only entries whose copies on the peers run out within this: the
# next refresh, and the time a paced refresh itself may take, come first.
REFRESH_HORIZON = 2 * REFRESH_INTERVAL
# Latency: what is read in one loop turn is sent (or applied) before the
# next read, so these bound how long the first event of a burst waits for
# the last. Small enough that the peer works on one chunk while this member
# reads the next (a datagram holds ~26 records), large enough that a loop
# turn's overhead stays small against the work.
EVENT_BATCH = 128           # kernel events per turn, then packed and sent
DATAGRAM_BATCH = 16         # datagrams per turn, then one netlink batch
# Young-generation collections every 700 allocations cost a steady share
# of the hot path, which allocates only acyclic objects (entries, bytes);
# every 20,000 each stalled the loop up to 2.5 ms at 10k entries/s (a
# young collection scans what survived since the last: the sync state kept
# per entry). Every 2,000: at most 0.6 ms each, the same total time
# (SYNCD_TRACE records them).
GC_GEN0 = 2000
# Full-table refreshes go out REFRESH_CHUNK entries at a time while peers
# have at most REFRESH_WINDOW messages unacknowledged (above ack_every, so
# acks keep it flowing): live events wait behind that much, not the table.
REFRESH_CHUNK = 512
REFRESH_WINDOW = 64
# The 30 s refresh of non-TCP entries is routine, not a repair: smaller
# chunks and window, so a live event waits behind ~400 records at most (a
# few ms), not ~1700. Still ~20k entries/s (acks every ack_delay).
STATELESS_PACE = (128, 16)
DUMP_TURN = 1024            # refresh dump entries read per loop turn
# Textfile metrics: rewritten every TEXTFILE_PERIOD s (its mtime then shows
# syncd is alive), and within TEXTFILE_CHECK s of a change of sync health.
TEXTFILE_PERIOD = 5.0
TEXTFILE_CHECK = 1.0
TEXTFILE_NAME = "syncd"
# Control requests that drive the Sync core: an error in one is fatal (the
# core may be half-way through a change); any other request's is contained
# (syncd/supervise.py).
CORE_COMMANDS = frozenset({"resync", "refresh", "resync-request", antientropy.ROUND})


def new_epoch(state_dir: str) -> int:
    """A run number for operators (status, metrics): max(stored + 1, wall
    clock seconds). The protocol never compares it: a clock behind or a lost
    state_dir changes nothing (streams are bound to receiver sessions)."""
    path = Path(state_dir) / "syncd.epoch"
    try:
        old = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        old = 0
    epoch = max(old + 1, int(time.time())) & 0xFFFFFFFF
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{epoch}\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot store epoch in %s: %s", path, e)
    return epoch


class Daemon:
    def __init__(self, cfg, node: str, secret: bytes, timing: Timing = Timing()):
        self.cfg, self.node = cfg, node
        self.me = cfg.member(node)
        self.port = cfg.sync.port
        self.key = keys.sync_key(secret, cfg.name)
        self.timing = timing
        self.own = frozenset()
        self.roles: dict[int, str] = {}
        self.heard: dict[int, str | None] = {}   # vhid -> the master carpd hears as BACKUP
        # Active-active: vhid -> bucket of each bucket election (carpd's
        # role events name them); empty in active-standby.
        self.bucket_vhids = {e.vhid: e.bucket for e in hashbuckets.elections_for(cfg, node)}
        self.carpd_ok = False
        self.carpd_ready = False    # carpd's role snapshot read on the current link
        self.told_demotion: int | None = None
        # Each peer's newest hardened CARP version, from its sync ALIVE
        # (PeerSpeaks), and what carpd has been told of it on this link.
        self.carp_speaks: dict[str, int] = {}
        self.carp_told: dict[str, int] = {}
        self._tell_lock = asyncio.Lock()
        self.counters = {"events": 0, "events_skipped": 0, "overruns": 0, "refreshes": 0,
                         "send_errors": 0, "applied_records": 0, "apply_skipped": 0,
                         "role_resyncs": 0, "stateless_refreshed": 0, "claim_refreshes": 0}
        self.sup = Supervisor(log)
        self._resync_timer = None
        # Config sync (fwctl config push/diff) shares the sync link and secret.
        self.configsvc = ConfigService(cfg, node, secret)
        self.trace = Trace.from_env(node)     # debug mode (syncd/trace.py): None in service
        # The jobs that read the whole table, each on dump sockets of its
        # own (syncd/dumps.py): the refresh (feed, refresh_dump), bulk
        # transfers, anti-entropy rounds, fwctl conntrack.
        self.feed = RefreshFeed(REFRESH_CHUNK, REFRESH_WINDOW)
        self._feed_soon = False
        self._tick_at = float("inf")     # when the ticker wakes (self.now() clock)
        self._tick_timer: asyncio.TimerHandle | None = None
        self._tick_woken: asyncio.Future | None = None
        self._dump_stateless = False
        self.refresh_dump: PacedDump | None = None
        self.bulks = Bulks(self, REFRESH_CHUNK, REFRESH_WINDOW, DUMP_TURN)
        self.rounds = Rounds(self)
        self.queries = Queries()
        self.handover = Handover(self, DUMP_TURN)

    def now(self) -> float:
        return time.monotonic()

    @property
    def sync_filter(self) -> Filter:
        """[sync] filter of the config in force (a reload changes it)."""
        return compile_filter(self.cfg.sync.filter)

    # --- startup -----------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        prof, prof_path = profiler(self.node)
        # Start-up objects (modules, config) never die: keep them out of
        # every collection, so a full one is short (p99 lag).
        gc.freeze()
        gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])
        self.epoch = new_epoch(self.cfg.state_dir)
        self.ct = Conntrack()
        self.exp = Expectations(self.ct)
        self.refresh_dump = PacedDump(loop, self.on_dump, self.on_dump_end, DUMP_TURN, paced=False)
        self.links = LinkSet(self.cfg.sync.interfaces, self.me.link_addresses, self.port)
        members = live_reload.members(self.cfg)
        for m in self.cfg.peers(self.node):
            if m.sync_address.version != self.me.sync_address.version:
                log.error("peer %s sync_address %s: family differs from ours (%s); not reachable",
                          m.name, m.sync_address, self.me.sync_address)
        await self.refresh_addresses()
        self.sync = Sync(members, self.node, self.key, self.epoch, self.now(), self.timing,
                         speaks=version.speaks("sync"), about=about())
        self.sync.local_entries = self.ct.count()
        self.server = await ctlsock.serve(ctlsock.socket_path(self.cfg.run_dir, contract.SYNCD), self.handle)
        await self.configsvc.start()
        loop.add_reader(self.ct.fileno(), self.on_events)
        for link, sock in enumerate(self.links.socks):
            loop.add_reader(sock.fileno(), self.on_datagrams, link)
        loop.add_reader(self.exp.fileno(), self.on_expectations)
        self.sup.install(loop)
        self.sup.on_hangup = lambda: loop.create_task(self.reload())
        self.configsvc.on_installed = self.reload
        self.configsvc.on_error = self.sup.contain
        tasks = [self.sup.start(self.ticker(), "ticker"),
                 self.sup.start(self.carpd_link(), "carpd_link"),
                 self.sup.start(self.links.watch(self.on_carrier), "sync links"),
                 self.sup.start(self.housekeeping(), "housekeeping"),
                 self.sup.start(self.configsvc.run(), "config")]
        metrics_server = await self.start_metrics(tasks)
        log.info("syncd %s: epoch %d, %s port %d, peers %s", self.node, self.epoch,
                 ", ".join(f"{i} {a}" for i, a in zip(self.links.interfaces, self.me.link_addresses)),
                 self.port, ", ".join(n for n, _ in members if n != self.node))
        self.sync.tick(self.now())
        self.process()
        await self.sup.stopping.wait()
        for t in tasks:
            t.cancel()
        if metrics_server is not None:
            metrics_server.close()
        self.write_textfile()  # the state at a clean stop
        if self.trace is not None:
            self.trace.write()
        if prof is not None:
            prof.disable()
            prof.dump_stats(prof_path)
        loop.remove_reader(self.ct.fileno())
        for job in (self.refresh_dump, self.bulks, self.rounds, self.queries, self.handover):
            job.close()
        for sock in self.links.socks:
            loop.remove_reader(sock.fileno())
        loop.remove_reader(self.exp.fileno())
        self.exp.close()
        self.server.close()
        self.ct.close()
        self.links.close()
        return self.sup.exit_status

    async def refresh_addresses(self) -> None:
        try:
            async with AsyncIPRoute() as ipr:
                addrs = [a.get("address") async for a in await ipr.addr("dump")]
        except OSError as e:
            log.warning("cannot read local addresses: %s", e)
            return
        # The vips of the config in force (one copy: a reload of either daemon reloads both).
        self.own = own_addresses([a for a in addrs if a], [str(v.address) for v in self.cfg.vips],
                                 [m.sync_address for m in self.cfg.members])

    # --- I/O callbacks -------------------------------------------------------------------
    def on_events(self) -> None:
        now = self.now()
        trace = self.trace
        try:
            # A bounded batch keeps the loop responsive (acks, control socket);
            # the reader fires again while events are pending.
            events = self.ct.read_records(limit=EVENT_BATCH)
        except Overrun:
            # Events were lost: send the whole table again (upserts repair
            # NEW/UPDATE; lost DESTROYs leave entries on peers to time out).
            self.counters["overruns"] += 1
            log.warning("conntrack event overrun: refreshing peers from a full dump")
            self.full_refresh(now)
            return
        own, flt = packed(self.own), self.sync_filter
        records = [r for r in events if syncable_record(r, own, flt)]
        self.counters["events"] += len(events)
        self.counters["events_skipped"] += len(events) - len(records)
        if records:
            if trace is not None:
                read = self.now()
            if self.feed.active:    # a dump copy older than these must not go
                self.feed.touch(map(record_key, records))
            self.sync.local_records(records, now)
            if trace is not None:
                encoded = self.now()
            self.sync.flush(now, delay_acks=True)
            self.process()
            if trace is not None:
                trace.sent_batch(now, read, encoded, self.now(), records)

    def on_expectations(self) -> None:
        """Expectations the kernel made or ended here go to the peers
        (syncd/ctexp.py, syncd/core/expect.py)."""
        now = self.now()
        records = self.exp.read_records(limit=EVENT_BATCH)
        if records:
            self.sync.local_expectations(records, now)
            self.sync.flush(now, delay_acks=True)
            self.process()

    def full_refresh(self, now: float) -> None:
        self.counters["refreshes"] += 1
        self.start_dump(stateless=False)

    def start_dump(self, stateless: bool) -> None:
        """A refresh from a dump read between live events (on_dump); a full
        one replaces a running one, a stateless one never does. A full
        refresh is a repair and not paced; a stateless one is routine."""
        if not self.feed.start([], replace=not stateless, open=True,
                               pace=STATELESS_PACE if stateless else None):
            return
        self._dump_stateless = stateless
        self.refresh_dump.start(turn=pacing.BACKGROUND_TURN if stateless else DUMP_TURN,
                                paced=stateless)

    def on_dump(self, entries: list) -> None:
        own, flt = self.own, self.sync_filter
        entries = [e for e in entries if syncable(e, own, flt)]
        if self._dump_stateless:
            entries = self.sync.refreshable([e for e in entries if e.proto != TCP], self.now(),
                                            REFRESH_HORIZON)
            self.counters["stateless_refreshed"] += len(entries)
        else:                       # a repair: everything we may speak for
            entries = self.sync.claimable(entries)
        encode = wire.encode_record
        self.feed.add([encode(OP_UPSERT, e) for e in entries])
        if not self._feed_soon:
            self.feed_refresh()

    def on_dump_end(self, error: str | None) -> None:
        if error is not None:
            log.warning("refresh: %s (what was read is sent; the next refresh repairs the rest)",
                        error)
        self.feed.end()
        if not self._feed_soon:
            self.feed_refresh()

    def backlog(self) -> int:
        """Messages the slowest reachable peer has not acknowledged yet."""
        return max((len(p.tx.queue) for p in self.sync.peers.values() if p.state == "up"), default=0)

    def feed_refresh(self) -> None:
        """Send the next chunk of a running refresh, if the peers keep up;
        called again after each chunk, on acks (datagrams) and on ticks."""
        self._feed_soon = False
        t0 = pacing.mark()
        chunk = self.feed.next_chunk(self.backlog())
        if chunk is None:
            return
        if chunk:
            now = self.now()
            self.sync.local_records(chunk, now)
            self.sync.flush(now, delay_acks=True)
            self.process()
        if self.feed.pending and not self._feed_soon:
            # After the loop's next look at the sockets: live events first;
            # a routine refresh after a pause too (syncd/pacing.py).
            self._feed_soon = True
            loop = asyncio.get_running_loop()
            if self._dump_stateless:
                loop.call_later(pacing.pause(t0), self.feed_refresh)
            else:
                loop.call_soon(self.feed_refresh)

    def on_carrier(self, link: int, up: bool) -> None:
        """A sync link gained or lost carrier: the core moves the streams."""
        self.sync.set_carrier(link, up, self.now())
        self.process()

    def on_datagrams(self, link: int = 0) -> None:
        now = self.now()
        trace = self.trace
        recv_s = auth_s = 0.0
        sock = self.links.socks[link]
        for _ in range(DATAGRAM_BATCH):
            if trace is not None:
                t0 = self.now()
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError as e:
                log.debug("recv: %s", e)
                break
            if trace is not None:
                t1 = self.now()
            self.sync.datagram(addr[0], data, now)
            if trace is not None:
                recv_s, auth_s = recv_s + t1 - t0, auth_s + self.now() - t1
        if trace is not None:
            received = self.now()
        # Acks wait for ack_every messages, ack_delay or the next tick: one
        # per datagram would wake the sender once per message it sends.
        self.sync.flush(now, delay_acks=True)
        self.process()
        if trace is not None:
            trace.applied_batch(now, recv_s, auth_s, received, self.now())
        if self.feed.pending and not self._feed_soon:
            self.feed_refresh()     # acks may have opened the window

    def process(self) -> None:
        """Carry out the core's actions; a Dump starts a paced bulk
        (syncd/bulk.py)."""
        while True:
            actions = merge_applies(self.sync.drain())
            if not actions:
                self.bulks.wake()   # acks may have opened a bulk's window
                self.tick_sooner()
                return
            for a in actions:
                if isinstance(a, Send):
                    try:
                        self.links.send(a.link, a.data, a.addr)
                    except OSError as e:
                        self.counters["send_errors"] += 1
                        log.debug("send to %s: %s", a.addr, e)
                elif isinstance(a, Apply):
                    self.apply(a)
                elif isinstance(a, Expect):
                    self.exp.apply(a.records, self.now())
                elif isinstance(a, Dump):
                    self.bulks.start(a.peer)    # read and sent between live events
                elif isinstance(a, Claim):
                    self.counters["claim_refreshes"] += 1
                    self.start_dump(stateless=False)    # claimable(): what we forward now
                elif isinstance(a, Yield):
                    self.handover.start(a.was)          # young flows to the new owner
                elif isinstance(a, InSync):
                    log.info("in sync: %s", a.value)
                    asyncio.get_running_loop().create_task(self.tell_carpd())
                elif isinstance(a, PeerSpeaks):
                    self.on_peer_speaks(a)

    def apply(self, a: Apply) -> None:
        """The core split what is ours (a.keep: flows we forward) from the
        rest and dropped what must not touch our flows."""
        # A peer's deletes pass the filter: one for an entry we never took
        # costs nothing, and a delete record need not carry the entry's state.
        own, flt = self.own, self.sync_filter
        records = [(op, e) for op, e in a.records
                   if syncable(e, own, flt if op == OP_UPSERT else EVERY)]
        self.counters["apply_skipped"] += len(a.records) - len(records)
        if records:
            # A refresh's dump copy of what a peer changed since is stale:
            # sent as ours, it would undo that change on the peer.
            if self.feed.active:
                self.feed.touch(record_key(wire.encode_record(op, e)) for op, e in records)
            if self.trace is not None:
                self.trace.applying(self.now(), records)
            # A bulk replaces stale copies of flows others forward; the
            # entries of flows we forward are the live ones: kept.
            self.ct.apply(records, replace=a.replace and not a.keep, keep_existing=a.keep)
            self.counters["applied_records"] += len(records)

    # --- timers ----------------------------------------------------------------------------
    async def ticker(self) -> None:
        """The core's timers and the expectations' retries: every TICK while
        anything is in flight or waits; on idle streams only when an ALIVE, a
        peer timeout or a link's silence is due (Sync.next_tick), so an idle
        member wakes a few times a second, not 20."""
        loop = asyncio.get_running_loop()
        while True:
            now = self.now()
            self._tick_woken = loop.create_future()
            self.arm_tick(now, self.tick_due(now))
            await self._tick_woken
            self.sync.tick(self.now())
            self.exp.retry(self.now())
            self.process()
            if self.feed.pending and not self._feed_soon:
                self.feed_refresh()   # a peer that went down no longer holds it back

    def tick_due(self, now: float) -> float:
        # A refresh held back by a peer's window, and expectations waiting
        # for their master (ctexp retry), are tried again every tick.
        if self.feed.pending or self.exp.waiting.items:
            return now + TICK
        return self.sync.next_tick(now, TICK)

    def arm_tick(self, now: float, at: float) -> None:
        if self._tick_timer is not None:
            self._tick_timer.cancel()
        self._tick_at = at
        self._tick_timer = asyncio.get_running_loop().call_later(
            max(at - now, TICK_MIN), _wake, self._tick_woken)

    def tick_sooner(self) -> None:
        """Work arrived while the ticker sleeps through an idle stream: its
        timers (resends, delayed ACKs) run from the next TICK on."""
        now = self.now()
        if self._tick_woken is None or self._tick_woken.done() or self._tick_at - now <= TICK:
            return
        due = self.tick_due(now)
        if due < self._tick_at:
            self.arm_tick(now, due)

    def refresh_stateless(self) -> None:
        """Re-send the non-TCP entries of the flows this member forwards
        (Sync.refreshable decides which)."""
        if self.sync.forwarding == ownership.NOTHING:
            return      # a backup: no dump for nothing
        self.start_dump(stateless=True)     # no-op while a refresh is on its way

    async def housekeeping(self) -> None:
        last_addr = last_count = 0.0
        last_digest = self.now()
        # Half an interval out of step with the anti-entropy rounds (both
        # default to 30 s): two background jobs at once would take twice
        # their CPU share, and live events would queue behind them.
        last_refresh = last_digest - REFRESH_INTERVAL / 2
        while True:
            # Asleep until the first job is due (at most COUNT_REFRESH: a
            # reload's digest_interval applies from the next wakeup).
            now = self.now()
            await asyncio.sleep(max(0.0, min(last_digest + self.cfg.sync.digest_interval, last_addr + ADDR_REFRESH,
                                             last_count + COUNT_REFRESH, last_refresh + REFRESH_INTERVAL) - now))
            now = self.now()
            if now - last_digest >= self.cfg.sync.digest_interval:
                last_digest = now
                self.rounds.start()             # read between live events
            if now - last_addr >= ADDR_REFRESH:
                last_addr = now
                try:
                    await self.refresh_addresses()
                except Exception as e:  # the old addresses stay in force
                    self.sup.contain("address refresh", e)
            if now - last_count >= COUNT_REFRESH:
                last_count = now
                try:
                    self.sync.local_entries = self.ct.count()
                except Exception as e:  # a figure for status; the next one may work
                    self.sup.contain("table size refresh", e)
            if now - last_refresh >= REFRESH_INTERVAL:
                last_refresh = now
                try:
                    self.refresh_stateless()
                except Exception as e:
                    log.warning("refresh of non-TCP entries failed: %s", e)

    # --- carpd ------------------------------------------------------------------------------
    def carrying(self) -> bool:
        return contract.carrying(self.roles.values())

    def demotion(self) -> int:
        return contract.sync_demotion(self.sync.in_sync, self.carrying())

    async def tell_carpd(self) -> None:
        """Send carpd our demotion as it is when the request goes out; one
        request at a time, so an older value never arrives last."""
        path = ctlsock.socket_path(self.cfg.run_dir, contract.CARPD)
        async with self._tell_lock:
            value = self.demotion()
            try:
                await ctlsock.arequest(path, contract.set_demotion(contract.SYNC_SOURCE, value))
                self.carpd_ok, self.told_demotion = True, value
            except (ctlsock.ControlError, OSError, ValueError) as e:
                self.carpd_ok = False
                log.debug("carpd: %s", e)

    def on_peer_speaks(self, a: PeerSpeaks) -> None:
        """A peer's run told what it speaks: carpd sends its adverts at a
        hardened version that peer reads, even while it is silent."""
        newest = versions.peer_newest(contract.CARP_PROTOCOL, a.speaks, a.sync_newest)
        if newest is None or self.carp_speaks.get(a.peer) == newest:
            return
        log.info("%s speaks hardened CARP up to %d: telling carpd", a.peer, newest)
        self.carp_speaks[a.peer] = newest
        if self.carpd_ready:
            asyncio.get_running_loop().create_task(self.tell_carpd_speaks())

    async def tell_carpd_speaks(self) -> None:
        """Tell carpd every peer's hardened CARP version it was not told on
        this link (one request at a time, like the demotion)."""
        path = ctlsock.socket_path(self.cfg.run_dir, contract.CARPD)
        async with self._tell_lock:
            peers = {m.name for m in self.cfg.peers(self.node)}    # a reload may have removed one
            for peer, newest in list(self.carp_speaks.items()):
                if self.carp_told.get(peer) == newest or peer not in peers:
                    continue
                try:
                    reply = await ctlsock.arequest(path, contract.peer_speaks(peer, newest))
                except (ctlsock.ControlError, OSError, ValueError) as e:
                    log.debug("carpd: %s", e)
                    return
                if reply.get("ok"):
                    self.carp_told[peer] = newest
                else:
                    log.warning("carpd refused what %s speaks: %s", peer, reply.get("error"))

    async def carpd_link(self) -> None:
        """Follow carpd's role lines. Our demotion is told once carpd's
        snapshot is read (whether we carry traffic decides it: a restarted
        syncd on the master must not ask for the sync hold), again on every
        connect, and whenever it changes."""
        path = ctlsock.socket_path(self.cfg.run_dir, contract.CARPD)
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(path, limit=ctlsock.MAX_LINE)
            except (OSError, ValueError):
                self.carpd_ok = False
                await asyncio.sleep(0.5)
                continue
            self.carpd_ready, self.told_demotion = False, None
            self.carp_told = {}     # a carpd that (re)started knows nothing of it
            try:
                writer.write(json.dumps({"cmd": contract.SUBSCRIBE}).encode() + b"\n")
                await writer.drain()
                while line := await reader.readline():
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(ev, dict):
                        self.on_carpd_line(ev)
            except (OSError, ValueError):
                pass
            finally:
                writer.close()
            self.carpd_ok = self.carpd_ready = False
            await asyncio.sleep(0.5)

    def on_carpd_line(self, ev: dict) -> None:
        if ev.get("event") == contract.ROLE:
            self.on_role(ev.get("vhid"), ev.get("state"), ev.get("master"))
        elif ev.get("event") == contract.SNAPSHOT_END:
            self.carpd_ready = True
            if self.carp_speaks:
                asyncio.get_running_loop().create_task(self.tell_carpd_speaks())
        if self.carpd_ready and self.demotion() != self.told_demotion:
            asyncio.get_running_loop().create_task(self.tell_carpd())

    def on_role(self, vhid, state, master=None) -> None:
        old = self.roles.get(vhid)
        self.roles[vhid] = state
        if master != self.heard.get(vhid):
            self.heard[vhid] = master
            log.info("vhid %s: %s, carpd hears master %s", vhid, state, master or "none")
        self.sync.set_carp_heard(any(self.heard.values()))
        if old == state:
            return
        log.info("vhid %s: %s", vhid, state)
        self.sync.set_forwarding(ownership.from_roles(self.roles, self.bucket_vhids,
                                                      self.cfg.balance.buckets,
                                                      ownership.group_indexes(self.cfg)), self.now())
        self.process()
        if old == "MASTER":
            # A peer carries our flows from now on and our entries go stale
            # (TCP windows): ask for a bulk that replaces them (debounced, all
            # vips move together).
            if self._resync_timer is not None:
                self._resync_timer.cancel()
            loop = asyncio.get_running_loop()
            self._resync_timer = loop.call_later(ROLE_RESYNC_DELAY, self._resync_after_role)

    def _resync_after_role(self) -> None:
        self._resync_timer = None
        if "MASTER" not in self.roles.values():
            log.info("lost the master role: asking peers for a bulk transfer")
            self.counters["role_resyncs"] += 1
            self.sync.resync(self.now())
            self.process()

    # --- live reload (syncd/reload.py) ------------------------------------------------------------
    async def reload(self, told_by: str | None = None) -> dict:
        """SIGHUP, {"cmd": "reload"}, a config push that changed files, or
        carpd's reload: syncd reloads, then tells carpd to (unless carpd
        asked; an older carpd may not know the request)."""
        try:
            reply = live_reload.reload(self)
        except Exception as e:  # a reload must never end syncd: the old config runs on
            self.sup.contain("reload (old config kept)", e)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if reply["ok"]:
            if "vips" in reply["changed"]:
                await self.refresh_addresses()   # a new vip is not an own address
            self.sync.set_carp_heard(any(self.heard.values()))   # a new run may have begun
            self.process()
            if told_by != contract.CARPD:
                why = await ctlsock.ask_reload(self.cfg.run_dir, contract.CARPD, contract.SYNCD)
                if why:
                    log.info("%s", why)
        return reply

    # --- control socket ------------------------------------------------------------------------
    async def handle(self, req: dict) -> dict:
        """A control request; an error is fatal only if the request drove
        the core (CORE_COMMANDS), else contained and answered."""
        try:
            return await self.handle_request(req)
        except Exception as e:
            where = f"control request {req.get('cmd')!r}"
            if req.get("cmd") in CORE_COMMANDS:
                self.sup.fail(where, e)
            else:
                self.sup.contain(where, e)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    async def handle_request(self, req: dict) -> dict:
        cmd = req.get("cmd")
        reply = await self.configsvc.handle_control(req)
        if reply is not None:
            return reply
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "metrics":
            return {"ok": True, "text": self.metrics_text()}
        if cmd == "conntrack":        # fwctl conntrack show|count, from a paced dump
            return await self.queries.answer(req)
        if cmd == "resync":
            self.full_refresh(self.now())
            return {"ok": True}
        if cmd == "refresh":          # the routine non-TCP refresh, now (tests, operators)
            self.refresh_stateless()
            return {"ok": True}
        if cmd == "resync-request":   # ask every peer for a bulk, as after losing MASTER
            self.sync.resync(self.now())
            self.process()
            return {"ok": True}
        if cmd == contract.RELOAD:
            return await self.reload(req.get(contract.RELOAD_FROM))
        if cmd == antientropy.ROUND:
            return {"ok": True, **await self.rounds.run()}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def status(self) -> dict:
        try:    # fresh for fwctl sync; housekeeping alone lags up to COUNT_REFRESH
            self.sync.local_entries = self.ct.count()
        except Exception as e:  # never let a stats hiccup fail a status request
            log.debug("count: %s", e)
        st = self.sync.status(self.now())
        links = link_status(st, self.links.interfaces, self.links.carrier)
        return {"links": links, "node": self.node, "cluster": self.cfg.name,
                "sync_address": str(self.me.sync_address), "port": self.port,
                "carpd": self.carpd_ok, "demotion": self.demotion(),
                "roles": {str(k): v for k, v in sorted(self.roles.items())},
                "carp_heard": self.sync.carp_heard, "waiting": waiting(st, self.sync.carp_heard),
                "kernel": dict(self.ct.stats), "last_error": self.ct.last_error,
                "counters": {**self.counters, **self.sync.owner_counters, **self.exp.status(),
                             "handover_sent": self.handover.sent,
                             "callback_errors": self.sup.contained},
                "config": self.configsvc.status(),
                "anti_entropy": self.rounds.last, "release": version.release(), **st}

    # --- metrics (docs/metrics.md) ------------------------------------------------------------
    def metrics_text(self) -> str:
        return prom.render(metrics.families(self.status()))

    async def start_metrics(self, tasks: list):
        """The HTTP endpoint (port of [metrics] listen + 1) and the textfile
        writer, each only if configured. A metrics failure is logged, never fatal."""
        server = None
        if self.cfg.metrics.listen:
            try:
                listen = prom.listen_for(self.cfg.metrics.listen, "syncd")
                server = await prom.serve(listen, self.metrics_text)
                log.info("metrics on http://%s/metrics", listen)
            except ValueError as e:
                log.error("metrics endpoint: %s (carrying on without it)", e)
            except OSError as e:
                log.error("metrics endpoint %s: %s (carrying on without it)", listen, e)
        if self.cfg.metrics.textfile_dir:
            tasks.append(self.sup.start(self.textfile_loop(), "textfile"))
        return server

    def write_textfile(self) -> None:
        if not self.cfg.metrics.textfile_dir:
            return
        directory = prom.textfile_dir(self.cfg.metrics.textfile_dir, self.node)
        try:
            prom.write_textfile(directory, TEXTFILE_NAME, self.metrics_text())
        except OSError as e:
            log.warning("metrics textfile in %s: %s", directory, e)

    async def textfile_loop(self) -> None:
        last_health, last_write = None, float("-inf")
        while True:
            try:
                health = metrics.health(self.status())
                if health != last_health or self.now() - last_write >= TEXTFILE_PERIOD:
                    self.write_textfile()
                    last_health, last_write = health, self.now()
            except Exception as e:  # metrics only; the next turn tries again
                self.sup.contain("metrics textfile", e)
            await asyncio.sleep(TEXTFILE_CHECK)


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def about() -> wire.About:
    """What this member's version 3 ALIVEs tell its peers: its release and
    the versions of every negotiated protocol it speaks (after its cap)."""
    r = version.release()
    return wire.About(r["version"], tuple((n, lo, hi) for n, (lo, hi) in r["speaks"].items()))


def waiting(st: dict, carp_heard: bool) -> dict[str, str]:
    """Why each peer still holds up in_sync (fwctl status and sync say it)."""
    if st["in_sync"]:
        return {}
    out = {}
    for name, p in st["peers"].items():
        if p["resync"] != "pending":
            continue
        if p["state"] == "up":
            out[name] = "bulk transfer under way"
        elif p.get("unintelligible") is not None:
            out[name] = versions.unintelligible(name, "sync", p["unintelligible"],
                                                st["sync_versions"])
        elif carp_heard:
            out[name] = "heard by CARP, silent on the sync link"
        else:
            out[name] = "silent on the sync link"
    return out


def link_status(st: dict, interfaces: tuple, carrier: list) -> dict:
    """Links by name in the status: each peer's link in use and every
    link's state towards it (the core counts by index); per link, whether
    it has carrier and every peer answers on it."""
    for p in st["peers"].values():
        p["link"] = interfaces[p["link"]]
        p["links"] = dict(zip(interfaces, p["links"]))
    return {name: {"carrier": carrier[i],
                   "up": carrier[i] and all(p["links"][name] == "up" for p in st["peers"].values())}
            for i, name in enumerate(interfaces)}


def merge_applies(actions: list) -> list:
    """Consecutive Apply actions become one, so the kernel gets one batch of
    requests per burst of datagrams instead of one per datagram."""
    out = []
    for a in actions:
        if (isinstance(a, Apply) and out and isinstance(out[-1], Apply)
                and out[-1].replace == a.replace and out[-1].peer == a.peer
                and out[-1].keep == a.keep):
            out[-1] = Apply(out[-1].peer, out[-1].records + a.records, a.replace,
                            out[-1].fix and a.fix, a.keep)
        else:
            out.append(a)
    return out

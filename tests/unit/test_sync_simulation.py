"""Randomised, deterministic simulation of the sync protocol (pure core).

2-3 members on a fake network (loss up to 30 %, delay, reordering,
duplication) and a fake clock; members restart with and without their
tables (a syncd restart keeps the kernel table, a reboot loses it), each
run speaking sync versions 2-3 or, capped like the previous release, 2
only (a restart may upgrade or roll back); every
counter can start just below 2**32 or far up the 64-bit range. Every datagram
ever sent is tapped, and old ones are replayed at random. Bulk transfers go
out paced, as the daemon sends them: a few dump entries per step, changes
and datagrams in between.

Invariants:
  * a record is applied only in the receiver session it was sent for: never
    a recording of an earlier session, never one from before the receiver
    restarted (each record and each bulk is labelled with the session the
    sender sent it in);
  * a stream record is applied at most once per receiver run;
  * a replayed datagram (one delivered before, or sent before the receiver
    restarted) is never applied;
  * once a member has heard a peer's current run, it sends that run
    nothing of a version it does not speak, and after the quiet period
    every pair uses the newest version both speak;
  * after a quiet period every member is in sync and every peer's replica of
    each origin holds exactly the origin's table, even when streams broke
    and conntrack events were lost on the way to syncd (anti-entropy rounds
    repair both); only when the origin started a new run, or the receiver
    restarted keeping its table, may the receiver keep entries the origin
    no longer has (they are not deleted: a surviving member may carry them).

    make test                                   # SIM_SCENARIOS scenarios (2000)
    SIM_SCENARIOS=200000 make soak              # many more
    SYNC_SIM_SEED=1234 .venv/bin/python -m pytest -q tests/unit/test_sync_simulation.py
"""
from __future__ import annotations

import heapq
import os
import random

import pytest

from syncd.core import keys, wire
from syncd.core.entry import OP_DELETE, OP_UPSERT, Entry
from syncd.core.digest import record_key
from syncd.core.ownership import EVERYTHING, NOTHING
from syncd.core.protocol import Apply, Claim, Dump, InSync, Send, Sync, Timing

# make test: 2000; make soak runs 200000 (more seeds, the same checks).
SCENARIOS = int(os.environ.get("SIM_SCENARIOS", "2000"))
REPLAY = os.environ.get("SYNC_SIM_SEED")
KEY = keys.sync_key(b"sim", "sim")
MEMBERS = [("fw1", "192.0.2.1"), ("fw2", "192.0.2.2"), ("fw3", "192.0.2.3")]
# Shortened timers: fewer ticks per scenario, same ratios as the defaults.
TIMING = Timing(rto=0.2, alive=0.2, peer_timeout=0.8, resync_retry=0.4, absent_after=1.2,
                max_queue=64, max_reorder=64)
STEP = 0.05
QUIET = 4.0            # seconds without loss, restarts or replays at the end
AE_INTERVAL = 0.5      # anti-entropy rounds (the daemon: [sync] digest_interval)
LOST_EVENTS = 0.15     # a change whose conntrack events never reach syncd
BASES = (0, 2**32 - 5, 2**63 + 12345)
RANGES = ((2, 3), (2, 2))   # current, and capped to the previous release's


def how_to_replay(seed: int) -> str:
    return (f"replay: SYNC_SIM_SEED={seed} .venv/bin/python -m pytest -q "
            f"tests/unit/test_sync_simulation.py")


def entry(port: int, stamp: int, origin: int = 0) -> Entry:
    """Key by port (each origin has its own ports: one flow, one origin);
    `timeout` carries a unique stamp (which op made it), `mark` the bulk it
    travelled in (0: the stream). The stamp is in `status` too: a change
    anti-entropy must see (it ignores the remaining timeout)."""
    sport = 1024 + 100 * origin + port
    return Entry(4, 6, 0, "198.51.100.7", "203.0.113.9", sport, 443,
                 "203.0.113.9", "198.51.100.7", 443, sport, status=14 | (stamp & 0xFFFF) << 16,
                 timeout=stamp, tcp_state=3)


def plain(e: Entry) -> Entry:
    return e._replace(mark=0, timeout=0)


class Violation(AssertionError):
    pass


class Sim:
    sync_class = Sync

    def __init__(self, seed: int):
        self.rng = rng = random.Random(seed)
        self.n = rng.choice((2, 2, 3))
        self.members = MEMBERS[:self.n]
        self.names = [n for n, _ in self.members]
        self.addr = dict(self.members)
        self.name_of = {a: n for n, a in self.members}
        self.loss = rng.choice((0.0, rng.uniform(0, 0.3)))
        self.dup = rng.choice((0.0, rng.uniform(0, 0.2)))
        self.jitter = rng.choice((0.0, rng.uniform(0, 0.15)))   # delay spread: reordering
        self.base = rng.choice(BASES)
        self.now = 0.0
        self.flight = []          # heap (deliver_at, n, src, dst, data, tap index)
        self.count = 0
        self.tap = []             # [src, dst, data, sent_at, delivered]
        self.nodes, self.started, self.table, self.replica = {}, {}, {}, {}
        self.clock = {}           # per member: its monotonic clock's offset (boots reset it)
        self.cut = {}             # member -> isolated until
        self.stamp = 0
        self.sent_in = {}         # stamp -> {receiver: session the origin sent it in}
        self.bulks = {}           # bulk id -> (origin, receiver, session)
        self.applied = {}         # receiver -> set of stream stamps applied in this run
        self.orphans = set()      # (receiver, origin): leftovers allowed (see module doc)
        self.lost = 0             # changes whose events were lost
        self.paced = {}           # (origin, receiver) -> (node, dump entries not yet sent)
        # Its own generator: the scenarios' other draws stay as they were.
        self.vrng = random.Random(seed * 7919 + 1)
        self.speaks = {}          # member -> sync versions its current run speaks
        for name in self.names:
            self.table[name] = {}
            self.replica[name] = {o: {} for o in self.names if o != name}
            self.start(name)

    # --- members ----------------------------------------------------------------
    def start(self, name: str, reboot: bool = True) -> None:
        """A new run; its epoch is anything (a clock behind, lost state)."""
        if reboot or name not in self.clock:
            self.clock[name] = self.rng.choice((0.0, -self.now - 5.0, self.rng.uniform(-1e6, 1e6)))
        if name not in self.speaks or self.vrng.random() < 0.5:   # upgrade, roll back, stay
            self.speaks[name] = self.vrng.choice(RANGES)
        r = self.speaks[name]
        self.nodes[name] = self.sync_class(self.members, name, KEY, self.rng.randrange(1, 2**32),
                                           self.t(name), TIMING, lambda: self.rng.getrandbits(64),
                                           self.base, speaks=r,
                                           about=wire.About("sim", (("sync", *r),)))
        # ORIGIN forwarding (the default): every member carries its own table
        self.started[name] = self.now
        self.applied[name] = set()

    def restart(self, name: str, reboot: bool) -> None:
        """A syncd restart keeps the kernel table; a reboot empties it."""
        self.orphans |= {(o, name) for o in self.names if o != name}
        if not reboot:
            self.orphans |= {(name, o) for o in self.names if o != name}
        if reboot:
            self.table[name] = {}
            self.replica[name] = {o: {} for o in self.names if o != name}
        self.start(name, reboot)

    def t(self, name: str) -> float:
        return self.now + self.clock[name]

    def change(self, name: str) -> None:
        node, rng = self.nodes[name], self.rng
        recs = []
        origin = self.names.index(name)
        for _ in range(rng.randint(1, 6)):
            port = rng.randrange(40)
            self.stamp += 1
            if port in self.table[name] and rng.random() < 0.3:
                del self.table[name][port]
                recs.append((OP_DELETE, entry(port, self.stamp, origin)))
            else:
                e = entry(port, self.stamp, origin)
                self.table[name][port] = e
                recs.append((OP_UPSERT, e))
        if rng.random() < LOST_EVENTS:   # the kernel's events never reach syncd
            self.lost += 1
            return
        sessions = {p: node.peers[p].tx.session for p in node.peers}
        for _, e in recs:
            self.sent_in[e.timeout] = sessions
        node.local(recs, self.t(name))
        node.flush(self.t(name))
        self.process(name)

    # --- actions and the network -----------------------------------------------------
    def process(self, name: str, replayed: bool = False) -> None:
        node = self.nodes[name]
        while True:
            actions = node.drain()
            if not actions:
                return
            for a in actions:
                if isinstance(a, Send):
                    self.send(name, self.name_of[a.addr], a.data)
                elif isinstance(a, Apply):
                    if replayed:
                        raise Violation(f"{name} applied a replayed datagram from {a.peer}")
                    self.apply(name, a)
                elif isinstance(a, Dump):
                    self.bulk(name, a.peer)
                elif isinstance(a, InSync):
                    assert a.value is True
                elif isinstance(a, Claim):
                    self.claim(name)

    def claim(self, name: str) -> None:
        """Send what the member now forwards as its own (the daemon: a dump
        through claimable()). ORIGIN members never gain flows."""
        node = self.nodes[name]
        node.local([(OP_UPSERT, e) for e in node.claimable(list(self.table[name].values()))],
                   self.t(name))
        node.flush(self.t(name))

    def bulk(self, name: str, peer: str) -> None:
        """Paced, as the daemon sends it: the dump (taken now) goes out a
        few entries per step (feed_bulks), changes going on in between."""
        node = self.nodes[name]
        bid = len(self.bulks) + 1
        entries = [e._replace(mark=bid) for e in self.table[name].values()]
        node.bulk_begin(peer, self.t(name))
        self.paced[(name, peer)] = (node, entries)
        self.bulks[bid] = (name, peer, node.peers[peer].tx.session)

    def feed_bulks(self) -> None:
        for (name, peer), (node, entries) in list(self.paced.items()):
            if node is not self.nodes[name]:     # restarted: that run's bulk is gone
                del self.paced[(name, peer)]
                continue
            n = self.rng.randint(1, 8)
            piece, entries[:n] = entries[:n], []
            node.bulk_add(peer, piece, self.t(name))
            if not entries:
                del self.paced[(name, peer)]
                node.bulk_end(peer, self.t(name))
            self.process(name)

    def apply(self, name: str, a: Apply) -> None:
        node, origin = self.nodes[name], a.peer
        current = node.peers[origin].rx.session
        replica = self.replica[name][origin]
        for op, e in a.records:
            if a.fix:
                pass    # anti-entropy re-sends entries as they are now (replays: see process)
            elif e.mark:
                o, r, session = self.bulks[e.mark]
                if (o, r) != (origin, name) or session != current:
                    raise Violation(f"{name} applied bulk {e.mark} of {o}->{r} from another session")
            else:
                if self.sent_in[e.timeout].get(name) != current:
                    raise Violation(f"{name} applied record {e.timeout} of {origin} sent in "
                                    "another session (a recording or a previous run)")
                if e.timeout in self.applied[name]:
                    raise Violation(f"{name} applied record {e.timeout} of {origin} twice")
                self.applied[name].add(e.timeout)
            port = (e.osport - 1024) % 100
            if op == OP_UPSERT:
                replica[port] = plain(e)
            else:
                replica.pop(port, None)

    def send(self, src: str, dst: str, data: bytes) -> None:
        rng = self.rng
        if data[2] > self.speaks[dst][1]:
            node = self.nodes[src]
            p = node.peers[dst]
            if node.peer_version(p) is not None and p.rx.boot == self.nodes[dst].boot:
                raise Violation(f"{src} sent version {data[2]} to {dst}'s run, which it has "
                                f"heard and which speaks {self.speaks[dst]}")
        self.tap.append([src, dst, data, self.now, False])
        if rng.random() < self.loss or self.cut.get(src, 0) > self.now or self.cut.get(dst, 0) > self.now:
            return
        for _ in range(2 if rng.random() < self.dup else 1):
            self.count += 1
            at = self.now + 0.001 + rng.uniform(0, self.jitter)
            heapq.heappush(self.flight, (at, self.count, len(self.tap) - 1))

    def deliver_until(self, t: float) -> None:
        while self.flight and self.flight[0][0] <= t:
            _, _, i = heapq.heappop(self.flight)
            src, dst, data, _, _ = self.tap[i]
            self.tap[i][4] = True
            self.nodes[dst].datagram(self.addr[src], data, self.t(dst))
            self.process(dst)

    def replay(self) -> None:
        """An old datagram: delivered before, or sent before its receiver's
        current run started. Nothing may come of it but drops (and at most a
        request for a new session)."""
        rng = self.rng
        for _ in range(8):
            src, dst, data, sent, delivered = self.tap[rng.randrange(len(self.tap))]
            if delivered or sent < self.started[dst]:
                self.nodes[dst].datagram(self.addr[src], data, self.t(dst))
                self.process(dst, replayed=True)
                return

    # --- time ------------------------------------------------------------------------
    def step(self, chaos: bool) -> None:
        rng = self.rng
        self.now = round(self.now + STEP, 6)
        self.deliver_until(self.now)
        for name in self.names:
            self.nodes[name].tick(self.t(name))
            self.process(name)
        self.feed_bulks()
        if round(self.now / STEP) % round(AE_INTERVAL / STEP) == 0:
            for name in self.names:
                self.nodes[name].anti_entropy(list(self.table[name].values()), self.t(name))
                self.process(name)
        if not chaos:
            return
        if rng.random() < 0.25:
            self.change(rng.choice(self.names))
        if self.tap and rng.random() < 0.3:
            self.replay()
        if rng.random() < 0.02:
            self.restart(rng.choice(self.names), reboot=rng.random() < 0.5)
        if rng.random() < 0.01:      # a partition: the member hears and reaches nobody
            self.cut[rng.choice(self.names)] = self.now + rng.uniform(0.2, 2.0)
        if rng.random() < 0.02:      # lost the master role: ask every peer for a bulk
            name = rng.choice(self.names)
            self.nodes[name].resync(self.t(name))
            self.process(name)

    def run(self) -> None:
        for _ in range(self.rng.randint(10, 50)):
            self.step(chaos=True)
        self.run_quiet()

    def run_quiet(self) -> None:
        self.loss, self.dup, self.cut = 0.0, 0.0, {}
        for _ in range(int(QUIET / STEP)):
            self.step(chaos=False)
        self.check_converged()

    def check_converged(self) -> None:
        for name in self.names:
            node = self.nodes[name]
            if not node.in_sync:
                raise Violation(f"{name} never got in sync (locked out)")
            for origin in node.peers:
                both = min(self.speaks[name][1], self.speaks[origin][1])
                if node.sync_version(node.peers[origin]) != both:
                    raise Violation(f"{name} uses version {node.sync_version(node.peers[origin])} "
                                    f"with {origin}, not {both}")
                want = {k: plain(e) for k, e in self.table[origin].items()}
                got = self.replica[name][origin]
                missing = {k for k in want if got.get(k) != want[k]}
                if missing:
                    raise Violation(f"{name}'s replica of {origin} lacks or differs in {sorted(missing)}")
                # Anti-entropy deletes what the origin no longer has, except
                # from before a new run (see the module doc).
                if (name, origin) not in self.orphans and got.keys() != want.keys():
                    raise Violation(f"{name}'s replica of {origin} keeps {sorted(got.keys() - want.keys())}")


def run_seed(seed: int) -> Sim:
    sim = Sim(seed)
    try:
        sim.run()
    except AssertionError as e:
        raise AssertionError(f"seed {seed}: {e}\n{how_to_replay(seed)}") from e
    return sim


def test_sync_scenarios_keep_the_invariants():
    seeds = [int(REPLAY)] if REPLAY else range(SCENARIOS)
    for seed in seeds:
        run_seed(seed)


def test_simulation_is_deterministic():
    a, b = Sim(77), Sim(77)
    a.run()
    b.run()
    assert [t[2] for t in a.tap] == [t[2] for t in b.tap]


class HandoverSim(Sim):
    """Active-standby with handovers: the master forwards every flow and
    its kernel table is the truth; the others hold copies, which run out
    now and then (their DESTROYs must stay local). A handover makes
    another member master at once and tells the old one a little later
    (or earlier); the old one then asks for a bulk, as the daemon does.

    Invariants: no member applies a peer's bulk or repair copy over a flow
    it forwards (only Apply.keep creates what is missing), nor a delete of
    one it told as its own (a live update applies: it is the old master's
    last word on the flow), and after the
    quiet period every flow in the master's table is on every member,
    as the master has it, and no member holds a flow the master has not,
    except strays: flows the new master did not have when it took over
    (their events were lost and not yet repaired). Nobody forwards those;
    their copies stay until the kernel times them out, as they should."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.master = self.names[0]
        self.roles_due = []       # (at, name, forwarding) not yet told to the member
        self.strays = set()
        for name in self.names:
            self.tell(name, EVERYTHING if name == self.master else NOTHING)

    def start(self, name: str, reboot: bool = True) -> None:
        super().start(name, reboot)
        self.clock[name] = 0.0

    def tell(self, name: str, fwd) -> None:
        node = self.nodes[name]
        lost = node.forwarding == EVERYTHING and fwd != EVERYTHING
        node.set_forwarding(fwd, self.t(name))
        if lost:
            node.resync(self.t(name))
        self.process(name)

    def restart(self, name: str, reboot: bool) -> None:
        """Here: a handover to `name` (restarts are the base simulation's)."""
        if name == self.master:
            return
        old, self.master = self.master, name
        self.strays |= set().union(*self.table.values()) - set(self.table[name])
        self.roles_due = [d for d in self.roles_due if d[1] != name]   # a late word is void
        self.tell(name, EVERYTHING)
        self.roles_due.append((self.now + self.rng.uniform(-0.2, 0.6), old, NOTHING))

    def change(self, name: str) -> None:
        super().change(self.master)       # only the master's flows change

    def apply(self, name: str, a: Apply) -> None:
        table, mine = self.table[name], self.nodes[name].forwarding == EVERYTHING
        for op, e in a.records:
            port = (e.osport - 1024) % 100
            if a.keep:
                if op != OP_UPSERT or not mine:
                    raise Violation(f"{name} got a keep-apply it cannot be given: {op}, {mine}")
                table.setdefault(port, e)
            elif mine and (op == OP_UPSERT and (a.replace or a.fix)
                           or op == OP_DELETE and told_as_ours(self.nodes[name], e)):
                # A live update is the old master's last word (protocol._apply);
                # a bulk's or repair's copy, or a delete, must not touch ours.
                raise Violation(f"{name} forwards every flow but applies {a.peer}'s record "
                                f"for port {port} over it")
            elif op == OP_UPSERT:
                table[port] = e
            else:
                table.pop(port, None)

    def step(self, chaos: bool) -> None:
        super().step(chaos)
        rng = self.rng
        for due in [d for d in self.roles_due if d[0] <= self.now]:
            self.roles_due.remove(due)
            self.tell(due[1], due[2])
        if round(self.now / STEP) % round(AE_INTERVAL / STEP) == 0:
            self.claim(self.master)        # the routine refresh
            self.process(self.master)
        if chaos and rng.random() < 0.1:   # a copy runs out on a member that does not forward it
            name = rng.choice([n for n in self.names if n != self.master])
            if self.table[name]:
                port = rng.choice(sorted(self.table[name]))
                e = self.table[name].pop(port)
                self.nodes[name].local([(OP_DELETE, e)], self.t(name))
                self.nodes[name].flush(self.t(name))
                self.process(name)

    def run(self) -> None:
        for _ in range(self.rng.randint(10, 50)):
            self.step(chaos=True)
        for due in sorted(self.roles_due):     # every role is known before the quiet period
            self.tell(due[1], due[2])
        self.roles_due = []
        super().run_quiet()

    def check_converged(self) -> None:
        want = {k: plain(e) for k, e in self.table[self.master].items()}
        for name in self.names:
            if not self.nodes[name].in_sync:
                raise Violation(f"{name} never got in sync (locked out)")
            got = {k: plain(e) for k, e in self.table[name].items()
                   if k in want or k not in self.strays}
            if got != want:
                raise Violation(f"{name} (master {self.master}) lacks or differs in "
                                f"{sorted(k for k in want if got.get(k) != want[k])}, keeps "
                                f"{sorted(got.keys() - want.keys() - self.strays)}")


def told_as_ours(node: Sync, e: Entry) -> bool:
    return record_key(wire.encode_record(OP_UPSERT, e)) in node.own


HANDOVER_SCENARIOS = max(1, SCENARIOS // 5)


def test_handover_scenarios_keep_the_ownership_invariants():
    seeds = [int(REPLAY)] if REPLAY else range(HANDOVER_SCENARIOS)
    for seed in seeds:
        sim = HandoverSim(seed)
        try:
            sim.run()
        except AssertionError as e:
            raise AssertionError(f"seed {seed} (HandoverSim): {e}\n{how_to_replay(seed)}") from e


class Adopting(Sync):
    """Version 1's flaw (issue 9 #6): a fresh receiver adopts the first
    authentic stream it sees instead of insisting on its own session."""

    def datagram(self, addr, data, now):
        try:
            m = wire.decode(self.key, data)
        except wire.WireError:
            m = None
        p = self.by_addr.get(addr)
        if m and p and p.rx.boot is None and m.type != wire.RESYNC_REQ:
            p.rx.session = m.session
        super().datagram(addr, data, now)


class AdoptingSim(Sim):
    sync_class = Adopting


def violations(sim_class, seeds: int) -> int:
    caught = 0
    for seed in range(seeds):
        try:
            sim_class(seed).run()
        except Violation:
            caught += 1
    return caught


def test_simulation_sees_a_recording_applied():
    """The checks are live: the flaw of issue 9 #6 is caught."""
    assert violations(AdoptingSim, 300) > 0


class NoAntiEntropy(Sync):
    """Without digest rounds, lost events and broken streams leave drift."""

    def anti_entropy(self, entries, now):
        return 0


class NoAntiEntropySim(Sim):
    sync_class = NoAntiEntropy


class Sticky(Sync):
    """Remembers the newest version a peer ever sent, across its runs: a
    peer rolled back to the previous release gets what it cannot read."""

    @staticmethod
    def _heard(p, m):
        p.heard_version = max(p.heard_version or 0, wire.newest_spoken(m))
        p.heard_boot = m.boot


class StickySim(Sim):
    sync_class = Sticky


def test_simulation_sees_a_version_a_peer_does_not_speak():
    """The version check is live: forgetting a peer's restart is caught."""
    assert violations(StickySim, 300) > 0


def test_simulation_sees_drift_without_anti_entropy():
    """The exactness check is live: without anti-entropy it fails."""
    assert violations(NoAntiEntropySim, 100) > 0

"""A randomised, deterministic simulation of CARP members (pure cores only).

Each simulated member runs what carpd runs: one machine.VhidMachine per vip
in a group.FailoverGroup, and carpd's demotion table (machine.Demotion), fed
the events carpd's shell would feed. Adverts travel over a simulated segment
per vhid with loss, delay and duplication while the network is disturbed,
and cleanly during quiet periods. "ucarp-like" members ignore the demote
byte (they see every advert with demote 0 and never demote themselves), as
ucarp does.

Some scenarios split the vips into two failover groups (group.Groups), each
member with its own skew in each, as a static active-active split; some
give a group a preempt delay (machine.preempt_held): the rules' choice must
still hold every group once the network is quiet, and no member may
preempt within the delay of its restart.

A scenario is drawn from one seed; everything else follows from it, so a
failing seed replays exactly.

Flap scenarios (run_flap_scenario) give every member a [[track]] whose
target answers and stops by turns at random rates, fed through the tracks
core (rise/fall, the flap bound) into the member's demotion as carpd does:
no minute may hold more claims of a vip than the tracks' flap limits allow,
and once the target steadies the rules' choice holds the vips.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from fwcluster.carp.core import machine as m
from fwcluster.carp.core import tracks
from fwcluster.core.config import Track
from fwcluster.carp.core.group import FailoverGroup, Groups
from fwcluster.carp.core.wire import Advert

VHIDS = (1, 2)  # a LAN and a WAN vip of one failover group
SPLIT = {"a": (1, 2), "b": (3, 4)}  # two groups of a LAN and a WAN vip each
LINK_DEMOTE, MAINTENANCE_DEMOTE, SYNC_DEMOTE = 240, 240, 32


class Solo(FailoverGroup):
    """Machines that do not move together (ucarp)."""

    def handle(self, vhid: int, event, now: float) -> list:
        return self.machines[vhid].handle(event, now)


@dataclass
class Member:
    name: str
    k: int
    skew: int  # in the first group
    preempt: bool
    ucarp: bool
    advbase: int
    groups: dict = field(default_factory=lambda: {"a": VHIDS})  # name -> vhids
    skews: dict = field(default_factory=dict)  # group -> skew (default: skew)
    preempt_delay: float = 0.0
    alive: bool = True
    links: dict = field(default_factory=dict)
    demotion: m.Demotion = field(default_factory=m.Demotion)
    group: Groups | None = None
    booted_at: float = 0.0

    def __post_init__(self):
        self.links = self.links or {v: True for v in self.vhids}

    @property
    def vhids(self) -> tuple:
        return tuple(v for vs in self.groups.values() for v in vs)

    def address(self, vhid: int) -> str:
        return f"192.0.{vhid}.{10 + self.k}"

    def boot(self, now: float) -> list:
        """A fresh carpd (or ucarp, one process per vip: no group), new
        machines, links as they are."""
        self.booted_at = now
        self.group = Groups({g: (Solo if self.ucarp else FailoverGroup)({
            v: m.VhidMachine(v, self.advbase, self.skews.get(g, self.skew), preempt=self.preempt,
                             demotion=self.demotion.total, own_address=self.address(v),
                             preempt_delay=self.preempt_delay)
            for v in vhids}) for g, vhids in self.groups.items()})
        out = []
        for v in self.vhids:
            if self.links[v]:
                out += self.group.handle(v, m.LinkChanged(True), now)
        return out

    def key(self, vhid: int = VHIDS[0]):
        """What the CARP rules rank members by for a vhid (lower wins)."""
        x = self.group.machines[vhid]
        demote = 0 if self.ucarp else x.wire_demote
        return (demote, x.timing, m.source_rank(self.address(vhid)))


class Sim:
    def __init__(self, seed: int, ucarp: bool = True):
        self.seed = seed
        self.rng = random.Random(seed)
        r = self.rng
        n = r.randint(2, 4)
        self.advbase = r.choice((0, 1, 2))
        lo, hi = (10, 60) if self.advbase == 0 else (0, 230)
        self.preempt = r.random() < 0.7
        skews = [r.randint(lo, hi) for _ in range(n)]
        self.groups = SPLIT if r.random() < 0.3 else {"a": VHIDS}
        self.vhids = tuple(v for vs in self.groups.values() for v in vs)
        split = len(self.groups) > 1
        self.preempt_delay = r.choice((0.0, 0.0, r.uniform(0.5, 3.0)))
        # ucarp knows no demotion, so its members must not outrank a demoted
        # carpd member by skew (see docs/carp.md, "Mixing with ucarp").
        self.members = [Member(f"m{i}", i + 1, skews[i], self.preempt,
                               ucarp=ucarp and self.preempt and r.random() < 0.25,
                               advbase=self.advbase, groups=self.groups,
                               # the second group's skews the first's reversed:
                               # another member is preferred there (a static split)
                               skews={"b": skews[n - 1 - i]} if split else {},
                               preempt_delay=self.preempt_delay)
                        for i in range(n)]
        self.now = 0.0
        self.queue: list = []
        self.seq = 0
        self.loss = self.dup = 0.0
        self.max_delay = 0.0005
        self.trace: list[str] = []
        self.transitions = 0  # role changes seen (all members, all vhids)
        self.left_behind: list[str] = []  # vips a demotion claim did not take along
        self.claims: list[float] = []  # times any member claimed the first vhid
        self.early_preemptions: list[str] = []  # preempting claims within the delay of a boot
        for x in self.members:
            self.carry_out(x, x.boot(0.0))

    # --- the event queue ------------------------------------------------------
    def push(self, at: float, what: tuple) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, what))

    def run_until(self, end: float) -> None:
        while self.queue and self.queue[0][0] <= end:
            at, _, what = heapq.heappop(self.queue)
            self.now = at
            kind, x, vhid, arg = what
            if not x.alive or x.group is None or arg[0] is not x.group:
                continue  # for a machine that has since been replaced
            if kind == "timer":
                self.carry_out(x, x.group.handle(vhid, m.TimerFired(arg[1]), at))
            else:
                ad, source = arg[1], arg[2]
                if x.links[vhid]:
                    actions = x.group.handle(vhid, m.AdvertReceived(ad, source), at)
                    self.carry_out(x, actions)
                    self.took_the_group(x, actions)
        self.now = end

    def carry_out(self, x: Member, actions: list) -> None:
        for a in actions:
            if isinstance(a, m.ArmTimer):
                if a.at is not None:
                    self.push(a.at, ("timer", x, a.vhid, (x.group, a.at)))
            elif isinstance(a, m.SendAdvert):
                self.send(x, a)
            elif isinstance(a, m.RoleChanged):
                self.transitions += 1
                if a.new == m.State.MASTER and a.vhid == VHIDS[0]:
                    self.claims.append(self.now)
                if (a.new == m.State.MASTER and a.reason.startswith(m.PREEMPTING)
                        and self.now - x.booted_at < x.preempt_delay):
                    self.early_preemptions.append(f"{self.now:.4f} {x.name} vhid {a.vhid}")
                self.trace.append(f"{self.now:9.4f} {x.name} vhid {a.vhid}: "
                                  f"{a.old.value}->{a.new.value} ({a.reason})")

    def took_the_group(self, x: Member, actions: list) -> None:
        """A claim because the master is demoted claims the vip's whole
        failover group at once: a member's demotion is one figure for all
        its vips, so its other vips' masters are demoted alike."""
        if x.ucarp:
            return
        for a in actions:
            if isinstance(a, m.RoleChanged) and a.new == m.State.MASTER and "is demoted" in a.reason:
                for v, y in x.group.of[a.vhid].machines.items():
                    if y.state == m.State.BACKUP:
                        self.left_behind.append(f"{self.now:.4f} {x.name}: vhid {v} left behind")
                return

    def send(self, x: Member, a: m.SendAdvert) -> None:
        if not x.links[a.vhid]:
            return
        for y in self.members:
            if y is x or not y.alive or (a.to is not None and a.to != y.address(a.vhid)):
                continue
            ad = Advert(a.vhid, a.advbase, a.advskew, 0 if y.ucarp else a.demote, 1)
            copies = 0 if self.rng.random() < self.loss else 1
            if copies and self.rng.random() < self.dup:
                copies = 2
            for _ in range(copies):
                delay = self.rng.uniform(0, self.max_delay)
                self.push(self.now + delay, ("advert", y, a.vhid, (y.group, ad, x.address(a.vhid))))

    # --- stimuli, as carpd's shell turns them into events -----------------------
    def set_demotion(self, x: Member, source: str, value: int) -> None:
        if x.ucarp:
            return
        before = x.demotion.total
        total = x.demotion.set(source, value)
        if total != before and x.alive:
            for v in x.vhids:
                self.carry_out(x, x.group.handle(v, m.DemotionChanged(total), self.now))

    def set_link(self, x: Member, vhid: int, up: bool) -> None:
        x.links[vhid] = up
        if x.alive:
            if up:
                self.set_demotion(x, f"link:{vhid}", 0)
            self.carry_out(x, x.group.handle(vhid, m.LinkChanged(up), self.now))
            if not up:
                self.set_demotion(x, f"link:{vhid}", LINK_DEMOTE)
        else:
            x.demotion.set(f"link:{vhid}", 0 if up else LINK_DEMOTE)

    def crash(self, x: Member) -> None:
        x.alive = False
        x.group = None

    def restart(self, x: Member, sync_hold: bool) -> None:
        x.alive = True
        if sync_hold and not x.ucarp:
            x.demotion.set("syncd", SYNC_DEMOTE)
        self.carry_out(x, x.boot(self.now))

    def stimulus(self) -> str:
        r = self.rng
        x = r.choice(self.members)
        live = [y for y in self.members if y.alive]
        choice = r.random()
        if not x.alive:
            self.restart(x, sync_hold=r.random() < 0.5)
            return f"restart {x.name}"
        if choice < 0.2 and len(live) > 1:
            self.crash(x)
            return f"crash {x.name}"
        if choice < 0.4:
            on = "maintenance" not in x.demotion.sources
            self.set_demotion(x, "maintenance", MAINTENANCE_DEMOTE if on else 0)
            return f"maintenance {'on' if on else 'off'} {x.name}"
        if choice < 0.55:
            held = "syncd" in x.demotion.sources
            self.set_demotion(x, "syncd", 0 if held else SYNC_DEMOTE)
            return f"sync hold {'off' if held else 'on'} {x.name}"
        if choice < 0.8:
            v = r.choice(self.vhids)
            up = not x.links[v]
            self.set_link(x, v, up)
            return f"link {v} {'up' if up else 'down'} {x.name}"
        return "network only"

    # --- what must hold -----------------------------------------------------------
    def settle_time(self) -> float:
        """Three of the longest waits any member can be in (master_wait), and
    twice the preempt delay and an advert interval."""
        worst = max(m.advert_interval(self.advbase, max(y.skew for y in self.members)),
                    m.advert_interval(self.advbase, m.DEMOTED_SKEW))
        slowest = Advert(0, self.advbase, max(m.DEMOTED_SKEW, *(y.skew for y in self.members)), 0, 0)
        waits = [m.master_wait(self.advbase, y.skew, slowest) for y in self.members]
        # A preemption comes the delay after the member became better, at
        # the master's next advert.
        return 3 * max(max(waits), worst) + 2 * (self.preempt_delay + worst) * (self.preempt_delay > 0)

    def masters(self, vhid: int) -> list[Member]:
        return [y for y in self.members if y.alive and y.links[vhid]
                and y.group.machines[vhid].state == m.State.MASTER]

    def expected(self, vhid: int) -> Member | None:
        """With preempt: the best live member whose link is up."""
        cands = [y for y in self.members if y.alive and y.links[vhid]]
        return min(cands, key=lambda y: y.key(vhid)) if cands else None


class Violation(AssertionError):
    pass


def run_scenario(seed: int, steps: int = 3) -> Sim:
    """One scenario: settle, then `steps` times a stimulus during a
    disturbed spell followed by a quiet period, checking the invariants at
    the end of every quiet period. Raises Violation."""
    s = Sim(seed)
    r = s.rng
    quiet = s.settle_time()
    s.run_until(quiet)
    for step in range(steps):
        masters_before = {v: s.masters(v) for v in s.vhids}
        what = s.stimulus()
        s.trace.append(f"{s.now:9.4f} stimulus: {what}")
        # A disturbed spell: loss, delay, duplication.
        s.loss, s.dup = r.uniform(0, 0.3), r.uniform(0, 0.2)
        s.max_delay = r.uniform(0, 0.5) * m.advert_interval(s.advbase, min(y.skew for y in s.members))
        if not s.preempt:
            # A lost advert can time a backup out legitimately (CARP's
            # master-down may be under two of the master's intervals), and
            # without preemption the vip then stays moved: spells without
            # loss here, so "a working master keeps its vips" is a rule the
            # protocol must keep.
            s.loss = 0.0
        s.run_until(s.now + r.uniform(0, quiet / 3))
        s.loss = s.dup = 0.0
        s.max_delay = 0.0005
        start, changes_before = s.now, s.transitions
        s.run_until(start + 2 * quiet / 3)
        changes_mid = s.transitions
        s.run_until(start + quiet)
        try:
            check(s, step, what, masters_before, changes_before, changes_mid)
        except Violation as e:
            e.trace = s.trace
            raise
    return s


def check(s: Sim, step: int, what: str, masters_before: dict, changes_before: int,
          changes_mid: int) -> None:
    def fail(msg: str) -> None:
        raise Violation(f"step {step} ({what}): {msg}")
    if s.left_behind:
        fail(f"a demotion claim left vips behind: {s.left_behind[:3]}")
    if s.transitions != changes_mid:
        fail(f"roles still changing in the last third of the quiet period "
             f"({s.transitions - changes_mid} changes)")
    # Bounded churn: every member may claim and yield each vip a couple of
    # times (three backups all claim when a master demotes, as in OpenBSD,
    # and adverts delayed past newer ones can make a master yield once more).
    n = len(s.members)
    if s.transitions - changes_before > 4 * n * len(s.vhids):
        fail(f"{s.transitions - changes_before} role changes in one quiet period (flapping)")
    if s.early_preemptions:
        fail(f"preempted within the preempt delay of a restart: {s.early_preemptions[:3]}")
    for v in s.vhids:
        masters = s.masters(v)
        up = [y for y in s.members if y.alive and y.links[v]]
        if not up:
            continue
        if len(masters) != 1:
            fail(f"vhid {v}: masters {[y.name for y in masters]} (want exactly one)")
        got = masters[0]
        if s.preempt:
            # A backup does not preempt a master of equal demote and timing
            # (the address decides only between two masters): any of those
            # tied with the best is the rules' choice.
            want = s.expected(v)
            if got.key(v)[:2] != want.key(v)[:2]:
                fail(f"vhid {v}: master {got.name} {got.key(v)}, the rules choose "
                     f"{want.name} {want.key(v)}")
        else:
            # preempt off: a working master keeps its vip unless a peer is
            # less demoted (demotion overrides preempt), or it lost its link.
            before = [y for y in masters_before[v] if y.alive and y.links[v]]
            if len(before) == 1 and before[0] is not got:
                old = before[0]
                if old.key(v)[0] <= got.key(v)[0]:
                    fail(f"vhid {v}: preempt is off, yet {got.name} took the vip from "
                         f"working master {old.name} (demote {old.key(v)[0]} vs {got.key(v)[0]})")


# --- flapping tracks ------------------------------------------------------------
FLAP_RUN = 150.0  # seconds of flapping: more than two flap windows


@dataclass
class Flapper:
    """A member's track and the target it probes, which answers for a while
    and stops for a while, by turns."""
    member: Member
    track: Track
    mean_spell: float  # mean seconds the target answers (or not) in one go
    state: tracks.TrackState = field(default_factory=tracks.TrackState)
    answering: bool = True
    next_toggle: float = 0.0
    next_probe: float = 0.0


def _flappers(s: Sim) -> list[Flapper]:
    r = s.rng
    out = []
    for x in s.members:
        t = Track("gw", "icmp", target="198.51.100.1", interval=r.choice((0.2, 0.5, 1.0)),
                  rise=r.randint(1, 3), fall=r.randint(1, 3), weight=r.choice((50, 240)),
                  flap_limit=r.randint(2, 6))
        f = Flapper(x, t, mean_spell=r.choice((0.3, 1.0, 3.0, 10.0)),
                    next_probe=r.uniform(0, t.interval))
        f.next_toggle = r.expovariate(1 / f.mean_spell)
        s.set_demotion(x, tracks.source(t.name), tracks.demotion(t, f.state))  # starts failed
        out.append(f)
    return out


def _probe(s: Sim, f: Flapper, steady: bool) -> None:
    """One check of f's track at s.now (a lost echo now and then while flapping)."""
    r = s.rng
    while not steady and f.next_toggle <= s.now:
        f.answering = not f.answering
        f.next_toggle += r.expovariate(1 / f.mean_spell)
    ok = steady or (f.answering and r.random() > 0.05)
    before = tracks.demotion(f.track, f.state)
    f.state = tracks.observe(f.track, f.state, ok, s.now)
    after = tracks.demotion(f.track, f.state)
    if after != before:
        s.trace.append(f"{s.now:9.4f} {f.member.name} track {'failed' if after else 'good'}")
        s.set_demotion(f.member, tracks.source(f.track.name), after)
    f.next_probe = s.now + f.track.interval


def _probe_until(s: Sim, flappers: list[Flapper], end: float, steady: bool) -> None:
    while True:
        f = min(flappers, key=lambda g: g.next_probe)
        if f.next_probe > end:
            break
        s.run_until(f.next_probe)
        _probe(s, f, steady)
    s.run_until(end)


def claim_bound(s: Sim, flappers: list[Flapper]) -> int:
    """Claims of a vip any FLAP_WINDOW may hold: each member may claim once
    at boot, and each change of a track (at most flap_limit a window) may
    make every other member claim once (all backups claim when a master
    demotes, as in OpenBSD)."""
    n = len(s.members)
    return n + (n - 1) * sum(f.track.flap_limit for f in flappers)


def worst_window(times: list[float]) -> int:
    """The most of `times` any FLAP_WINDOW-long window holds."""
    return max((sum(1 for u in times if t - tracks.FLAP_WINDOW < u <= t) for t in times), default=0)


def run_flap_scenario(seed: int) -> Sim:
    """Members whose tracks flap for FLAP_RUN seconds on a clean network,
    then a steady target for a flap window and a settle time. Raises Violation."""
    s = Sim(seed, ucarp=False)
    flappers = _flappers(s)
    _probe_until(s, flappers, FLAP_RUN, steady=False)
    worst = worst_window(s.claims)
    bound = claim_bound(s, flappers)
    try:
        if worst > bound:
            raise Violation(f"{worst} claims of vhid {VHIDS[0]} within {tracks.FLAP_WINDOW:g} s "
                            f"(the flap limits allow {bound})")
        # Steady again: held tracks are let go within a window, then the
        # rules' choice holds every vip.
        _probe_until(s, flappers, s.now + tracks.FLAP_WINDOW + 4 * max(f.track.interval for f in flappers)
                     + s.settle_time(), steady=True)
        if any(f.state.failed for f in flappers):
            raise Violation("a track stayed failed after its target steadied for a flap window")
        for v in s.vhids:
            masters = s.masters(v)
            if len(masters) != 1:
                raise Violation(f"vhid {v}: masters {[y.name for y in masters]} after the flapping")
            want = s.expected(v)
            if s.preempt and masters[0].key(v)[:2] != want.key(v)[:2]:
                raise Violation(f"vhid {v}: master {masters[0].name}, the rules choose {want.name}")
    except Violation as e:
        e.trace = s.trace
        raise
    return s

"""Flows live through an operator's planned moves, watched past every timeout
that can act on them (issue 19, case 1).

Two labs side by side, the daemons as shipped (advbase 1, skews 0/100,
sync_hold 20), the shipped strict ruleset: one routes the server back to the
client, one SNATs the LAN to the WAN vip (the lab's `snat=True`; a lab does
one or the other). In each, one set of long-lived flows (tests/labkit/flows.py:
TCP a byte every 0.5 s both ways, UDP request/response, UDP server-push,
UDP client-push, an ICMP pinger) crosses three moves in turn:

  1. `fwctl maintenance on` on fw1: fw2 takes over, fw1 stays up as BACKUP;
  2. `fwctl maintenance off`: fw1 preempts back, fw2 stays up as BACKUP;
  3. `fwctl drill --hold 7` on fw1: to fw2 and back; a second set of flows
     is opened through fw2 during the hold (users do not wait for a drill
     to end) and moves back to fw1 with the failback.

After each move the flows are watched for WATCH seconds. What could delete
a moved flow is the old master's copy running out (its kernel DESTROY going
out as a live delete) and what the refresh or an anti-entropy round does
next. So a watch lasts the longest timeout of a moved flow's copy, plus one
refresh / anti-entropy interval, plus a margin. To keep the file near five
minutes, the members' UDP stream timeout (per namespace) is 40 s instead of
120 s; the others stay at their defaults (UDP unreplied 30 s, ICMP 30 s).
That this takes the same path as 120 s would, is checked on the old master:
its copy of the server-push flow ended its countdown during the watch (it
ran out and is gone, or was re-armed by a refresh) while the client kept
receiving.

Each watch asserts, per flow, at the end that receives it: no gap longer
than the CARP master-down time + 0.2 s + the flow's own period (a packet
sent just before an outage and the next one after it are a period apart
anyway), and that the server still sees the same source (address, port):
the same conntrack entry and NAT mapping carry the flow.

On a move whose flows died, the next move starts fresh flows (on new ports)
so that every move is checked on its own; after a fix all three moves run
with the first flows. The maintenance moves (1, 2) share two labs and run
in file order; the drill (3) runs in two labs of its own, in a thread beside
them, so the file takes the time of two watches.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from fwcluster.carp.core.machine import master_down_interval
from fwcluster.core.config import Sync as SyncConfig
from syncd.daemon import REFRESH_INTERVAL
from tests.labkit import PY, Lab
from tests.labkit.ctwatch import CopyWatch
from tests.labkit.flows import OPEN_TIMEOUT, PERIODS, Flows
from tests.lab.sync_helpers import TIMING, in_sync, logs, start_member
from tests.lab.test_sync_failover import settled

pytestmark = pytest.mark.lab

STREAM_TIMEOUT = 40                 # nf_conntrack_udp_timeout_stream in the members (default 120)
DIGEST_INTERVAL = SyncConfig.__dataclass_fields__["digest_interval"].default
# The old master's copy of a moved UDP flow runs out at most STREAM_TIMEOUT
# after the move; whatever the next refresh or anti-entropy round makes of
# that happens at most one interval later; 5 s for the delete to travel and
# the flow's next packets to show it.
WATCH = STREAM_TIMEOUT + max(REFRESH_INTERVAL, DIGEST_INTERVAL) + 5
MARGIN = 0.2
PUSH = "udp server-push"
HOLD = OPEN_TIMEOUT + 4             # the drill's hold: long enough to open flows through fw2
                                    # and for them to be assured and replicated back to fw1


class Rig:
    """One lab, its flow sets and what the moves found."""

    def __init__(self, lab: Lab, name: str):
        self.lab, self.name = lab, name
        self.port = 47000
        self.sets: dict[str, Flows] = {}     # "first", and "hold" (opened during a drill)
        self.copies: dict[str, CopyWatch] = {}
        # the longest outage CARP allows: a backup's master-down time
        self.outage = max(master_down_interval(TIMING["advbase"], s) for s in lab.advskews.values())

    def open(self, label: str) -> None:
        if label in self.sets:
            self.sets[label].stop()
        self.sets[label] = Flows(self.lab, base_port=self.port, duration=400).start()
        self.port += 10

    def close(self) -> None:
        for f in self.sets.values():
            f.stop()

    def bound(self, name: str) -> float:
        return self.outage + MARGIN + PERIODS[name]

    def unreplicated(self, label: str, peer: str) -> list[str]:
        """The flows of the set that need a copy on peer and have none. A UDP
        flow is replicated once the kernel marks it assured (traffic both
        ways for 2 s: the default [sync] filter), so a set younger than that
        has no copies yet, and its server-push flow dies at any move: the
        flows this file watches are established ones. The client-push flow
        never has a reply, so it is never assured nor replicated: the new
        master lets it through as a new flow from the LAN."""
        table = self.lab.run(peer, ["conntrack", "-L"], check=False).stdout
        return [n for n, port in self.sets[label].ports.items()
                if n != "udp client-push" and f"dport={port} " not in table]

    def alive(self, label: str) -> bool:
        """Every flow of the set delivered within twice its period."""
        now, f = time.monotonic(), self.sets[label]
        return all((f.last_arrival(n) or 0) > now - 2 * PERIODS[n] - MARGIN for n in PERIODS)


def open_rigs(stack: ExitStack, prefix: str) -> list[Rig]:
    """A routed and a SNAT lab, settled on fw1 with the first flows."""
    out = []
    for name, snat in (("routed", False), ("snat", True)):
        lab = stack.enter_context(Lab(members=2, prefix=prefix + name[:2], ipv6=False, snat=snat,
                                      **TIMING))
        for m in lab.members:
            lab.run(m, ["sysctl", "-q", "-w",
                        f"net.netfilter.nf_conntrack_udp_timeout_stream={STREAM_TIMEOUT}"])
            start_member(lab, m)
        out.append(Rig(lab, name))
        stack.callback(out[-1].close)
    for r in out:
        assert r.lab.wait_for(lambda: settled(r.lab, "fw1") and in_sync(r.lab), 30), logs(r.lab)
        r.open("first")
    return out


@pytest.fixture(scope="module")
def rigs():
    """The labs of the maintenance moves (on, then off)."""
    with ExitStack() as stack:
        yield open_rigs(stack, "lf")


@pytest.fixture(scope="module")
def drill_run():
    """The drill runs in labs of its own, in a thread beside the maintenance
    moves: each watch is mostly waiting for timeouts, and the file takes the
    time of two watches instead of three."""
    with ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        drill_rigs = open_rigs(stack, "ld")

        def run():
            prepare(drill_rigs, "fw1")
            t_move, problems = move(drill_rigs, drill_opening_flows, "fw1")
            return observe(drill_rigs, "drill", "fw2", t_move, problems)

        future = pool.submit(run)
        yield future
        future.result(timeout=WATCH + 120)  # the labs outlive the watch, even for a failed test


def carpd_view(lab: Lab) -> str:
    """Both members' vip states and the CARP entries of their conntrack
    tables (a NATed advert shows there), for a move that did not settle."""
    ct = {m: [ln for ln in lab.run(m, ["conntrack", "-L", "-p", "112"], check=False).stdout.splitlines()]
          for m in lab.members}
    return f"states {[lab.states(v['vhid']) for v in lab.vips]}; CARP conntrack entries {ct}"


def move(rigs: list[Rig], action, master: str) -> tuple[dict, list[str]]:
    """Make the move in every rig (action(rig) returns why it failed, or
    None); returns each moved rig's (start, settled) times and the problems
    of rigs whose move failed or whose vips did not all go to master (those
    are not watched)."""
    t_move, problems = {}, []
    for r in rigs:
        start = time.monotonic()
        failed = action(r)
        # A planned move is a demotion: the peer claims at once; master-down
        # is the longest CARP may take.
        if not failed and not r.lab.wait_for(lambda: settled(r.lab, master), r.outage + 1):
            failed = f"the vips did not all move to {master}: {carpd_view(r.lab)}"
        if failed:
            problems.append(f"{r.name}: {failed}")
        else:
            t_move[r.name] = (start, time.monotonic())
    return t_move, problems


def observe(rigs: list[Rig], what: str, old_master: str, t_move: dict,
            problems: list[str]) -> tuple[list[str], str]:
    """Watch the moved rigs' flows from the start of their move until WATCH s
    after it settled (a drill takes seconds); returns the problems (those
    found before, and the watch's) and the old master's copies, described."""
    rigs = [r for r in rigs if r.name in t_move]
    for r in rigs:
        r.copies = {label: CopyWatch(r.lab, old_master, ["-p", "udp", "--orig-port-dst",
                                                         str(f.ports[PUSH])], duration=WATCH + 40).start()
                    for label, f in r.sets.items()}
    end = max((done for _, done in t_move.values()), default=0) + WATCH
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    report = {}
    for r in rigs:
        t0, done = t_move[r.name]
        t1 = done + WATCH
        for label, f in r.sets.items():
            where = f"{r.name} {label}"
            copy = r.copies[label].stop()
            gaps = {n: f.worst_gap(n, max(t0, f.started), t1) for n in PERIODS}
            fate = copy.fate()
            report[where] = {"worst_gap_s": {n: round(g, 2) for n, (g, _) in gaps.items()},
                             "last_push_s": round((f.last_arrival(PUSH) or t0) - t0, 1),
                             "old_master_copy": fate and (fate[0], round(fate[1] - t0, 1)),
                             "errors": f.errors}
            for n, (gap, began) in gaps.items():
                if gap > r.bound(n):
                    problems.append(f"{where}: {n}: no packet for {gap:.1f} s from {began - t0:.1f} s "
                                    f"after the move began (bound {r.bound(n):.2f} s)")
            for n, seen in f.sources.items():
                if len(seen) != 1:
                    problems.append(f"{where}: {n}: the server saw {sorted(seen)}, not one source")
            if fate is None or fate[1] > t1 - 5:
                problems.append(f"{where}: the copy on {old_master} of the server-push flow did not "
                                f"end its countdown within the watch")
    print(f"\n{what}: " + json.dumps(report))
    return problems, "\n".join(
        f"{r.name} {label}: {old_master}'s copy of the server-push flow (s after the move began: "
        f"timeout left): {c.describe(t_move[r.name][0])}" for r in rigs for label, c in r.copies.items())


def watch(rigs: list[Rig], what: str, old_master: str, t_move: dict, problems: list[str]) -> None:
    """observe(), then assert that the flows kept going."""
    problems, copies = observe(rigs, what, old_master, t_move, problems)
    assert not problems, "\n".join(problems) + "\n" + copies


def prepare(rigs: list[Rig], master: str) -> None:
    """Each rig settled on master and in sync, only the first flow set, and
    alive (fresh flows where the last move killed them: that move's test
    reported it). A rig a previous move left broken gets its move anyway;
    move() reports it."""
    peer = next(m for m in rigs[0].lab.members if m != master)
    for r in rigs:
        r.lab.wait_for(lambda: settled(r.lab, master) and in_sync(r.lab), 30)
        for label in [k for k in r.sets if k != "first"]:
            r.sets.pop(label).stop()
        if not r.alive("first"):
            r.open("first")
        assert r.lab.wait_for(lambda: not r.unreplicated("first", peer), 10), \
            f"{r.name}: {peer} has no copy of {r.unreplicated('first', peer)} 10 s after they " \
            f"opened: {r.lab.run(peer, ['conntrack', '-L'], check=False).stdout}"


def maintenance(state: str):
    def action(r: Rig) -> str | None:
        cp = r.lab.fwctl_raw("fw1", "maintenance", state)
        return None if cp.returncode == 0 else f"maintenance {state}: {cp.stdout}{cp.stderr}"
    return action


def drill_opening_flows(r: Rig) -> str | None:
    """fwctl drill on fw1; while fw2 holds the vips, a second flow set is
    opened (through fw2) and the drill then fails back."""
    lab = r.lab
    out = lab.dir / "drill.json"
    with open(out, "wb") as f:
        p = lab.popen("fw1", [PY, "-m", "fwcluster.fwctl", *lab._daemon_args("fw1"), "drill",
                              "--json", "--hold", str(HOLD)], stdout=f)
    if not lab.wait_for(lambda: settled(lab, "fw2"), r.outage + 1):
        p.wait(60)
        return f"the drill did not move the vips to fw2: {out.read_text()} {carpd_view(lab)}"
    r.open("hold")
    # The drill fails back after HOLD: the flows opened on fw2 must be on fw1
    # by then (a UDP flow is assured after 2 s, then replicated), or their
    # server push dies with the failback because of this test's timing.
    copied = False
    while p.poll() is None and not copied:
        copied = not r.unreplicated("hold", "fw1")
        time.sleep(0.1)
    if p.wait(60) != 0:
        return f"drill: {out.read_text()}"
    if not copied:
        return "fw1 held no copy of every flow opened during the hold when the drill failed back"
    return None


def test_maintenance_handover(rigs, drill_run):
    """fw1 hands over to fw2 and stays up as BACKUP with copies of the flows."""
    prepare(rigs, "fw1")
    t_move, problems = move(rigs, maintenance("on"), "fw2")
    watch(rigs, "maintenance on", "fw1", t_move, problems)


def test_preempt_back(rigs):
    """Maintenance off: fw1 preempts back, fw2 stays up as BACKUP."""
    prepare(rigs, "fw2")
    t_move, problems = move(rigs, maintenance("off"), "fw1")
    watch(rigs, "maintenance off (preempt back)", "fw2", t_move, problems)


def test_drill(drill_run):
    """`fwctl drill` on fw1: to fw2 and back, flows opened during the hold;
    fw2 is the last old master and keeps copies of both flow sets (run by
    the drill_run fixture in labs of its own)."""
    problems, copies = drill_run.result(timeout=WATCH + 120)
    assert not problems, "\n".join(problems) + "\n" + copies

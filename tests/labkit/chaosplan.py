"""The chaos soak's schedule: which fault comes next, seeded and replayable.

Pure: no I/O and no clock. plan(seed) yields the same faults for the same
seed whatever the machine's speed; the runner (chaos.py) takes them until
its time is up, so a longer run of one seed starts with the schedule of a
shorter one. A fault names a role ("master", "backup") rather than a member
where the role matters; the runner resolves it from carpd's status when the
fault starts (`pick` chooses among the backups, so that choice is seeded
too).

Each fault says whether the established flows may die across it
(`unavoidable`: the reason, or None = every flow must survive) and how long
a flow may be silent across it (`allowed_gap`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

DAEMONS = ("carpd", "syncd")
IFACES = ("lan0", "wan0", "sync0")
SEGMENTS = ("lan", "wan", "sync")
RELOADS = ("carpd-sighup", "syncd-sighup", "syncd-reload-cmd")
# A packet already in flight when the path changes, a neighbour update, a
# busy machine: any flow may miss this much beyond the protocol's own time.
GAP_MARGIN = 1.0


@dataclass(frozen=True)
class Fault:
    kind: str               # one of KINDS
    target: str = ""        # "master", "backup", or "" (all members / none)
    what: str = ""          # daemon, interface, segment or reload kind
    seconds: float = 0.0    # how long the fault lasts (links, maintenance, cuts)
    pick: int = 0           # which backup, when there are several

    def describe(self) -> str:
        parts = [self.kind]
        if self.target:
            parts.append(self.target)
        if self.what:
            parts.append(self.what)
        if self.seconds:
            parts.append(f"{self.seconds:.1f}s")
        return " ".join(parts)


# kind -> weight in the draw
KINDS = {
    "kill": 4,          # SIGKILL of carpd or syncd; restarted ~1 s later (Restart=on-failure)
    "link": 2,          # ip link set IF down inside a member, up after `seconds`
    "cable": 2,         # the switch port goes down (carrier loss), up after `seconds`
    "maintenance": 2,   # fwctl maintenance on, `seconds`, off
    "drill": 1,         # fwctl drill on the master
    "reload": 2,        # SIGHUP to carpd or syncd, or syncd's {"cmd": "reload"}
    "push": 1,          # fwctl config push of the unchanged config
    "partition": 2,     # the sync link passes nothing for `seconds` (carrier kept)
    "block": 1,         # the switch passes nothing to/from a member's lan or wan port (carrier kept)
    "deaf": 1,          # a backup drops the adverts it receives on lan0 or wan0: it claims too
    "blackout": 1,      # lan or wan of every member loses carrier at once
}


def draw(rng: random.Random) -> Fault:
    """One fault from the seeded generator (every call consumes the same
    number of draws for a kind, so the sequence depends on the seed only)."""
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    target = rng.choice(("master", "master", "backup"))
    pick = rng.randrange(6)
    secs = round(rng.uniform(1.0, 6.0), 1)
    if kind == "kill":
        return Fault(kind, target, rng.choice(DAEMONS), pick=pick)
    if kind == "link":
        return Fault(kind, target, rng.choice(IFACES), secs, pick)
    if kind == "cable":
        return Fault(kind, target, rng.choice(SEGMENTS), secs, pick)
    if kind == "maintenance":
        # One in four stays on past the 120 s conntrack timeout of UDP
        # streams: copies that are not refreshed run out while the peer
        # carries the flows, and the flows must still come back.
        hold = round(rng.uniform(130, 170)) if rng.random() < 0.25 else max(secs, 4.0)
        return Fault(kind, target, "", hold, pick)
    if kind == "drill":
        return Fault(kind, "master")
    if kind == "reload":
        return Fault(kind, target, rng.choice(RELOADS), pick=pick)
    if kind == "push":
        return Fault(kind, target, pick=pick)
    if kind == "partition":
        return Fault(kind, target, "sync", secs + 2, pick)
    if kind == "block":
        return Fault(kind, target, rng.choice(("lan", "wan")), secs, pick)
    if kind == "deaf":
        return Fault(kind, "backup", rng.choice(("lan0", "wan0")), secs, pick)
    return Fault("blackout", "", rng.choice(("lan", "wan")), min(secs, 3.0))


def plan(seed: int) -> Iterator[Fault]:
    """The endless schedule of a seed."""
    rng = random.Random(seed)
    while True:
        yield draw(rng)


def unavoidable(f: Fault) -> str | None:
    """Why established flows may die across this fault; None: they must not."""
    if f.kind in ("block", "deaf"):
        return (f"split brain: a member hears no adverts on {f.what} and claims the vips while "
                f"the master keeps them; both are master, each neighbour sends to the one it "
                f"resolved last, and after the heal the one that yields may still get traffic "
                f"until the winner's next gratuitous ARP / NA, or hold entries the other lacks")
    if f.kind == "blackout":
        return (f"every member lost {f.what} at once: no path at all, every member drops its "
                f"vips, and the election afterwards may pick a member whose replicas the "
                f"outage left behind")
    return None


def still(f: Fault) -> bool:
    """Must this fault leave every vip where it is (the master's roles and
    transition counts unchanged)? Whatever touches only the sync side, the
    configuration, or a backup."""
    if f.kind in ("reload", "push", "partition"):
        return True
    if f.kind in ("link", "cable") and f.what in ("sync0", "sync"):
        return True
    if f.kind == "kill" and f.what == "syncd":
        return True
    return f.kind in ("kill", "link", "cable", "maintenance") and f.target == "backup"


def allowed_gap(f: Fault, master_down: float) -> float:
    """Longest silence of a surviving flow across f. master_down: the
    slowest member's CARP master-down time (a silent master's takeover)."""
    if f.kind in ("reload", "push", "partition"):
        return GAP_MARGIN                     # nothing should move at all
    if f.kind in ("link", "cable", "blackout"):
        if f.what in ("sync0", "sync"):
            return GAP_MARGIN
        return f.seconds + master_down + GAP_MARGIN if f.kind == "blackout" else master_down + GAP_MARGIN
    return master_down + GAP_MARGIN           # kill, maintenance, drill: a takeover

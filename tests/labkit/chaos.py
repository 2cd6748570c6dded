"""The chaos soak: a 2-3 member lab with carpd and syncd, continuous traffic
through the vips, and the seeded schedule of chaosplan.py, fault after
fault, each followed by a quiet period; the invariants are checked at the
end of every quiet period. See docs/lab.md ("Chaos soak").

    report = soak(seed=7, seconds=170, members=2)
    assert not report.violations, report.failure_text()

Invariants (checkpoint after each quiet period):
  flows    every long-lived flow answered within FRESH s (or resumes within
           the fault's allowed gap); a flow that died is a violation unless
           the fault it died in is one that makes it unavoidable
           (chaosplan.unavoidable), then it is counted and reopened
  masters  exactly one MASTER per vhid among the members' carpd, and the
           vip address on that member only
  still    a fault that touches no vip (chaosplan.still) moved none: no
           member's CARP transition count changed but the one it hit
  memory   each daemon's VmRSS below its first sample + RSS_SLACK_MB
  crashes  no daemon exited unless the schedule killed it; no traceback
           in any daemon's log
  new      a new TCP session (IPv4 and IPv6) opens and echoes
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from fwcluster.carp.core.machine import master_down_interval
from syncd.core.protocol import Timing
from tests.labkit import chaosplan
from tests.labkit.chaosflows import Traffic
from tests.labkit.lab import Lab, LabError
from tests.labkit.netns import ip_batch

# The operator's default CARP timing (advbase 1, skews 0/100/150) and a sync
# hold, so a restarted member waits for its bulk before it preempts.
TIMING = {"advbase": 1, "carp": {"sync_hold": 20}}
RESTART_DELAY = 1.0     # systemd's RestartSec of the units
FRESH = 1.0             # a live flow answered within this (10 send intervals)
BLAME_SLACK = FRESH / 2
RSS_SLACK_MB = 50
DAEMONS = chaosplan.DAEMONS


def quiet_seconds(lab: Lab) -> float:
    """How long the protocol needs to settle after a fault: a silent
    master's takeover and a preemption (two slowest master-downs), a peer
    declared down and one declared absent at a (re)start (the bulk that
    lifts the sync demotion), and a second of slack."""
    t = Timing()
    return 2 * slowest_master_down(lab) + t.peer_timeout + t.absent_after + 1.0


def slowest_master_down(lab: Lab) -> float:
    return max(master_down_interval(v.get("advbase", 1), s)
               for v in lab.vips for s in lab.advskews.values())


@dataclass
class Step:
    n: int
    fault: chaosplan.Fault
    member: str = ""            # the role resolved when the step started
    t_start: float = 0.0        # time.monotonic()
    t_end: float = 0.0          # the fault undone (links up, daemon restarted, ...)
    t_check: float = 0.0        # the checkpoint after the quiet period
    note: str = ""
    gap: tuple[str, float] = ("", 0.0)   # the longest silence of a surviving flow
    moves: int = 0              # CARP transitions from the start to the checkpoint

    def line(self, t0: float) -> str:
        where = f" on {self.member}" if self.member else ""
        note = self.note and f" ({self.note})"
        return (f"#{self.n:<3} +{self.t_start - t0:7.1f}s {self.fault.describe()}{where}{note}"
                f"; {self.moves} transitions; longest flow gap {self.gap[1]:.2f}s "
                f"({self.gap[0] or '-'})")


@dataclass
class Report:
    seed: int
    members: int
    seconds: float
    steps: list[Step] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    expected_losses: list[str] = field(default_factory=list)
    long_gaps: list[str] = field(default_factory=list)
    rss: list[tuple[float, str, str, int]] = field(default_factory=list)   # (t, member, daemon, kB)
    short_ok: int = 0
    short_failed: int = 0
    logs: str = ""
    ran: float = 0.0
    t0: float = 0.0

    def replay(self) -> str:
        return f"CHAOS_SEED={self.seed} CHAOS_MEMBERS={self.members} CHAOS_SECONDS={self.seconds:g} make chaos"

    def schedule_text(self) -> str:
        return "\n".join(s.line(self.t0) for s in self.steps)

    def rss_text(self) -> str:
        by: dict[tuple[str, str], list[int]] = {}
        for _, m, d, kb in self.rss:
            by.setdefault((m, d), []).append(kb)
        return ", ".join(f"{m} {d} {v[0] // 1024}->{max(v) // 1024}->{v[-1] // 1024} MB"
                         for (m, d), v in sorted(by.items()))

    def summary(self) -> str:
        return "\n".join([
            f"chaos seed {self.seed}: {len(self.steps)} faults in {self.ran:.0f} s, "
            f"{self.members} members; {len(self.violations)} violations, "
            f"{len(self.expected_losses)} flows lost where unavoidable; short sessions "
            f"{self.short_ok} ok, {self.short_failed} failed (during faults too)",
            f"RSS first->peak->last: {self.rss_text()}",
            *[f"gap beyond the protocol's bound: {g}" for g in self.long_gaps],
            *[f"unavoidable loss: {x}" for x in self.expected_losses]])

    def failure_text(self) -> str:
        return "\n".join([f"chaos: seed {self.seed} broke an invariant; replay: {self.replay()}",
                          "violations:", *[f"  {v}" for v in self.violations],
                          "schedule up to the failure:", self.schedule_text(),
                          self.summary(), self.logs])


class Chaos:
    """Runs one seed's schedule on a lab whose daemons it starts."""

    def __init__(self, lab: Lab, seed: int, seconds: float, keep_going: bool = False,
                 out: Callable[[str], None] = print):
        self.lab = lab
        self.seconds = seconds
        self.keep_going = keep_going
        self.out = out
        self.report = Report(seed, lab.n, seconds)
        self.quiet = quiet_seconds(lab)
        self.master_down = slowest_master_down(lab)
        self.rss_base: dict[tuple[str, str], int] = {}
        self.log_seen: dict[tuple[str, str], int] = {}
        self.traffic: Traffic | None = None
        self.rss_slack_mb = RSS_SLACK_MB

    # --- the run ----------------------------------------------------------------
    def run(self) -> Report:
        """begin(), the schedule until the time is up (or the first
        violation, unless keep_going), finish()."""
        r = self.report
        self.begin()
        try:
            for n, fault in enumerate(chaosplan.plan(r.seed), start=1):
                left = r.t0 + self.seconds - time.monotonic()
                if left <= 0 or (r.violations and not self.keep_going):
                    break
                if fault.seconds > left:     # a long hold would overrun a short run by minutes
                    self.out(f"#{n:<3} skipped: {fault.describe()} is longer than the {left:.0f} s left")
                    continue
                self.step(Step(n, fault))
        finally:
            self.finish()
        return r

    def begin(self) -> None:
        """Daemons up and settled, traffic flowing, the baseline checked."""
        r = self.report
        self.out(f"chaos: seed {r.seed}, {self.lab.n} members, {self.seconds:g} s, quiet period "
                 f"{self.quiet:.1f} s (replay: {r.replay()})")
        self._start_cluster()
        r.t0 = time.monotonic()
        self.traffic = Traffic(self.lab, until=r.t0 + self.seconds + 300).start()
        if not self.lab.wait_for(lambda: all(f.last for f in self.traffic.flows.values()), 10, 0.1):
            self.traffic.stop()
            raise LabError("chaos setup: not every flow answered: "
                           + ", ".join(f"{f.name} {f.error}" for f in self.traffic.flows.values()))
        self.checkpoint(Step(0, chaosplan.Fault("baseline"), t_start=r.t0, t_end=r.t0))

    def finish(self) -> None:
        r = self.report
        r.ran = time.monotonic() - r.t0
        r.short_ok = sum(1 for _, ok, _ in self.traffic.short if ok)
        r.short_failed = len(self.traffic.short) - r.short_ok
        self.traffic.stop()
        r.logs = self._logs()
        self.out(r.summary())

    def _start_cluster(self) -> None:
        lab = self.lab
        for m in lab.members:
            lab.start_syncd(m)
        for m in lab.members:
            lab.start_carpd(m)
        if not lab.wait_for(lambda: self._masters() == {v["vhid"]: [lab.members[0]] for v in lab.vips}
                            and self._in_sync(), 30, 0.2):
            raise LabError(f"chaos setup: the cluster did not settle: {self._masters()}\n{self._logs()}")

    def step(self, step: Step) -> None:
        f = step.fault
        step.t_start = time.monotonic()
        step.member = self._resolve(f)
        before = self._transitions()
        try:
            step.note = self._inject(f, step.member) or ""
        except (LabError, subprocess.TimeoutExpired) as e:   # a daemon that does not come back, a hung command
            self._violation(step, "fault", f"injecting {f.describe()} on {step.member}: {e}")
        step.t_end = time.monotonic()
        time.sleep(self.quiet)
        self.checkpoint(step)
        after = self._transitions()
        # a restarted carpd counts from 0 again: then all of its count is new
        step.moves = sum(n - before.get(m, 0) if n >= before.get(m, 0) else n
                         for m, n in after.items())
        if chaosplan.still(f):
            # the member whose carpd or vip links the fault hit re-enters
            # BACKUP through INIT: its own count may move, no other may
            hit = step.member if (f.what == "carpd" or f.what in ("lan0", "wan0", "lan", "wan")) else ""
            moved = {m for m in after if m != hit and after[m] != before.get(m)}
            if moved:
                self._violation(step, "still", f"{', '.join(sorted(moved))} changed roles under a "
                                               f"fault that touches no vip: transitions {before} -> "
                                               f"{after}\n" + self._role_lines(step))
        self.out(step.line(self.report.t0))

    def _role_lines(self, step: Step) -> str:
        """carpd's role changes of every member since the step began (its log lines)."""
        out = []
        for m in self.lab.members:
            lines = self.lab.log_tail(m, "carpd", 20000).splitlines()
            out += [f"  {ln}" for ln in lines if " -> " in ln][-8:]
        return "\n".join(out)

    def _resolve(self, f: chaosplan.Fault) -> str:
        """The member a role names now (carpd's view of vhid 1)."""
        if not f.target:
            return ""
        masters = self._masters().get(self.lab.vips[0]["vhid"], [])
        master = masters[0] if masters else self.lab.members[0]
        if f.target == "master":
            return master
        backups = [m for m in self.lab.members if m != master]
        return backups[f.pick % len(backups)]

    # --- faults ------------------------------------------------------------------
    def _inject(self, f: chaosplan.Fault, m: str) -> str | None:
        lab = self.lab
        if f.kind == "kill":
            lab.stop_daemon(m, f.what, sig=signal.SIGKILL)
            time.sleep(RESTART_DELAY)
            self._start(m, f.what)
        elif f.kind == "link":
            lab.link_down(m, f.what)
            time.sleep(f.seconds)
            lab.link_up(m, f.what)
        elif f.kind == "deaf":
            self._deaf(m, f.what, True)
            time.sleep(f.seconds)
            self._deaf(m, f.what, False)
        elif f.kind in ("cable", "partition", "block"):
            lab.cut(m, f.what, carrier=f.kind != "cable")   # cable: carrier loss
            time.sleep(f.seconds)
            lab.heal(m, f.what)
        elif f.kind == "blackout":
            ip_batch(lab.ns("sw"), [f"link set {m}-{f.what} down" for m in lab.members])
            time.sleep(f.seconds)
            ip_batch(lab.ns("sw"), [f"link set {m}-{f.what} up" for m in lab.members])
        elif f.kind == "maintenance":
            on = self._fwctl(m, "maintenance", "on")
            time.sleep(f.seconds)
            return f"on: {on}; off: {self._fwctl(m, 'maintenance', 'off')}"
        elif f.kind == "drill":
            return self._fwctl(m, "drill", "--hold", "1", "--timeout", "15", timeout=60)
        elif f.kind == "reload":
            if f.what == "syncd-reload-cmd":
                return str(lab.control(m, {"cmd": "reload"}, daemon="syncd", timeout=10))
            lab.daemon(m, f.what.split("-")[0]).send_signal(signal.SIGHUP)
        elif f.kind == "push":
            return self._fwctl(m, "config", "push", timeout=60)
        return None

    def _deaf(self, m: str, ifname: str, on: bool) -> None:
        """A table of the soak's own in m that drops CARP (IP protocol 112)
        arriving on ifname, before the shipped ruleset sees it."""
        if not on:
            self.lab.run(m, ["nft", "delete", "table", "inet", "chaos"], check=False)
            return
        self.lab.run(m, ["nft", "-f", "-"], input=(
            "table inet chaos {\n chain deaf {\n  type filter hook input priority -10;\n"
            f"  iifname {ifname} meta l4proto 112 drop\n }}\n}}\n"))

    def _fwctl(self, m: str, *argv: str, timeout: float = 20) -> str:
        cp = self.lab.fwctl_raw(m, *argv, "--json", timeout=timeout)
        try:
            text = json.dumps(_brief(json.loads(cp.stdout)), separators=(",", ":"))
        except ValueError:
            text = " ".join((cp.stdout.strip() or cp.stderr.strip()).split())
        return f"exit {cp.returncode}: {text[:200]}"

    def _start(self, m: str, daemon: str) -> None:
        (self.lab.start_carpd if daemon == "carpd" else self.lab.start_syncd)(m)
        self.log_seen.pop((m, daemon), None)    # a new run appends; read from its start on

    # --- invariants ----------------------------------------------------------------
    def checkpoint(self, step: Step) -> None:
        step.t_check = time.monotonic()
        self._check_daemons(step)
        self._check_flows(step)
        self._check_masters(step)
        self._check_memory(step)
        self._check_new_flows(step)
        if step.n:
            self.report.steps.append(step)

    def _violation(self, step: Step, invariant: str, detail: str) -> None:
        text = f"after #{step.n} {step.fault.describe()}{' on ' + step.member if step.member else ''}: " \
               f"[{invariant}] {detail}"
        self.report.violations.append(text)
        self.out(f"VIOLATION {text}")

    def _check_daemons(self, step: Step) -> None:
        """No exit that was not injected (a crash), no traceback in a log."""
        for m in self.lab.members:
            for d in DAEMONS:
                p = self.lab.daemon(m, d)
                if p is None or p.poll() is not None:
                    rc = None if p is None else p.returncode
                    self._violation(step, "crash", f"{d} on {m} is not running (exit {rc}); "
                                                   f"log: {self.lab.log_tail(m, d, 800)}")
                    if self.keep_going:   # as systemd would, to see what comes next
                        self.lab.stop_daemon(m, d)
                        time.sleep(RESTART_DELAY)
                        try:
                            self._start(m, d)
                        except LabError as e:
                            self._violation(step, "crash", f"{d} on {m} does not start again: {e}")
                for line in self._new_log_lines(m, d):
                    if "Traceback" in line or " CRITICAL " in line:
                        self._violation(step, "crash", f"{d} on {m} logged: {line.strip()}")

    def _new_log_lines(self, m: str, d: str) -> list[str]:
        path = self.lab.log_path(m, d)
        try:
            with open(path, "rb") as fh:
                fh.seek(self.log_seen.get((m, d), 0))
                text = fh.read()
                self.log_seen[(m, d)] = fh.tell()
        except OSError:
            return []
        return text.decode(errors="replace").splitlines()

    def _check_flows(self, step: Step) -> None:
        """Every long-lived flow answered within FRESH s of its last send
        time; a silent one gets the fault's allowed gap to resume (a slow
        flow's lost request is not sent again: one more of its intervals),
        then it is lost."""
        if self.traffic.broken:
            raise LabError("the soak's traffic thread failed (an engine bug, not a product "
                           "one):\n" + self.traffic.broken[0])
        flows = self.traffic.flows
        allowed = chaosplan.allowed_gap(step.fault, self.master_down)
        t = step.t_check

        def silent():
            return [f for f in flows.values() if f.last < time.monotonic() - f.every - FRESH]
        if silent():
            self.lab.wait_for(lambda: not silent(), allowed + max(f.every for f in silent()), 0.1)
        worst = ("", 0.0)
        for f in list(flows.values()):
            if f.every > FRESH or f.proto == "tcp":
                # an idle flow's silence says nothing about the path, nor
                # does TCP's: its retransmission timer doubles while the
                # path is down (a 3.5 s outage shows as 6 s)
                continue
            g = f.max_gap(max(step.t_start, f.opened), t)
            if g > worst[1]:
                worst = (f.name, g)
        step.gap = worst
        if step.n and worst[1] > allowed:
            self.report.long_gaps.append(f"#{step.n} {step.fault.describe()}: {worst[0]} silent "
                                         f"{worst[1]:.2f} s, bound {allowed:.2f} s")
        for f in silent():
            self._lost(step, f)

    def _lost(self, step: Step, f) -> None:
        """Blame the step in which the flow died; reopen it. It died after
        its last answer, within a few send intervals (BLAME_SLACK) unless
        the traffic thread was starved: a fault that starts a moment after
        the last answer gets the blame."""
        t_last = f.last or f.opened
        steps = self.report.steps + [step]
        culprit = next((s for s in reversed(steps) if s.t_start <= t_last + BLAME_SLACK), None)
        r = self.report
        when = f"last answer at +{t_last - r.t0:.1f} s"
        if culprit is not None:
            phase = "during" if t_last <= culprit.t_end else \
                f"{t_last - culprit.t_end:.1f} s after the end of"
            when += f", {phase} #{culprit.n} {culprit.fault.describe()}" + \
                    (f" on {culprit.member}" if culprit.member else "")
        why = chaosplan.unavoidable(culprit.fault) if culprit is not None else None
        detail = f"flow {f.name} (generation {f.generation}) lost: {when}; error {f.error}"
        if why:
            r.expected_losses.append(f"{detail} -- {why}")
        else:
            self._violation(step, "flow", detail + "\n" + self._conntrack_view(f))
        self.traffic.open(f.name)

    def _conntrack_view(self, f) -> str:
        """The lost flow's conntrack entry on every member."""
        sel = ["--icmp-id" if f.proto.startswith("icmp") else "--sport", str(f.port)]
        fam = "ipv6" if f.name.endswith("6") else "ipv4"
        out = []
        for m in self.lab.members:
            cp = self.lab.run(m, ["conntrack", "-L", "-f", fam, "-p", f.proto, *sel], check=False)
            out.append(f"  {m} conntrack: {cp.stdout.strip() or '(no entry)'}")
        return "\n".join(out)

    def _neighbours(self) -> str:
        """Where the client and the server send for the vips, and the
        members' MACs: a neighbour left on a member that yielded shows here."""
        macs = []
        for m in self.lab.members:
            for ifname in ("lan0", "wan0"):
                link = self.lab.run(m, ["ip", "-br", "link", "show", ifname], check=False).stdout.split()
                macs.append(f"{m} {ifname} {link[2] if len(link) > 2 else '?'}")
        out = ["  members: " + ", ".join(macs)]
        for role in ("client", "server"):
            neigh = self.lab.run(role, ["ip", "neigh"], check=False).stdout.strip().splitlines()
            out.append(f"  {role} neighbours: " + " | ".join(neigh))
        return "\n".join(out)

    def _check_masters(self, step: Step) -> None:
        """One MASTER per vhid (bounded wait: a preemption may be under way),
        and the kernel agrees: the vip is on that member only."""
        want_one = lambda: all(len(ms) == 1 for ms in self._masters().values())
        self.lab.wait_for(want_one, self.master_down, 0.1)
        masters = self._masters()
        for v in self.lab.vips:
            ms = masters.get(v["vhid"], [])
            holders = [m for m in self.lab.members
                       if self._has(m, v["interface"], v["address"].split("/")[0])]
            if len(ms) != 1 or holders != ms:
                states = {m: self.lab.vip_state(m, v["vhid"]) for m in self.lab.members}
                self._violation(step, "masters", f"vhid {v['vhid']}: carpd states {states}, "
                                                 f"the address is on {holders}")

    def _has(self, m: str, ifname: str, addr: str) -> bool:
        try:
            return self.lab.has_addr(m, ifname, addr)
        except LabError:
            return False

    def _transitions(self) -> dict[str, int]:
        return {m: sum(v.get("transitions", 0) for v in (self.lab.status(m) or {}).get("vips", []))
                for m in self.lab.members}

    def _masters(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {v["vhid"]: [] for v in self.lab.vips}
        for m in self.lab.members:
            for v in (self.lab.status(m) or {}).get("vips", []):
                if v.get("state") == "MASTER" and v.get("vhid") in out:
                    out[v["vhid"]].append(m)
        return out

    def _in_sync(self) -> bool:
        for m in self.lab.members:
            try:
                st = self.lab.control(m, {"cmd": "status"}, daemon="syncd", timeout=3)
            except Exception:
                return False
            if not st.get("in_sync") or any(p["state"] != "up" or p["unacked"]
                                            for p in st.get("peers", {}).values()):
                return False
        return True

    def _check_memory(self, step: Step) -> None:
        for m in self.lab.members:
            for d in DAEMONS:
                p = self.lab.daemon(m, d)
                kb = rss_kb(p.pid) if p is not None and p.poll() is None else None
                if kb is None:
                    continue
                self.report.rss.append((step.t_check, m, d, kb))
                base = self.rss_base.setdefault((m, d), kb)
                if kb > base + self.rss_slack_mb * 1024:
                    self._violation(step, "memory", f"{d} on {m}: VmRSS {kb // 1024} MB, "
                                                    f"first {base // 1024} MB")

    def _check_new_flows(self, step: Step) -> None:
        for v6 in (False, True):
            ok, err = self.traffic.short_flow(v6)
            if not ok:
                ok, err2 = self.traffic.short_flow(v6)     # once more: one SYN may meet a neighbour miss
                if not ok:
                    self._violation(step, "new", f"a new session does not pass: {err}; {err2}\n"
                                    + self._neighbours())

    def _logs(self) -> str:
        return "\n".join(f"--- {m} {d} log (tail):\n{self.lab.log_tail(m, d, 3000)}"
                         for m in self.lab.members for d in DAEMONS)


def _brief(v):
    """fwctl's JSON without what says nothing in a step's line (digests,
    the per-vip detail of a drill)."""
    if isinstance(v, dict):
        return {k: _brief(x) for k, x in v.items() if k not in ("digest", "vips", "sessions")}
    if isinstance(v, list):
        return [_brief(x) for x in v]
    return v


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in kB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def soak(seed: int, seconds: float, members: int = 2, keep_going: bool = False,
         out: Callable[[str], None] = print) -> Report:
    """One chaos run in a lab of its own (torn down afterwards)."""
    if members not in (2, 3):
        raise ValueError("the chaos soak runs 2 or 3 members")
    with Lab(members=members, prefix="chaos", **TIMING) as lab:
        return Chaos(lab, seed, seconds, keep_going, out).run()


def from_env() -> dict:
    """CHAOS_SEED (default: a fresh one), CHAOS_SECONDS, CHAOS_MEMBERS, CHAOS_KEEP_GOING."""
    seed = os.environ.get("CHAOS_SEED")
    return {"seed": int(seed) if seed else int.from_bytes(os.urandom(4), "big"),
            "seconds": float(os.environ.get("CHAOS_SECONDS", 170)),
            "members": int(os.environ.get("CHAOS_MEMBERS", 2)),
            "keep_going": os.environ.get("CHAOS_KEEP_GOING", "") not in ("", "0")}

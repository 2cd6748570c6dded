"""Takeover speed. First, how long a member takes to put all its vips in
place once it decides to become MASTER (4 vips: IPv4 and IPv6 on LAN and
WAN): not a timed assertion, the figures are printed (run with -s to see
them); that test asserts that every handover completes and that the figures
could be measured. Then every single fault (killed carpd, node loss with
links dropping at once or in either order, each cable alone; at fast and
default timing; no hold, both members held or one held by the sync hold),
bounded by the protocol's time plus a margin, measured at the client (see
the section below).

The vip figures: rounds alternate: fw1 demoted (maintenance on: its adverts
for all vhids go out together, fw2 takes all at once) and fw1 preempting
back (maintenance off: it takes each vhid on fw2's next advert for it).
Decision time: the taker's "-> MASTER" log line; vip present:
`ip -ts monitor address` in the taker's namespace.
"""
from __future__ import annotations

import re
import signal
import statistics
import subprocess
import time
from datetime import datetime

import pytest
from carp_helpers import (MARGIN, ArpWatch, hold, largest_gap, mac, takeover_bound, vhids,
                          vip_address, wait_settled)

from tests.labkit import LAN_VIP4, SERVER4, WAN_VIP4
from tests.labkit.netns import ip_batch

ROUNDS = 3  # each round: hand over to fw2 and back to fw1
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*-> MASTER")
MON_LINE = re.compile(r"^\[(\S+)\] \d+: (\S+)\s+inet6? ([0-9a-f.:]+)/")


def _log_times(text: str) -> list[float]:
    return [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for line in text.splitlines() if (m := LOG_TIME.match(line))]


def _added(text: str, vips: set[tuple[str, str]]) -> list[tuple[float, str]]:
    out = []
    for line in text.splitlines():
        m = MON_LINE.match(line)
        if m and (m.group(2), m.group(3)) in vips:
            out.append((datetime.fromisoformat(m.group(1)).timestamp(), m.group(3)))
    return out


def _handover_ms(log: str, mon: str, vips: set) -> tuple[float, float]:
    """(first MASTER decision, last MASTER decision) -> last vip add, in ms.
    The decisions are apart when they follow the old master's adverts, which
    arrive per vhid (preemption); a demoted master's come together."""
    decided = _log_times(log)
    assert decided, f"no MASTER decision in the log:\n{log[-1500:]}"
    first, last = min(decided), max(decided)
    adds = [t for t, _ in _added(mon, vips) if t >= first - 0.002]
    assert len(adds) >= len(vips), f"vips added: {adds}\n{mon[-1500:]}"
    return (max(adds) - first) * 1000, max(0.0, max(adds) - last) * 1000


def test_takeover_adds_all_vips_together(carp_lab, tmp_path):
    lab = carp_lab(members=2, ipv6=True)
    vips = {vip_address(lab, v) for v in vhids(lab)}
    assert len(vips) == 4
    mons = {m: tmp_path / f"{m}-addr.log" for m in lab.members}
    for m, path in mons.items():
        with open(path, "wb") as out:
            lab.popen(m, ["ip", "-ts", "monitor", "address"], stdout=out,
                      stderr=subprocess.DEVNULL)
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1", timeout=20)
    figures = []
    for _ in range(ROUNDS):
        for taker, on in (("fw2", True), ("fw1", False)):
            log_mark = len(lab.log_tail(taker, "carpd", 10**9))
            mon_mark = mons[taker].stat().st_size
            lab.control("fw1", {"cmd": "maintenance", "on": on})
            wait_settled(lab, taker, timeout=20)
            log = lab.log_tail(taker, "carpd", 10**9)[log_mark:]
            mon = mons[taker].read_text()[mon_mark:]
            figures.append(_handover_ms(log, mon, vips))
    for i, name in enumerate(("first", "last")):
        got = [f[i] for f in figures]
        print(f"\ntakeover, {name} MASTER decision -> all 4 vips present (ms): "
              f"{', '.join(f'{f:.1f}' for f in got)}; median {statistics.median(got):.1f}, "
              f"max {max(got):.1f}")
    assert len(figures) == 2 * ROUNDS


# --- single faults: the takeover as the client sees it -----------------------------
#
# Issue 20: with both members held by the sync hold, pulling the master's LAN
# cable cut the client off for 2.9 s where the protocol allows 78 ms, and the
# test of that fault waited "up to 5 s". Every single fault here is bounded
# by what the protocol defines (machine.master_wait behind the master, plus
# carp_helpers.MARGIN), measured in the client's replies (or, for a killed
# carpd whose vips stay and forward, the new master's gratuitous ARPs at the
# client and the server). A pulled cable moves the group on the demoted
# advert the master sends at once: no timer, MARGIN alone.

TIMINGS = {"fast": {"advbase": 0, "advskews": {"fw1": 10, "fw2": 20}},  # master-down 78 ms
           "default": {"advbase": 1, "advskews": {"fw1": 0, "fw2": 100}}}  # 3.39 s


def _links_in_order(*ifnames, apart=0.02):
    """Node loss with the links dropping one after another, then the kill."""
    def fault(lab, member):
        t = time.monotonic()
        for ifname in ifnames:
            ip_batch(lab.ns(member), [f"link set {ifname} down"])
            time.sleep(apart)
        lab.node_loss(member)
        return t
    return fault


def _cable(segment):
    def fault(lab, member):
        lab.cut(member, segment, carrier=False)
        return time.monotonic()
    return fault


FAULTS = {"node-loss": lambda lab, member: lab.node_loss(member),
          "lan-then-wan": _links_in_order("lan0", "wan0", "sync0"),
          "wan-then-lan": _links_in_order("wan0", "lan0", "sync0"),
          "lan-cable": _cable("lan"), "wan-cable": _cable("wan")}

# (timing, fault, members held by the sync hold). Fast cases are cheap and
# cover every fault with no hold and with both held, and the two one-sided
# holds on node loss and the LAN cable; default timing (3.4 s each) takes
# the case and one node loss.
CASES = [("fast", f, h) for f in FAULTS for h in ((), ("fw2", "fw1"))] + \
        [("fast", f, h) for f in ("node-loss", "lan-cable") for h in (("fw1",), ("fw2",))] + \
        [("default", "lan-cable", ("fw2", "fw1")), ("default", "wan-then-lan", ("fw2",))]


def _held_pair(carp_lab, timing, held):
    """Two members at `timing`, settled, `held` holding the sync demotion;
    returns (lab, master, backup)."""
    lab = carp_lab(members=2, ipv6=False, **TIMINGS[timing])
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1", timeout=15)
    hold(lab, held)
    master, backup = ("fw2", "fw1") if held == ("fw1",) else ("fw1", "fw2")
    wait_settled(lab, master, timeout=5)
    time.sleep(0.3)  # a few adverts at the held timing
    assert lab.ping("client", SERVER4)
    return lab, master, backup


def _case_id(case):
    timing, fault, held = case
    return f"{timing}-{fault}-held:{'+'.join(sorted(held)) or 'none'}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_single_fault_takeover_is_bounded_at_the_client(carp_lab, case):
    timing, fault, held = case
    lab, master, backup = _held_pair(carp_lab, timing, held)
    cable = fault.endswith("-cable")
    bound = MARGIN if cable else takeover_bound(lab, master, backup)
    gap = largest_gap(lab, SERVER4, lambda: FAULTS[fault](lab, master), bound + 0.5)
    print(f"\n{_case_id(case)}: client gap {gap * 1000:.0f} ms (bound {bound * 1000:.0f} ms)")
    assert gap <= bound, (f"client cut off {gap:.3f} s, bound {bound:.3f} s\n"
                          + lab.log_tail(backup, "carpd", 1500))
    wait_settled(lab, backup, timeout=2, members=[backup])


@pytest.mark.parametrize("timing,held", [("fast", ()), ("fast", ("fw2", "fw1")),
                                         ("fast", ("fw1",)), ("default", ())])
def test_killed_carpd_is_taken_over_within_the_bound(carp_lab, timing, held):
    # SIGKILL leaves the master's vips in place (it still forwards), so the
    # client sees the takeover as the new master's gratuitous ARP.
    lab, master, backup = _held_pair(carp_lab, timing, held)
    bound = takeover_bound(lab, master, backup)
    watches = [ArpWatch(lab, "client", LAN_VIP4, bound + 0.5),
               ArpWatch(lab, "server", WAN_VIP4, bound + 0.5)]
    t = time.monotonic()
    lab.stop_daemon(master, "carpd", signal.SIGKILL)
    seen = [w.first_from(mac(lab, backup, ifname), t) for w, ifname in zip(watches, ("lan0", "wan0"))]
    print(f"\n{timing} kill held:{'+'.join(held) or 'none'}: new master announced after "
          f"{[None if s is None else round((s - t) * 1000) for s in seen]} ms "
          f"(bound {bound * 1000:.0f} ms)")
    assert all(s is not None and s - t <= bound for s in seen), \
        (seen, t, bound, lab.log_tail(backup, "carpd", 1500))

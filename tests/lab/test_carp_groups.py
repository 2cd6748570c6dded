"""Two failover groups as a static active-active split (docs/examples/
cluster-split.toml) in the namespace lab: fw1 is preferred in "left" (LAN
vip 192.0.2.1, WAN vip 198.51.100.1), fw2 in "right" (192.0.2.2,
198.51.100.2), virtual MACs. The client sends one flow set from 192.0.2.100
through the left gateway and one from 192.0.2.101 through the right one;
the server routes each back through the same group's WAN vip. So each
member forwards its own group's sessions, and the ruleset marks the right
group's flows (ct mark bits 24-27) so that state sync gives them to fw2.

Losing either member moves its group to the other, which then carries
both groups' sessions with no gap longer than the backup's master-down
time plus the margin (plus one send period of the flow); the member's
return takes its group back no sooner than preempt_delay after it was
ready (its sync hold lifted) and again keeps every session.
"""
from __future__ import annotations

import time

import pytest

from fwcluster.carp.core.machine import master_down_interval
from tests.lab.sync_helpers import in_sync, logs, start_member
from tests.labkit import LAN_VIP4, SERVER4, WAN_VIP4
from tests.labkit.addresses import LAN4, WAN4
from tests.labkit.flows import PERIODS, Flows

pytestmark = pytest.mark.lab

RIGHT_LAN, RIGHT_WAN = f"{LAN4}.2", f"{WAN4}.2"
LEFT_CLIENT, RIGHT_CLIENT = f"{LAN4}.100", f"{LAN4}.101"
ADVBASE, SKEW_PREFERRED, SKEW_BACKUP = 1, 0, 100
PREEMPT_DELAY = 2.0
MARGIN = 0.2
GROUP_OF = {"left": (1, 2), "right": (3, 4)}
PREFERRED = {"left": "fw1", "right": "fw2"}
SESSIONS = ("tcp up", "tcp down", "udp request", "udp response", "udp server-push",
            "udp client-push")
RIGHT_MARK = 0x01000000


def split_config() -> dict:
    vip = {"advbase": ADVBASE, "mac": "virtual"}
    return {
        "groups": [
            {"name": "left", "preempt_delay": PREEMPT_DELAY,
             "advskew": {"fw1": SKEW_PREFERRED, "fw2": SKEW_BACKUP}},
            {"name": "right", "preempt_delay": PREEMPT_DELAY,
             "advskew": {"fw1": SKEW_BACKUP, "fw2": SKEW_PREFERRED}}],
        "vips": [
            {"vhid": 1, "interface": "lan0", "address": f"{LAN_VIP4}/24", "group": "left", **vip},
            {"vhid": 2, "interface": "wan0", "address": f"{WAN_VIP4}/24", "group": "left", **vip},
            {"vhid": 3, "interface": "lan0", "address": f"{RIGHT_LAN}/24", "group": "right", **vip},
            {"vhid": 4, "interface": "wan0", "address": f"{RIGHT_WAN}/24", "group": "right", **vip}],
        "carp": {"sync_hold": 20},
    }


def holds(lab, member: str, group: str) -> bool:
    """member is master of every vip of group and the other member of none."""
    others = [m for m in lab.members if m != member]
    return all(lab.vip_state(member, v) == "MASTER" for v in GROUP_OF[group]) and \
        all(lab.vip_state(m, v) != "MASTER" for m in others for v in GROUP_OF[group])


def split_settled(lab) -> bool:
    return all(holds(lab, m, g) for g, m in PREFERRED.items())


def route_the_split(lab) -> None:
    """The client's second address leaves through the right gateway; the
    server sends each client's replies back through its group's WAN vip."""
    lab.run("client", ["ip", "rule", "add", "from", RIGHT_CLIENT, "table", "101"])
    lab.run("client", ["ip", "route", "add", "default", "via", RIGHT_LAN, "table", "101"])
    lab.run("server", ["ip", "route", "add", f"{RIGHT_CLIENT}/32", "via", RIGHT_WAN])


def marks(lab, member: str, client: str) -> set[int]:
    """The conntrack marks of the TCP flows from client in member's table."""
    out = lab.run(member, ["conntrack", "-L", "-p", "tcp", "--orig-src", client],
                  check=False).stdout
    return {int(word.split("=")[1]) for line in out.splitlines() for word in line.split()
            if word.startswith("mark=")}


def replicated(lab, sets: dict) -> bool:
    """Both members hold every answered UDP flow as ASSURED: state sync
    replicates a UDP flow once the kernel assures it (a reply seen and
    2 s after its first packet; docs/sync.md, "Filtering"), so a member
    lost before that takes its young UDP flows with it, by design. The
    client-push flow is never answered: the survivor re-creates it."""
    ports = [f.ports[n] for f in sets.values() for n in ("udp request", "udp server-push")]
    return all("ASSURED" in lab.run(m, ["conntrack", "-L", "-p", "udp", "--orig-port-dst", str(p)],
                                    check=False).stdout
               for m in lab.members for p in ports)


def worst_gaps(sets: dict, t0: float, t1: float) -> dict:
    return {(label, n): round(f.worst_gap(n, max(t0, f.started), t1)[0], 3)
            for label, f in sets.items() for n in SESSIONS}


def lose_and_return(lab, sets: dict, lost: str) -> dict:
    """Node loss of `lost`, the survivor carries both groups, `lost` comes
    back and takes its group back after the preempt delay. Returns what
    was measured; asserts the bounds."""
    survivor = next(m for m in lab.members if m != lost)
    group = next(g for g, m in PREFERRED.items() if m == lost)
    bound = master_down_interval(ADVBASE, SKEW_BACKUP) + MARGIN
    t0 = lab.node_loss(lost)
    assert lab.wait_for(lambda: holds(lab, survivor, group), bound + 1.0), logs(lab)
    took = time.monotonic() - t0
    time.sleep(3 * max(PERIODS.values()))  # every flow sends again through the survivor
    gaps = worst_gaps(sets, t0, time.monotonic())
    over = {k: g for k, g in gaps.items() if g > bound + PERIODS[k[1]]}
    assert not over, f"{lost} lost: sessions cut off {over} (bound {bound:.2f} s + period)\n" \
        + logs(lab)

    lab.node_return(lost)
    start_member(lab, lost)
    # Ready: its sync hold lifted (bulk resync done); from then on it is
    # better than the survivor in its group and must wait PREEMPT_DELAY.
    assert lab.wait_for(lambda: (lab.status(lost) or {}).get("demotion_sources") == {}, 25), \
        logs(lab)
    ready = time.monotonic()
    t1 = ready
    assert lab.wait_for(lambda: holds(lab, lost, group), PREEMPT_DELAY + 3 * ADVBASE + 1.0), \
        logs(lab)
    back = time.monotonic() - ready
    assert back >= PREEMPT_DELAY - 0.05, f"{lost} took {group} back {back:.2f} s after it was ready"
    assert lab.wait_for(lambda: split_settled(lab) and in_sync(lab), 10), logs(lab)
    time.sleep(3 * max(PERIODS.values()))
    back_gaps = worst_gaps(sets, t1, time.monotonic())
    over = {k: g for k, g in back_gaps.items() if g > MARGIN + 2 * PERIODS[k[1]]}
    assert not over, f"{lost} back: sessions cut off {over}\n" + logs(lab)
    return {"takeover_s": round(took, 2), "preempt_after_ready_s": round(back, 2),
            "worst_gap_loss_s": max(gaps.values()), "worst_gap_back_s": max(back_gaps.values())}


def test_static_split_carries_both_groups_through_the_loss_of_either_member(lab_factory, capsys):
    lab = lab_factory(members=2, ipv6=False, clients=2, advbase=ADVBASE, **split_config())
    route_the_split(lab)
    for m in lab.members:
        start_member(lab, m)
    assert lab.wait_for(lambda: split_settled(lab) and in_sync(lab), 40), logs(lab)
    sets = {"left": Flows(lab, SERVER4, base_port=47000, duration=400, source=LEFT_CLIENT),
            "right": Flows(lab, SERVER4, base_port=47010, duration=400, source=RIGHT_CLIENT)}
    try:
        for f in sets.values():
            f.start()
        assert {p[0] for p in sets["left"].sources["tcp"]} == {LEFT_CLIENT}
        assert {p[0] for p in sets["right"].sources["tcp"]} == {RIGHT_CLIENT}
        # The right group's flows are marked as its own where they pass
        # (fw2) and carry the mark to fw1 by state sync; the left group's
        # are mark 0 on both.
        for m in lab.members:
            assert lab.wait_for(lambda: marks(lab, m, RIGHT_CLIENT) == {RIGHT_MARK}, 5), \
                (m, marks(lab, m, RIGHT_CLIENT))
            assert marks(lab, m, LEFT_CLIENT) == {0}, (m, marks(lab, m, LEFT_CLIENT))
        assert lab.wait_for(lambda: replicated(lab, sets), 10), logs(lab)
        figures = {lost: lose_and_return(lab, sets, lost) for lost in ("fw1", "fw2")}
        with capsys.disabled():
            print(f"\nstatic split: {figures}")
        for f in sets.values():
            assert len(f.sources["tcp"]) == 1, "a TCP session was re-created"
            assert not f.errors, f.errors
    finally:
        for f in sets.values():
            f.stop()

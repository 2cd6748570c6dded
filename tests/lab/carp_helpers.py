"""Shared checks of the CARP lab tests (not a test module)."""
from __future__ import annotations

import time

from tests.labkit import Lab

# Sub-second timing that still leaves four adverts of margin on a busy
# machine: fw1 advertises every 50/256 s (195 ms), fw2's master-down is
# 200/256 s (781 ms).
FAST = {"advbase": 0, "advskews": {"fw1": 50, "fw2": 200, "fw3": 230, "fw4": 250}}


def fast(lab_members: int = 2) -> dict:
    skews = {f"fw{k}": FAST["advskews"][f"fw{k}"] for k in range(1, lab_members + 1)}
    return {"advbase": 0, "advskews": skews}


def vhids(lab: Lab) -> list[int]:
    return [v["vhid"] for v in lab.vips]


def vip_address(lab: Lab, vhid: int) -> tuple[str, str]:
    """(interface, address without prefix) of a vhid."""
    for v in lab.vips:
        if v["vhid"] == vhid:
            return v["interface"], v["address"].split("/")[0]
    raise KeyError(vhid)


def vip(status: dict | None, vhid: int) -> dict:
    for v in (status or {}).get("vips", []):
        if v["vhid"] == vhid:
            return v
    return {}


def settled(lab: Lab, master: str, members=None, vids=None) -> bool:
    """Every vhid: master is MASTER, every other running member BACKUP, and
    the kernel agrees (the VIP is on the master's interface only)."""
    members = list(members or lab.members)
    for vhid in vids or vhids(lab):
        states = lab.states(vhid, members)
        want = {m: ("MASTER" if m == master else "BACKUP") for m in members}
        if states != want:
            return False
        ifname, addr = vip_address(lab, vhid)
        for m in members:
            if lab.has_addr(m, ifname, addr) != (m == master):
                return False
    return True


def wait_settled(lab: Lab, master: str, timeout: float = 10, members=None, vids=None) -> None:
    ok = lab.wait_for(lambda: settled(lab, master, members, vids), timeout, 0.05)
    assert ok, (f"expected {master} MASTER of every vhid; states: "
                f"{ {v: lab.states(v, members) for v in (vids or vhids(lab))} }\n"
                + "\n".join(f"--- {m} carpd log:\n{lab.log_tail(m, 'carpd', 1500)}"
                            for m in (members or lab.members)))


def transitions(lab: Lab, member: str) -> dict[int, int]:
    st = lab.status(member)
    return {v["vhid"]: v["transitions"] for v in (st or {}).get("vips", [])}


def drops(lab: Lab, member: str) -> dict[str, int]:
    """Drops by reason, summed over the member's vips."""
    total: dict[str, int] = {}
    for v in (lab.status(member) or {}).get("vips", []):
        for reason, n in v["counters"]["drops"].items():
            total[reason] = total.get(reason, 0) + n
    return total


def mac(lab: Lab, role: str, ifname: str) -> str:
    import json
    out = lab.run(role, ["ip", "-j", "link", "show", "dev", ifname]).stdout
    return json.loads(out)[0]["address"]


def neigh_mac(lab: Lab, role: str, address: str) -> str | None:
    import json
    out = lab.run(role, ["ip", "-j", "neigh", "show", address]).stdout
    entries = json.loads(out or "[]")
    return entries[0].get("lladdr") if entries else None


# --- stability: roles that stay put, gateways that moved ------------------------

def watch_period(lab: Lab) -> float:
    """Three CARP master-down intervals of the slowest member, and at least
    a little more than the longest wait a backup may be in behind the
    configured master (machine.master_wait), so that a claim between two
    adverts is seen."""
    from fwcluster.carp.core import machine
    from fwcluster.carp.core.wire import Advert
    skews = list(lab.advskews.values())
    periods = []
    for v in lab.vips:
        base = v.get("advbase", 1)
        periods.append(3 * max(machine.master_down_interval(base, s) for s in skews))
        periods += [1.2 * machine.master_wait(base, s, Advert(v["vhid"], base, master, 0, 0))
                    for s in skews for master in skews if master != s]
    return max(periods)


def stays_settled(lab: Lab, master: str, members=None, vids=None, seconds: float | None = None) -> None:
    """After a handover: the roles and the vips stay exactly where they are
    for three master-down intervals (a flapping pair fails this: the
    machines' transition counters must not move either)."""
    members = list(members or lab.members)
    seconds = watch_period(lab) if seconds is None else seconds
    before = {m: transitions(lab, m) for m in members}
    deadline = time.monotonic() + seconds
    polls = 0
    while time.monotonic() < deadline:
        assert settled(lab, master, members, vids), (
            f"{master} lost the roles {polls} polls into the watch: "
            f"{ {v: lab.states(v, members) for v in (vids or vhids(lab))} }")
        polls += 1
        time.sleep(0.05)
    after = {m: transitions(lab, m) for m in members}
    assert after == before, (f"role changes while watched ({seconds:.2f} s): {before} -> {after}\n"
                             + "\n".join(f"--- {m} carpd log:\n{lab.log_tail(m, 'carpd', 2500)}"
                                          for m in members))


def gateways_at(lab: Lab, member: str, timeout: float = 3.0) -> None:
    """The client's LAN gateway and the server's WAN gateway (IPv4) both
    resolve to member's MACs: its gratuitous ARPs arrived on both sides."""
    from tests.labkit import LAN_VIP4, WAN_VIP4
    want = {("client", LAN_VIP4): mac(lab, member, "lan0"),
            ("server", WAN_VIP4): mac(lab, member, "wan0")}
    ok = lab.wait_for(lambda: all(neigh_mac(lab, role, a) == m for (role, a), m in want.items()),
                      timeout, 0.02)
    assert ok, {k: (neigh_mac(lab, *k), m) for k, m in want.items()}


def forwards(lab: Lab, target: str, timeout: float = 3.0) -> None:
    """A new flow from the client reaches target within timeout (each probe
    bounded; the first may still race a neighbour entry on the far side)."""
    assert lab.wait_for(lambda: lab.ping("client", target, timeout=0.5), timeout, 0.05), \
        f"client cannot reach {target}"


def loss_and_preemption_back(lab: Lab, target: str) -> None:
    """fw1 (the best member) is lost: fw2 takes over, both gateways move,
    roles stay, the client reaches target. fw1 returns and preempts: the
    same checks the other way. Its LAN and WAN vips move as one failover
    group: were they claimed an advert apart, the two directions of a flow
    would cross different members for that moment and a strict ruleset
    without state sync would drop the replies."""
    forwards(lab, target)  # both gateways resolved: gratuitous ARP updates, never creates
    gateways_at(lab, "fw1")
    lab.node_loss("fw1")
    wait_settled(lab, "fw2", timeout=5, members=["fw2"])
    gateways_at(lab, "fw2")
    stays_settled(lab, "fw2", members=["fw2"])
    forwards(lab, target)
    lab.node_return("fw1")
    lab.start_carpd("fw1")
    wait_settled(lab, "fw1", timeout=8)
    gateways_at(lab, "fw1")
    stays_settled(lab, "fw1")
    forwards(lab, target)


# --- single faults, measured at the client ---------------------------------------

# What a loaded 2-core machine needs beyond the protocol's own time: link
# detection, the daemons' loop turns, the address write, the ARP on both sides.
MARGIN = 0.15
PROBE_EVERY = 0.005


def hold(lab: Lab, members) -> None:
    """The sync hold's demotion (as syncd sets it) on these members, the
    current master last so that it keeps the vips when all are held."""
    from fwcluster.core import contract
    for m in members:
        assert lab.control(m, contract.set_demotion(contract.SYNC_SOURCE,
                                                    contract.SYNC_HOLD_DEMOTE))["ok"]


def takeover_bound(lab: Lab, master: str, backup: str) -> float:
    """The longest the protocol lets backup wait once master falls silent
    (machine.master_wait behind master's real advert interval), plus MARGIN."""
    from fwcluster.carp.core import machine
    from fwcluster.carp.core.wire import Advert
    base = lab.vips[0].get("advbase", 1)
    heard = Advert(1, base, lab.advskews[master], 0, 0)
    return machine.master_wait(base, lab.advskews[backup], heard) + MARGIN


class ArpWatch:
    """Gratuitous ARPs for `address` seen in a namespace (AF_PACKET), with
    their time on time.monotonic(); for faults that leave the old master
    forwarding (a killed carpd leaves its vips), where the client sees the
    takeover as the new master's announcement, not as lost replies."""

    def __init__(self, lab: Lab, role: str, address: str, duration: float):
        import socket
        import threading
        self.sock = lab.socket(role, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
        self.address = socket.inet_aton(address)
        self.seen: list[tuple[float, str]] = []  # (time, sender MAC)
        self.end = time.monotonic() + duration
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import select
        while (left := self.end - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                continue
            frame = self.sock.recv(128)
            t = time.monotonic()
            arp = frame[14:]
            if len(arp) >= 28 and arp[14:18] == self.address:
                self.seen.append((t, arp[8:14].hex(":")))

    def first_from(self, mac_: str, after: float) -> float | None:
        self._thread.join(max(0.0, self.end - time.monotonic()) + 1)
        self.sock.close()
        return next((t for t, m in self.seen if m == mac_ and t >= after), None)


def largest_gap(lab: Lab, target: str, fault, watch: float) -> float:
    """Ping target from the client every PROBE_EVERY s, call fault() (the
    fault happens in it), keep probing `watch` s more; returns the largest
    gap between replies, the end of the watch counting as one (a client
    never answered again has a gap as long as the watch)."""
    from tests.labkit import Prober
    with Prober(lab, "client", target, interval=PROBE_EVERY, duration=watch + 2.0) as p:
        assert lab.wait_for(lambda: len(p.replies) >= 20, 1.0, 0.01), "no replies before the fault"
        fault()
        time.sleep(watch)
        end = time.monotonic()
    times = [t for t in p.reply_times() if t < end] + [end]
    return max(b - a for a, b in zip(times, times[1:]))

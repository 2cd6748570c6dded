"""Shared checks of the CARP lab tests (not a test module)."""
from __future__ import annotations

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

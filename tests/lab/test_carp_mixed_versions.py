"""Hardened CARP between releases (issue 23): a member of this release and
one speaking only version 4 (a build capped to the previous release's
protocols, or the previous release itself) keep one master, hand over
within master-down + 0.2 s both ways, and the new member's adverts on each
vhid go out at version 4 while the old one is there."""
from __future__ import annotations

import signal
import time

import pytest
from carp_helpers import ArpWatch, fast, mac, stays_settled, vhids, vip, wait_settled

import previous_release
from fwcluster.carp.core import machine
from tests.labkit import LAN_VIP4

CAPPED = {"FWCLUSTER_PROTOCOLS": "previous"}


def old_env(kind: str) -> dict:
    if kind == "capped":
        return CAPPED
    if previous_release.tree() is None:
        pytest.skip(f"the previous release ({previous_release.PREVIOUS}) is not in this checkout")
    return previous_release.env()


def takeover(lab, master: str, backup: str, bound: float) -> float | None:
    """Kills master's carpd (its vips stay, as after a crash); the seconds
    until the client sees backup's gratuitous ARP for the LAN vip."""
    watch = ArpWatch(lab, "client", LAN_VIP4, bound + 0.5)
    t = time.monotonic()
    lab.stop_daemon(master, "carpd", signal.SIGKILL)
    seen = watch.first_from(mac(lab, backup, "lan0"), t)
    return None if seen is None else seen - t


@pytest.mark.parametrize("kind", ["capped", "previous"])
@pytest.mark.parametrize("old", ["fw1", "fw2"])
def test_mixed_versions_keep_one_master_and_hand_over_both_ways(carp_lab, old, kind):
    """The old member (v4 only) runs first; the new one joins it as a backup
    does in a rolling upgrade, listens, falls back to 4 before its first
    advert, and fw1 (the better skew) holds the vips with no dual master.
    fw1's carpd is killed: the client hears fw2's gratuitous ARP within
    fw2's master-down + 0.2 s; fw1 starts again and preempts; the roles
    then stay put."""
    # hardened named: it was not the previous release's default
    lab = carp_lab(members=2, ipv6=False, carp={"mode": "hardened"}, **fast())
    new = "fw2" if old == "fw1" else "fw1"
    lab.start_carpd(old, env=old_env(kind))
    wait_settled(lab, old, members=[old])
    lab.start_carpd(new)
    wait_settled(lab, "fw1")
    stays_settled(lab, "fw1")
    st = lab.status(new)
    old_addr = lab.addr4(old, "lan")
    for vhid in vhids(lab):
        assert vip(st, vhid)["hardened_version"] == 4, vip(st, vhid)
    assert vip(st, 1)["hardened_peers"].get(old_addr) == 4
    if kind == "capped":
        assert all(v["hardened_version"] == 4 for v in lab.status(old)["vips"])

    # the old member read the new one's adverts: its only bad_version drops
    # are the probes (a v5 solicitation per vhid every PROBE_GAP at most)
    seen = lab.status(old)["vips"]
    assert sum(v["counters"]["adverts_received"] for v in seen) > 0 or old == "fw1"
    assert sum(v["counters"]["drops"]["bad_version"] for v in seen) <= len(seen), seen
    bound = machine.master_down_interval(0, lab.advskews["fw2"]) + 0.2
    took = takeover(lab, "fw1", "fw2", bound)
    assert took is not None and took <= bound, \
        (f"fw2 took {took} s, bound {bound:.3f} s", lab.log_tail("fw2", "carpd", 1500))
    lab.start_carpd("fw1", env=old_env(kind) if old == "fw1" else None)
    wait_settled(lab, "fw1", timeout=5)
    stays_settled(lab, "fw1")
    print(f"mixed {kind} (old {old}): takeover {took * 1000:.0f} ms (bound {bound * 1000:.0f} ms)")


def test_the_upgraded_pair_climbs_back_to_5(carp_lab):
    """A rolling upgrade ends with both members new: fw2 (new) fell back to
    4 for the capped fw1; fw1 is restarted on this release, hears fw2 at 4,
    probes it, and within a probe gap both send at 5, fw1 master again."""
    from fwcluster.carp.core import hardened
    lab = carp_lab(members=2, ipv6=False, **fast())
    lab.start_carpd("fw1", env=CAPPED)
    lab.start_carpd("fw2")
    wait_settled(lab, "fw1")
    assert all(v["hardened_version"] == 4 for v in lab.status("fw2")["vips"])
    lab.stop_daemon("fw1", "carpd", signal.SIGKILL)
    wait_settled(lab, "fw2", members=["fw2"], timeout=5)
    lab.start_carpd("fw1")
    wait_settled(lab, "fw1", timeout=5)

    def at_5():
        return all(v["hardened_version"] == 5 for m in lab.members for v in lab.status(m)["vips"])
    assert lab.wait_for(at_5, hardened.PROBE_GAP + 2, 0.1), \
        [lab.status(m)["vips"] for m in lab.members]
    stays_settled(lab, "fw1")


def claims(lab, member: str, since: int) -> list[str]:
    """carpd's '-> MASTER' lines on member after byte `since` of its log."""
    text = lab.log_path(member, "carpd").read_bytes()[since:].decode(errors="replace")
    return [line for line in text.splitlines() if "-> MASTER" in line]


def test_a_member_rolled_back_to_version_4_joins_without_a_claim(carp_lab):
    """A rollback: fw2 comes back as the previous release (carpd and syncd
    capped, as after a boot into the old slot). It cannot read fw1's v5
    adverts and, as a backup, sends nothing: fw1 would hear it at 4 only
    when it claims. fw1's syncd hears fw2's sync ALIVE (sync 2 only: the
    previous release) and tells carpd, whose adverts go out at 4 before
    fw2's master-down: fw2 never claims (its carpd log has no MASTER line,
    fw1's transition counters stay). Rolled forward again, fw1 is told 5
    and every vhid climbs back at once."""
    from fwcluster.carp.core import hardened
    from sync_helpers import in_sync, start_member
    lab = carp_lab(members=2, ipv6=False, advbase=1)
    for m in lab.members:
        start_member(lab, m)
    wait_settled(lab, "fw1", timeout=15)
    assert lab.wait_for(lambda: in_sync(lab), 15, 0.1)
    assert {v["hardened_version"] for v in lab.status("fw1")["vips"]} == {5}

    for d in ("carpd", "syncd"):
        lab.stop_daemon("fw2", d)
    since = lab.log_path("fw2", "carpd").stat().st_size
    fw1_before = {v["vhid"]: v["transitions"] for v in lab.status("fw1")["vips"]}
    lab.start_syncd("fw2", env=CAPPED)
    lab.start_carpd("fw2", env=CAPPED)
    # fw2's master-down is 3 advert intervals and its skew: watch twice that
    down = machine.master_down_interval(1, lab.advskews["fw2"])
    deadline = time.monotonic() + 2 * down
    while time.monotonic() < deadline:
        assert not claims(lab, "fw2", since), (claims(lab, "fw2", since), lab.log_tail("fw2", "carpd", 2000),
                                               lab.log_tail("fw1", "carpd", 2000))
        time.sleep(0.1)
    st = lab.status("fw1")
    assert st["hardened_told"] == {"fw2": 4}
    assert {v["hardened_version"] for v in st["vips"]} == {4}
    assert {v["vhid"]: v["transitions"] for v in st["vips"]} == fw1_before
    assert all(v["state"] == "BACKUP" for v in lab.status("fw2")["vips"])
    assert "speaks hardened CARP up to 4" in lab.log_tail("fw1", "carpd", 4000)

    for d in ("carpd", "syncd"):        # rolled forward: this release again
        lab.stop_daemon("fw2", d)
    start_member(lab, "fw2")

    def at_5():
        st = lab.status("fw1")
        return st["hardened_told"] == {"fw2": 5} and {v["hardened_version"] for v in st["vips"]} == {5}
    assert lab.wait_for(at_5, hardened.PROBE_GAP, 0.1), lab.status("fw1")
    stays_settled(lab, "fw1")
    print(f"rollback: fw2 silent at 4 for {2 * down:.1f} s without a claim; fw1 told 4, then 5")

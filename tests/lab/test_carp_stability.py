"""Roles stay put after every handover at sub-second timing (advbase 0;
fw1 advertises every 50/256 s, fw2 every 200/256 s).

Before the wait rule was one function of the core, a demoted master yielded
and then claimed again on its own master-down (shorter than the new
master's advert interval) between two of the new master's adverts: with
advskew 10 / 20, 14 vip re-adds in 6.5 s, each with a gratuitous ARP. The
same holds for any pair whose backup master-down is shorter than the
master's interval, as here; these skews leave the master four adverts of
margin on a loaded 2-core machine (10 / 20 leaves it one). Each test
demotes the master one way (maintenance, link loss, sync hold) and watches
the roles and vips for three master-down intervals."""
from __future__ import annotations

from carp_helpers import fast, stays_settled, transitions, wait_settled


def _pair(carp_lab):
    lab = carp_lab(members=2, ipv6=False, **fast())
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1", timeout=10)
    stays_settled(lab, "fw1")
    return lab


def _handed_over_once(lab, before):
    after = {m: transitions(lab, m) for m in lab.members}
    for m in lab.members:
        for vhid, n in after[m].items():
            assert n - before[m][vhid] == 1, f"{m} vhid {vhid}: {before[m][vhid]} -> {n} role changes"


def test_maintenance_at_subsecond_timing_hands_over_once(carp_lab):
    lab = _pair(carp_lab)
    before = {m: transitions(lab, m) for m in lab.members}
    assert lab.fwctl_raw("fw1", "maintenance", "on").returncode == 0
    wait_settled(lab, "fw2", timeout=5)
    stays_settled(lab, "fw2")
    _handed_over_once(lab, before)
    assert lab.fwctl_raw("fw1", "maintenance", "off").returncode == 0
    wait_settled(lab, "fw1", timeout=5)
    stays_settled(lab, "fw1")


def test_link_loss_at_subsecond_timing_hands_over_once(carp_lab):
    lab = _pair(carp_lab)
    lab.link_down("fw1", "wan0")
    assert lab.wait_for(lambda: lab.states(1) == {"fw1": "BACKUP", "fw2": "MASTER"}
                        and lab.vip_state("fw2", 2) == "MASTER", 5), lab.states(1)
    before = {m: transitions(lab, m) for m in lab.members}
    stays_settled(lab, "fw2", members=["fw2"])
    assert lab.states(1) == {"fw1": "BACKUP", "fw2": "MASTER"}
    assert {m: transitions(lab, m) for m in lab.members} == before
    lab.link_up("fw1", "wan0")
    wait_settled(lab, "fw1", timeout=8)
    stays_settled(lab, "fw1")


def test_sync_hold_at_subsecond_timing_hands_over_once(carp_lab):
    # syncd's demotion (ordered takeover) as syncd sets it, through carpd's
    # control socket and the shared contract.
    from fwcluster.core import contract
    lab = _pair(carp_lab)
    before = {m: transitions(lab, m) for m in lab.members}
    hold = contract.set_demotion(contract.SYNC_SOURCE, contract.SYNC_HOLD_DEMOTE)
    assert lab.control("fw1", hold)["ok"]
    wait_settled(lab, "fw2", timeout=5)
    stays_settled(lab, "fw2")
    _handed_over_once(lab, before)
    assert lab.control("fw1", contract.set_demotion(contract.SYNC_SOURCE, 0))["ok"]
    wait_settled(lab, "fw1", timeout=5)
    stays_settled(lab, "fw1")


def test_both_held_slower_master_is_not_claimed_between_its_adverts(carp_lab):
    # Both held by the sync hold, fw1 also in maintenance: fw2 (skew 200)
    # is master and advertises skew 240 while its adverts keep 200/256 s.
    # fw1 (master-down 50/256 s) takes fw2's interval from the gaps between
    # its adverts (machine.master_interval); taken too short, it would
    # claim between two of them and flap.
    from carp_helpers import hold
    lab = _pair(carp_lab)
    hold(lab, ["fw2", "fw1"])
    assert lab.fwctl_raw("fw1", "maintenance", "on").returncode == 0
    wait_settled(lab, "fw2", timeout=5)
    stays_settled(lab, "fw2")

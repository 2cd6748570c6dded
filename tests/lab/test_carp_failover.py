"""CARP failover with the real carpd in the namespace lab: election, node
loss, link loss, preemption, maintenance, IPv6, split brain."""
from __future__ import annotations

import signal
import time

from carp_helpers import (fast, forwards, gateways_at, loss_and_preemption_back, mac, neigh_mac,
                          settled, stays_settled, transitions, vip, wait_settled)
from tests.labkit import LAN_VIP4, LAN_VIP6, SERVER4, SERVER6, WAN_VIP4, WAN_VIP6


def start_all(lab, members=None):
    for m in members or lab.members:
        lab.start_carpd(m)


def test_election_lowest_advskew_is_the_only_master(carp_lab):
    # fw2 has the lowest skew: the winner is chosen by skew, not by order.
    lab = carp_lab(members=3, ipv6=False, advbase=0, advskews={"fw1": 150, "fw2": 50, "fw3": 100})
    start_all(lab)
    wait_settled(lab, "fw2")
    want = {1: lab.addr4("fw2", "lan"), 2: lab.addr4("fw2", "wan")}
    # Every member names fw2 as master (a backup knows once an advert arrived).
    assert lab.wait_for(lambda: all(vip(lab.status(m), h).get("master") == a
                                    for m in lab.members for h, a in want.items()), 3)
    for m in lab.members:
        st = lab.status(m)
        assert st["node"] == m and st["demotion"] == 0
        assert all(v["advbase"] == 0 for v in st["vips"])
    assert vip(lab.status("fw3"), 1)["advskew"] == 100
    assert lab.ping("client", SERVER4)  # forwarded by fw2


def test_election_with_default_timing(carp_lab):
    lab = carp_lab(members=2, ipv6=False)  # advbase 1, advskew 0 / 100
    start_all(lab)
    wait_settled(lab, "fw1", timeout=10)
    st = lab.fwctl("fw2", "status")
    assert [v["state"] for v in st["vips"]] == ["BACKUP", "BACKUP"]
    assert vip(st, 1)["counters"]["adverts_received"] > 0
    assert vip(lab.fwctl("fw1", "status"), 1)["counters"]["adverts_sent"] > 0


def test_takeover_on_node_loss_and_preemption_back(carp_lab):
    lab = carp_lab(members=2, ipv6=False, **fast())
    start_all(lab)
    wait_settled(lab, "fw1")
    assert lab.ping("client", SERVER4)  # the client's ARP entry: gateway at fw1
    assert neigh_mac(lab, "client", LAN_VIP4) == mac(lab, "fw1", "lan0")
    # Gratuitous ARP moves both gateways each way; the group moving together
    # was the cause of this test's old one-in-eight failure.
    loss_and_preemption_back(lab, SERVER4)
    claims = [line for line in lab.log_tail("fw1", "carpd", 4000).splitlines()
              if "BACKUP -> MASTER" in line]
    assert any("with its failover group" in line for line in claims), claims


def test_no_preemption_when_preempt_is_off(carp_lab):
    # Default timing (advbase 1): fw1's master-down is 3 s, fw2 advertises
    # every 1.4 s.
    lab = carp_lab(members=2, ipv6=False, carp={"preempt": False})
    start_all(lab)
    wait_settled(lab, "fw1")
    lab.node_loss("fw1")
    wait_settled(lab, "fw2", members=["fw2"])
    lab.node_return("fw1")
    lab.start_carpd("fw1")
    assert lab.wait_for(lambda: lab.vip_state("fw1", 1) == "BACKUP", 10)
    stays_settled(lab, "fw2")  # past fw1's master-down and fw2's adverts: no preemption
    assert lab.status("fw1")["preempt"] is False


def test_takeover_on_link_down_alone_moves_every_vip(carp_lab):
    lab = carp_lab(members=2, ipv6=False, **fast())
    start_all(lab)
    wait_settled(lab, "fw1")
    lab.link_down("fw1", "wan0")  # carpd keeps running
    # vhid 2 (wan0) and vhid 1 (lan0) fail over together.
    assert lab.wait_for(lambda: lab.states(1) == {"fw1": "BACKUP", "fw2": "MASTER"}
                        and lab.vip_state("fw2", 2) == "MASTER", 5), lab.states(1)
    stays_settled(lab, "fw2", members=["fw2"])
    assert lab.states(1) == {"fw1": "BACKUP", "fw2": "MASTER"}
    st = lab.status("fw1")
    assert st["demotion_sources"].get("link:wan0", 0) > 0 and st["demotion"] > 0
    assert vip(st, 2)["state"] == "INIT"
    assert lab.ping("client", LAN_VIP4)
    lab.link_up("fw1", "wan0")
    wait_settled(lab, "fw1", timeout=8)
    stays_settled(lab, "fw1")
    st = lab.status("fw1")
    assert st["demotion"] == 0 and not st["demotion_sources"].get("link:wan0")


def test_maintenance_on_off_and_it_survives_a_restart(carp_lab):
    lab = carp_lab(members=2, ipv6=False, **fast())
    start_all(lab)
    wait_settled(lab, "fw1")
    cp = lab.fwctl_raw("fw1", "maintenance", "on")
    assert cp.returncode == 0, cp.stderr
    wait_settled(lab, "fw2", timeout=5)
    stays_settled(lab, "fw2")
    st = lab.fwctl("fw1", "status")
    assert st["maintenance"] is True and st["demotion_sources"]["maintenance"] > 0
    # carpd restarts (SIGTERM, as systemd does): still in maintenance.
    assert lab.stop_daemon("fw1", "carpd") == 0
    lab.start_carpd("fw1")
    assert lab.wait_for(lambda: lab.vip_state("fw1", 1) == "BACKUP", 5)
    st = lab.status("fw1")
    assert st["maintenance"] is True and st["demotion"] > 0
    stays_settled(lab, "fw2")  # the restarted fw1 stays backup
    out = lab.fwctl("fw1", "maintenance", "off")
    assert out.get("maintenance") is False
    wait_settled(lab, "fw1", timeout=5)
    stays_settled(lab, "fw1")
    assert lab.status("fw1")["maintenance"] is False


def test_ipv6_vips_fail_over_with_unsolicited_na(carp_lab):
    lab = carp_lab(members=2, ipv6=True, **fast())
    start_all(lab)
    wait_settled(lab, "fw1")
    st = lab.status("fw1")
    assert vip(st, 3)["family"] == 6 and vip(st, 3)["state"] == "MASTER"
    assert lab.ping("client", LAN_VIP6) and lab.ping("client", SERVER6)
    lab.node_loss("fw1")
    wait_settled(lab, "fw2", timeout=5, members=["fw2"])
    stays_settled(lab, "fw2", members=["fw2"])
    # The unsolicited neighbour advertisement moved the client's entry.
    assert lab.wait_for(lambda: neigh_mac(lab, "client", LAN_VIP6) == mac(lab, "fw2", "lan0"), 2)
    assert lab.ping("client", SERVER6)
    assert lab.ping("server", WAN_VIP6)  # WAN VIP6 on fw2


def test_split_brain_heals_to_one_master_within_three_intervals(carp_lab):
    lab = carp_lab(members=2, ipv6=False)  # advbase 1: fw1 advertises every 1 s
    start_all(lab)
    wait_settled(lab, "fw1")
    lab.cut("fw2", "sync")
    lab.cut("fw2", "lan")  # fw2's link stays up: it just hears nothing on the LAN
    assert lab.wait_for(lambda: lab.vip_state("fw2", 1) == "MASTER", 8), lab.states(1)
    assert lab.vip_state("fw1", 1) == "MASTER"  # two masters: the split brain
    lab.heal("fw2", "lan")
    lab.heal("fw2", "sync")
    t_heal = time.monotonic()
    interval = 1 + lab.advskews["fw1"] / 256
    assert lab.wait_for(lambda: lab.masters(1) == ["fw1"], 3 * interval, 0.02), lab.states(1)
    converged = time.monotonic() - t_heal
    wait_settled(lab, "fw1", timeout=3 * interval)
    assert converged <= 3 * interval
    assert lab.ping("client", SERVER4)


def test_a_healed_split_brain_turns_the_neighbours_back_to_the_master(carp_lab):
    """The master's WAN port passes nothing for a moment (a switch fault):
    fw2 hears no advert there, claims the WAN vip and its gratuitous ARP
    turns the server to fw2, while fw1, cut off, never hears fw2 as master.
    The port heals before fw2's second advert; fw1's next advert makes fw2
    yield, and fw2's one advert to the winner makes fw1 announce: the
    server's gateway is fw1's MAC again within fw1's advert interval (+0.2
    s). Before, fw1 never re-announced and the server kept sending new
    sessions' replies to fw2 (the chaos soak: "a new session does not
    pass" after "block master wan")."""
    lab = carp_lab(members=2, ipv6=False)  # advbase 1: fw2 advertises every 1.39 s
    start_all(lab)
    wait_settled(lab, "fw1")
    forwards(lab, SERVER4)
    gateways_at(lab, "fw1")
    wan = next(v["vhid"] for v in lab.vips if v["interface"] == "wan0" and ":" not in v["address"])
    lab.cut("fw1", "wan")
    try:
        assert lab.wait_for(lambda: lab.vip_state("fw2", wan) == "MASTER", 8, 0.01), lab.states(wan)
    finally:
        lab.heal("fw1", "wan")
    t_heal = time.monotonic()
    assert neigh_mac(lab, "server", WAN_VIP4) == mac(lab, "fw2", "wan0")  # the split's GARP
    bound = 1 + lab.advskews["fw1"] / 256 + 0.2
    assert lab.wait_for(lambda: neigh_mac(lab, "server", WAN_VIP4) == mac(lab, "fw1", "wan0"),
                        bound, 0.02), (neigh_mac(lab, "server", WAN_VIP4), lab.states(wan),
                                       lab.log_tail("fw1", "carpd", 1500), lab.log_tail("fw2", "carpd", 1500))
    back = time.monotonic() - t_heal
    wait_settled(lab, "fw1", timeout=bound)
    forwards(lab, SERVER4)
    print(f"server's gateway back on fw1 {back:.2f} s after the heal (bound {bound:.2f} s)")


def test_sigterm_releases_the_vips_and_the_peer_takes_over_at_once(carp_lab):
    lab = carp_lab(members=2, ipv6=False)  # advbase 1: master-down 3.4 s
    start_all(lab)
    wait_settled(lab, "fw1")
    t = time.monotonic()
    assert lab.stop_daemon("fw1", "carpd", signal.SIGTERM) == 0
    assert not lab.has_addr("fw1", "lan0", LAN_VIP4) and not lab.has_addr("fw1", "wan0", WAN_VIP4)
    wait_settled(lab, "fw2", timeout=3, members=["fw2"])
    # Well before fw2's master-down time (3 s + 100/256): the bow-out advert.
    assert time.monotonic() - t < 3.0


def test_three_members_the_next_best_takes_over(carp_lab):
    lab = carp_lab(members=3, ipv6=False, **fast(3))  # skews 50 / 200 / 230
    start_all(lab)
    wait_settled(lab, "fw1")
    lab.node_loss("fw1")
    wait_settled(lab, "fw2", timeout=5, members=["fw2", "fw3"])
    stays_settled(lab, "fw2", members=["fw2", "fw3"])
    forwards(lab, SERVER4)


def test_link_loss_on_the_backup_changes_nothing_on_the_master(carp_lab):
    lab = carp_lab(members=2, ipv6=False, **fast())
    start_all(lab)
    wait_settled(lab, "fw1")
    before = transitions(lab, "fw1")
    lab.link_down("fw2", "lan0")
    assert lab.wait_for(lambda: lab.vip_state("fw2", 1) == "INIT", 3)
    assert lab.status("fw2")["demotion_sources"].get("link:lan0", 0) > 0
    lab.link_up("fw2", "lan0")
    wait_settled(lab, "fw1", timeout=5)
    assert transitions(lab, "fw1") == before


def test_a_restarted_carpd_clears_a_vip_left_by_its_crash(carp_lab):
    # carpd dies by SIGKILL with its links up: the VIPs stay on fw1's
    # interfaces. When it starts again (as backup: no preemption) it must
    # not keep them, or fw1 and fw2 would both answer for the gateway.
    lab = carp_lab(members=2, ipv6=False, carp={"preempt": False})
    start_all(lab)
    wait_settled(lab, "fw1")
    lab.stop_daemon("fw1", "carpd", signal.SIGKILL)
    assert lab.has_addr("fw1", "lan0", LAN_VIP4)  # left behind by the crash
    assert lab.wait_for(lambda: lab.vip_state("fw2", 1) == "MASTER", 8)
    lab.start_carpd("fw1")
    wait_settled(lab, "fw2", timeout=5)
    stays_settled(lab, "fw2")

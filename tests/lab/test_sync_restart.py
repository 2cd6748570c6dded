"""A restart is not a return (issue 19 #3, #4), real carpd and syncd in
namespaces:

  1. syncd restarts on the master: no vip moves (roles watched for 10 s,
     no transition counted) and the client's sessions keep passing.
  2. the sync link of the preferred member is cut, then it reboots (both
     daemons, kernel table flushed) while the CARP link works: it hears fw2
     as master the whole time, so it stays BACKUP, demoted, and `fwctl
     status` says why; no session is lost. When the sync link returns it
     gets its bulk, preempts, and the sessions go on through it.
"""
from __future__ import annotations

import time

import pytest

from tests.labkit import Lab
from tests.lab.sync_helpers import TIMING, Load, in_sync, logs, start_server, syncd_status
from tests.lab.test_sync_failover import SETTLE, all_master, bring_up, replicated, vhids

WATCH = 10.0     # seconds the roles are watched for a move that must not come


@pytest.fixture(scope="module")
def lab():
    with Lab(members=2, prefix="h19r", **TIMING) as lab:
        start_server(lab)
        yield lab


def transitions(lab: Lab, member: str) -> int:
    return sum(v["transitions"] for v in (lab.status(member) or {}).get("vips", []))


def watch_roles(lab: Lab, master: str, seconds: float) -> list[str]:
    """Every sighting, within seconds, of the vips not all on master."""
    backup = [m for m in lab.members if m != master]
    moved = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = {(m, v): lab.vip_state(m, v) for m in lab.members for v in vhids(lab)}
        if any(states[(master, v)] != "MASTER" for v in vhids(lab)) or \
                any(states[(m, v)] == "MASTER" for m in backup for v in vhids(lab)):
            moved.append(f"{time.monotonic() - deadline + seconds:.1f}s {states}")
        time.sleep(0.1)
    return moved


def loaded(lab: Lab, name: str) -> Load:
    """fw1 master and in sync, 200 sessions through it, all on fw2 too."""
    bring_up(lab)
    tcp = Load(lab, name, 200)
    t0 = time.time()
    assert tcp.wait_alive_since(t0 + 1, 30) == 200
    assert lab.wait_for(lambda: replicated(lab, 200), 20), logs(lab)
    return tcp


def test_a_syncd_restart_on_the_master_moves_no_vip(lab):
    tcp = loaded(lab, "restart")
    before = {m: transitions(lab, m) for m in lab.members}
    lab.stop_daemon("fw1", "syncd")
    lab.start_syncd("fw1")
    moved = watch_roles(lab, "fw1", WATCH)
    assert not moved, "\n".join(moved[:5]) + logs(lab)
    assert {m: transitions(lab, m) for m in lab.members} == before
    st = syncd_status(lab, "fw1")
    assert st["in_sync"] and st["demotion"] == 0, st
    t1 = time.time()
    assert tcp.wait_alive_since(t1 + SETTLE, 10) == 200, tcp.diagnose(t1 + SETTLE)
    tcp.stop()


def test_sync_link_down_and_a_reboot_of_the_preferred_member_loses_no_session(lab):
    tcp = loaded(lab, "reboot")
    lab.cut("fw1", "sync")
    lab.node_loss("fw1")                    # fw2 takes over with every session
    try:
        assert lab.wait_for(lambda: all_master(lab, "fw2"), 10), logs(lab, "fw2")
        lab.node_return("fw1")
        lab.cut("fw1", "sync")      # its link coming back up re-enabled the bridge port
        lab.run("fw1", ["conntrack", "-F"], check=False)     # the reboot lost the table
        lab.start_syncd("fw1")
        lab.start_carpd("fw1")
        t_boot = time.time()
        # fw1 hears fw2 through CARP the whole time: it must not count it
        # absent (3 s) and preempt it with an empty table.
        moved = watch_roles(lab, "fw2", WATCH)
        assert not moved, "\n".join(moved[:5]) + logs(lab)
        st = syncd_status(lab, "fw1")
        assert not st["in_sync"] and st["demotion"] == 32 and st["carp_heard"], st
        assert lab.status("fw1")["demotion_sources"].get("syncd") == 32
        human = lab.fwctl_raw("fw1", "status").stdout
        assert "waiting for fw2: heard by CARP, silent on the sync link" in human, human
        alive = tcp.wait_alive_since(t_boot + SETTLE, 10)
        assert alive == 200, tcp.diagnose(t_boot + SETTLE)
    finally:
        lab.heal("fw1", "sync")
    # The sync link is back: fw1 gets its bulk, then preempts.
    assert lab.wait_for(lambda: all_master(lab, "fw1"), 20), logs(lab)
    assert syncd_status(lab, "fw1")["in_sync"]
    tb = time.time()
    back = tcp.wait_alive_since(tb + SETTLE, 20)
    assert back == 200, tcp.diagnose(tb + SETTLE)
    assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)
    tcp.stop()

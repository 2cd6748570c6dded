"""Three members: every member replicates to every other (unicast streams), so
whichever backup takes over holds the sessions."""
from __future__ import annotations

import time


from tests.labkit import Lab
from tests.lab.sync_helpers import TIMING, Load, ct_count, in_sync, logs, start_member, start_server
from tests.lab.test_sync_failover import SETTLE, all_master, syncd_status


def test_three_members_sessions_survive_master_loss():
    with Lab(members=3, prefix="h4s3", ipv6=False, **TIMING) as lab:
        start_server(lab)
        for m in lab.members:
            start_member(lab, m)
        assert lab.wait_for(lambda: all_master(lab, "fw1") and in_sync(lab), 30), logs(lab)
        tcp = Load(lab, "three", 300)
        t0 = time.time()
        assert tcp.wait_alive_since(t0 + 2, 40) == 300
        assert lab.wait_for(lambda: ct_count(lab, "fw2") >= 300 and ct_count(lab, "fw3") >= 300
                            and in_sync(lab), 20), logs(lab)
        peers = syncd_status(lab, "fw1")["peers"]
        assert set(peers) == {"fw2", "fw3"}
        assert all(p["entries_sent"] >= 300 and p["state"] == "up" for p in peers.values())
        tf = time.time()
        lab.node_loss("fw1")
        assert lab.wait_for(lambda: any(all_master(lab, m) for m in ("fw2", "fw3")), 15), logs(lab)
        alive = tcp.wait_alive_since(tf + SETTLE, 30)
        new_master = "fw2" if all_master(lab, "fw2") else "fw3"
        print(f"\nthree members: {alive}/300 alive after losing fw1, {new_master} took over")
        assert alive == 300, tcp.diagnose(tf + SETTLE, ("fw2", "fw3"))
        tcp.stop()

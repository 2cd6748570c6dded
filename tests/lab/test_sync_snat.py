"""State sync with SNAT on the WAN side (Lab(snat=True): members SNAT to the
WAN vip): 1000 IPv4 and 200 IPv6 TCP sessions survive the loss of the master.
The server has no route back to the client: only the NATed entries replicated
to the backup can carry the replies."""
from __future__ import annotations

import json
import time


from tests.labkit import SERVER6, Lab
from tests.lab.sync_helpers import TIMING, Load, logs, start_server
from tests.lab.test_sync_failover import SETTLE, bring_up, lose_and_wait, replicated


def test_snat_sessions_survive_node_loss():
    with Lab(members=2, prefix="h4sn", snat=True, **TIMING) as lab:
        start_server(lab)
        bring_up(lab)
        v4 = Load(lab, "snat4", 1000)
        v6 = Load(lab, "snat6", 200, target=SERVER6)
        t0 = time.time()
        assert v4.wait_alive_since(t0 + 2, 40) == 1000, v4.diagnose(t0 + 2)
        assert v6.wait_alive_since(t0 + 2, 40) == 200, v6.diagnose(t0 + 2)
        assert lab.wait_for(lambda: replicated(lab, 1200), 20), logs(lab)
        fw2 = lab.control("fw2", {"cmd": "conntrack", "filter": {"dport": 5001}, "limit": 5000},
                          daemon="syncd")
        natted = [e for e in fw2["entries"] if e["snat"]]
        tf = lose_and_wait(lab, "fw1", "fw2")
        a4 = v4.wait_alive_since(tf + SETTLE, 30)
        a6 = v6.wait_alive_since(tf + SETTLE, 15)
        print("\nsnat run:", json.dumps({"v4_after_loss": a4, "v6_after_loss": a6,
                                         "snat_entries_on_backup": len(natted),
                                         "recovery_s": round(time.time() - tf, 2)}))
        assert len(natted) >= 1200
        assert {e["reply"]["dst"] for e in natted} <= {"198.51.100.1", "2001:db8:2::1"}
        assert a4 == 1000, v4.diagnose(tf + SETTLE)
        assert a6 == 200, v6.diagnose(tf + SETTLE)

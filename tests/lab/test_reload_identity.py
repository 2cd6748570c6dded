"""One copy of the config in both daemons (issue 19): a reload of carpd
alone reaches syncd's own-address filter, and a cluster rename in hardened
mode rekeys carpd at the reload, so a member restarted later on the new
key still hears the master."""
from __future__ import annotations

import time

from carp_helpers import drops, fast, stays_settled, wait_settled
from tests.lab.sync_helpers import TIMING, logs
from tests.labkit import default_vips
from syncd.daemon import ADDR_REFRESH

NEW_VIP = {"vhid": 5, "interface": "lan0", "address": "192.0.2.5/24", "advbase": 1}
CLIENT, PORT = "198.51.100.77", 40077


def test_a_carpd_reload_that_adds_a_vip_keeps_its_flows_replicated(lab_factory):
    lab = lab_factory(members=2, ipv6=False, **TIMING)
    for m in lab.members:
        lab.start_syncd(m)
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1", timeout=25)
    lab.write_config(vips=default_vips(False, 1) + [NEW_VIP])
    for m in lab.members:   # carpd only: syncd hears of it from carpd
        reply = lab.control(m, {"cmd": "reload"}, timeout=10)
        assert reply["ok"] and reply["added"] == [5], reply
    assert lab.wait_for(lambda: lab.has_addr("fw1", "lan0", "192.0.2.5"), 10), logs(lab)
    # Past syncd's next re-read of its addresses, which now hold the vip.
    time.sleep(ADDR_REFRESH + 0.5)
    # A flow to the new vip (as a DNAT from it would make) on the master.
    lab.run("fw1", ["conntrack", "-I", "-p", "tcp", "-s", CLIENT, "-d", "192.0.2.5",
                    "--sport", str(PORT), "--dport", "80", "--state", "ESTABLISHED",
                    "-t", "120", "-u", "SEEN_REPLY,ASSURED"])

    def on_fw2() -> int:
        r = lab.control("fw2", {"cmd": "conntrack", "filter": {"src": CLIENT, "sport": PORT}},
                        daemon="syncd")
        return r["count"]
    # A live event goes out at once; one resend period (0.5 s) covers a loss.
    assert lab.wait_for(lambda: on_fw2() == 1, 1.0), logs(lab)


def test_a_hardened_cluster_renamed_by_reload_keeps_one_master_after_a_restart(carp_lab):
    lab = carp_lab(members=2, ipv6=False, carp={"mode": "hardened"}, **fast())
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1")
    lab.write_config(name="renamed")
    for m in lab.members:   # in turn, as an operator (or a config push) does
        reply = lab.control(m, {"cmd": "reload"}, timeout=10)
        assert reply["ok"], reply
    assert lab.status("fw1")["cluster"] == "renamed"
    # The next carpd to start takes the key from the file: the same one.
    lab.stop_daemon("fw2", "carpd")
    before = drops(lab, "fw1").get("bad_hmac", 0)
    lab.start_carpd("fw2")
    wait_settled(lab, "fw1")
    stays_settled(lab, "fw1")
    assert drops(lab, "fw2").get("bad_hmac", 0) == 0
    assert drops(lab, "fw1").get("bad_hmac", 0) == before

"""Interop: fwcluster-carpd on one member and ucarp on the other (same
vhid, passphrase and VIP) elect exactly one master and fail over both ways."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from carp_helpers import drops, vip
from tests.labkit import LAN_VIP4, Lab

UCARP = shutil.which("ucarp") or "/usr/sbin/ucarp"
VIPS = [{"vhid": 1, "interface": "lan0", "address": f"{LAN_VIP4}/24", "advbase": 1}]

pytestmark = pytest.mark.skipif(not os.path.exists(UCARP), reason="ucarp is not installed")


def start_ucarp(lab: Lab, member: str, advskew: int, preempt: bool):
    """ucarp with up/down scripts that add/remove the VIP, as an operator would."""
    up = lab.dir / f"{member}-vip-up.sh"
    down = lab.dir / f"{member}-vip-down.sh"
    up.write_text('#!/bin/sh\n# ucarp calls: script <interface> <vip>\nip addr add "$2"/24 dev "$1"\n')
    down.write_text('#!/bin/sh\nip addr del "$2"/24 dev "$1" 2>/dev/null || true\n')
    up.chmod(0o700)
    down.chmod(0o700)
    argv = [UCARP, "--interface=lan0", f"--srcip={lab.addr4(member)}", "--vhid=1",
            f"--pass={lab.secret}", f"--addr={LAN_VIP4}", "--advbase=1", f"--advskew={advskew}",
            f"--upscript={up}", f"--downscript={down}", "--shutdown"]
    if preempt:
        argv.append("--preempt")
    return lab.popen(member, argv)


def holds_vip(lab: Lab, member: str) -> bool:
    return lab.has_addr(member, "lan0", LAN_VIP4)


def only_holder(lab: Lab, member: str) -> bool:
    return all(holds_vip(lab, m) == (m == member) for m in lab.members)


@pytest.fixture
def ulab(carp_lab):
    # ucarp speaks CARP v2 only: a cluster with a ucarp member says so.
    return carp_lab(members=2, ipv6=False, vips=VIPS, carp={"mode": "compatible"})


def test_carpd_master_ucarp_backup_then_ucarp_takes_over_and_gives_back(ulab):
    lab = ulab
    lab.start_carpd("fw1")          # advskew 0
    start_ucarp(lab, "fw2", 100, preempt=False)
    assert lab.wait_for(lambda: lab.vip_state("fw1", 1) == "MASTER" and only_holder(lab, "fw1"), 10)
    # ucarp stays backup past its master-down time (3 s + 100/256): it
    # accepts carpd's adverts, so their HMAC matches.
    time.sleep(4)
    assert only_holder(lab, "fw1") and lab.vip_state("fw1", 1) == "MASTER"
    # carpd -> ucarp: node loss of fw1.
    lab.node_loss("fw1")
    assert lab.wait_for(lambda: holds_vip(lab, "fw2"), 8)
    assert lab.wait_for(lambda: lab.ping("client", LAN_VIP4, 0.3), 3)
    # ucarp -> carpd: fw1 returns; carpd accepts ucarp's adverts, then preempts.
    lab.node_return("fw1")
    lab.start_carpd("fw1")
    assert lab.wait_for(lambda: vip(lab.status("fw1"), 1).get("counters", {})
                        .get("adverts_received", 0) > 0, 5)
    assert lab.wait_for(lambda: lab.vip_state("fw1", 1) == "MASTER" and only_holder(lab, "fw1"), 10)
    assert drops(lab, "fw1").get("bad_hmac", 0) == 0
    assert lab.wait_for(lambda: lab.ping("client", LAN_VIP4, 0.3), 3)


def test_ucarp_master_carpd_backup_then_carpd_takes_over(ulab):
    lab = ulab
    start_ucarp(lab, "fw1", 0, preempt=True)
    lab.start_carpd("fw2")          # advskew 100
    assert lab.wait_for(lambda: only_holder(lab, "fw1") and lab.vip_state("fw2", 1) == "BACKUP"
                        and vip(lab.status("fw2"), 1).get("master") == lab.addr4("fw1"), 10), \
        (lab.status("fw2"), lab.log_tail("fw2", "carpd"))
    st = vip(lab.status("fw2"), 1)
    assert st["counters"]["adverts_received"] > 0
    assert st["counters"]["drops"]["bad_hmac"] == 0
    # ucarp -> carpd: node loss of fw1.
    lab.node_loss("fw1")
    assert lab.wait_for(lambda: lab.vip_state("fw2", 1) == "MASTER" and holds_vip(lab, "fw2"), 8)
    assert lab.wait_for(lambda: lab.ping("client", LAN_VIP4, 0.3), 3)
    # carpd -> ucarp: fw1 returns and ucarp (--preempt, lower skew) takes the VIP back.
    lab.node_return("fw1")
    start_ucarp(lab, "fw1", 0, preempt=True)
    assert lab.wait_for(lambda: only_holder(lab, "fw1") and lab.vip_state("fw2", 1) == "BACKUP", 10), \
        (lab.status("fw2"), lab.log_tail("fw2", "carpd"))
    assert lab.wait_for(lambda: lab.ping("client", LAN_VIP4, 0.3), 3)

"""Sync between releases (issue 23), real carpd and syncd in namespaces:

  1. fw1 runs this release, fw2 the previous one (this tree capped with
     FWCLUSTER_PROTOCOLS=previous, and the previous release's own code,
     tests/lab/previous_release.py): sessions
     through fw1 and entries made on fw2 replicate both ways at sync
     version 2, shown on both. fw2 is then upgraded (restarted on this
     release): version 3 on both, fw1 learns fw2's release, and no session
     is lost, also when fw1 then fails and fw2 carries them.
  2. A member whose peer sends only a sync version it does not speak (4,
     a release two ahead) stays demoted while it does and says why; once
     the datagrams stop, the peer is silent like any other and counts as
     absent after 3 s. syncd runs alone there: with carpd the lone member
     would carry the vips (a member that carries is never held) or, as
     BACKUP, hear the peer's adverts (held for that reason already), so
     only syncd shows the rule by itself.
"""
from __future__ import annotations

import time

import previous_release
import pytest

from syncd.core.protocol import Timing
from tests.labkit import CLIENT4, PY, SERVER4, Lab, member_addr4
from tests.lab.sync_helpers import TIMING, Load, ct_count, in_sync, logs, start_server, syncd_status
from tests.lab.test_sync_failover import SETTLE, all_master, settled

PREVIOUS = {"FWCLUSTER_PROTOCOLS": "previous"}
ABSENT = Timing().absent_after
FW2_ENTRIES = 20
# How long two members that both speak 3 take to use it: the ALIVE that
# tells the newest goes when the link is idle (every 0.5 s), one each way.
NEGOTIATE = 4 * Timing().alive + 0.5


def start(lab: Lab, member: str, env=None, tree=None) -> None:
    lab.start_syncd(member, env=env, tree=tree)
    lab.start_carpd(member, env=env, tree=tree)


def sync_versions(lab: Lab) -> dict:
    """{member: the sync version it uses with its peer}."""
    out = {}
    for m in lab.members:
        peers = syncd_status(lab, m).get("peers", {})
        out[m] = next(iter(peers.values()), {}).get("sync_version")
    return out


def insert_on_fw2(lab: Lab) -> None:
    """Forwarded-looking TCP entries made on fw2 (the backup): they must reach fw1."""
    for i in range(FW2_ENTRIES):
        lab.run("fw2", ["conntrack", "-I", "-p", "tcp", "-s", CLIENT4, "-d", SERVER4,
                        "--sport", str(30000 + i), "--dport", "81", "--state", "ESTABLISHED",
                        "-t", "600", "-u", "SEEN_REPLY,ASSURED"])


def fw2_entries_on_fw1(lab: Lab) -> int:
    out = lab.run("fw1", ["conntrack", "-L", "-p", "tcp", "--dport", "81"], check=False).stdout
    return sum(1 for line in out.splitlines() if "dport=81 " in line)


@pytest.mark.parametrize("previous", ["capped", "release"])
def test_previous_and_current_release_sync_at_2_and_at_3_after_the_upgrade(previous):
    if previous == "release" and previous_release.tree() is None:
        pytest.skip(f"the previous release ({previous_release.PREVIOUS}) is not in this checkout")
    old = {"env": PREVIOUS if previous == "capped" else previous_release.env()}
    # The CARP mode is written out, as docs/upgrade.md asks before an upgrade
    # from 0.1.0: its default was compatible, this release's is hardened, and
    # members of two modes do not hear each other (both become master).
    timing = dict(TIMING, carp=dict(TIMING["carp"], mode="compatible"))
    with Lab(members=2, prefix="h23v", **timing) as lab:
        start_server(lab)
        start(lab, "fw1")
        start(lab, "fw2", **old)
        assert lab.wait_for(lambda: settled(lab, "fw1"), 20), logs(lab)
        assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)
        tcp = Load(lab, "mixed", 200)
        t0 = time.time()
        assert tcp.wait_alive_since(t0 + 1, 30) == 200, tcp.diagnose(t0 + 1)
        insert_on_fw2(lab)
        # both ways: fw1's sessions on fw2, fw2's entries on fw1
        assert lab.wait_for(lambda: ct_count(lab, "fw2") >= 200 + FW2_ENTRIES
                            and fw2_entries_on_fw1(lab) == FW2_ENTRIES, 15), logs(lab)
        assert sync_versions(lab)["fw1"] == 2
        fw1 = lab.fwctl("fw1", "sync")["peers"]["fw2"]
        assert fw1["sync_version"] == 2 and fw1["version"] is None, fw1   # 2 tells no release
        if previous == "capped":
            assert sync_versions(lab)["fw2"] == 2
            assert syncd_status(lab, "fw2")["release"]["speaks"]["sync"] == [2, 2]
        else:       # the previous release's own code: it knows no versions to show
            assert "sync_version" not in syncd_status(lab, "fw2")["peers"]["fw1"]
        status = lab.fwctl("fw1", "status")["versions"]["peers"]["fw2"]
        assert status["sync_version"] == 2 and status["compatible"] == "unknown", status

        # The upgrade of fw2 (the backup): this release, restarted.
        t1 = time.time()
        lab.stop_daemon("fw2", "carpd")
        lab.stop_daemon("fw2", "syncd")
        start(lab, "fw2")
        assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)
        assert lab.wait_for(lambda: sync_versions(lab) == {"fw1": 3, "fw2": 3}, NEGOTIATE), \
            f"{sync_versions(lab)}\n{logs(lab)}"
        release = syncd_status(lab, "fw2")["release"]
        assert lab.wait_for(lambda: lab.fwctl("fw1", "sync")["peers"]["fw2"]["version"]
                            == release["version"], NEGOTIATE), logs(lab)
        status = lab.fwctl("fw1", "status")["versions"]["peers"]["fw2"]
        assert status["compatible"] == "compatible" and status["speaks"] == release["speaks"], status
        assert tcp.wait_alive_since(t1 + SETTLE, 10) == 200, tcp.diagnose(t1 + SETTLE)
        assert ct_count(lab, "fw2") >= 200 + FW2_ENTRIES

        # fw2 holds every session: fw1 fails, fw2 carries them.
        t2 = time.time()
        lab.node_loss("fw1")
        assert lab.wait_for(lambda: all_master(lab, "fw2"), 10), logs(lab, "fw2")
        assert tcp.wait_alive_since(t2 + SETTLE + 3, 15) == 200, tcp.diagnose(t2 + SETTLE + 3)
        tcp.stop()


# A release two ahead: sync datagrams of version 4, which this one cannot read.
FUTURE = r"""
import socket, sys, time
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(b"FS\x04\x04" + bytes(52 + 32), (dst, port))
    time.sleep(0.25)
"""


def test_a_member_that_cannot_understand_its_peer_stays_demoted_and_says_why():
    with Lab(members=2, prefix="h23u", **TIMING) as lab:
        lab.start_syncd("fw1")
        sender = lab.popen("fw2", [PY, "-c", FUTURE, member_addr4(lab.index("fw1"), "sync"),
                                   "3780", "80"])       # 20 s at most
        try:
            time.sleep(ABSENT + 1.5)      # well past the 3 s that make a silent peer absent
            st = syncd_status(lab, "fw1")
            why = ("fw2 speaks sync version 4, this member speaks 2-3: "
                   "upgrade this member or roll the peer back")
            assert not st["in_sync"] and st["demotion"] == 32, st
            assert st["peers"]["fw2"]["unintelligible"] == 4 and st["waiting"] == {"fw2": why}, st
            assert st["drops"]["bad_version"] > 0
            human = lab.fwctl_raw("fw1", "sync").stdout
            assert f"waiting for fw2: {why}" in human, human
            assert lab.fwctl("fw1", "sync")["peers"]["fw2"]["unintelligible"] == 4
        finally:
            sender.terminate()
            sender.wait(5)
        stopped = time.monotonic()
        # Silent now: absent after 3 s (checked on the 0.05 s tick), like any silent peer.
        assert lab.wait_for(lambda: syncd_status(lab, "fw1").get("in_sync"), ABSENT + 1.0), logs(lab)
        took = time.monotonic() - stopped
        assert took >= ABSENT - 0.3, took
        assert syncd_status(lab, "fw1")["demotion"] == 0

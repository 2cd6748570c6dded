"""A full-table refresh (`resync`, an event overrun) and the protocol's bulk
transfer (fw2's RESYNC_REQ, as after losing the master role) go out in
chunks behind live events (syncd/core/refreshfeed.py, syncd/bulk.py): every
entry arrives, and an entry deleted while the transfer runs is not brought
back on the peer by the older copy in the dump."""
from __future__ import annotations

import sys

import pytest

from tests.labkit import Lab

pytestmark = pytest.mark.lab
PY = sys.executable
DPORT, N, DELETED = 30001, 40000, 10000

SNIPPET = """
import sys, time
from syncd.conntrack import Conntrack
from syncd.core.entry import Entry, OP_DELETE, OP_UPSERT
op, lo, hi, DPORT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0   # between batches: spread over the transfer
ct = Conntrack(events=False)
es = [Entry(4, 17, 0, "192.0.2.%d" % (100 + i // 50000), "198.51.100.100", 1024 + i % 50000, DPORT,
            "198.51.100.100", "192.0.2.%d" % (100 + i // 50000), DPORT, 1024 + i % 50000,
            status=0xe, timeout=600) for i in range(lo, hi)]   # assured: [sync] filter replicates it
for k in range(0, len(es), 256):
    ct.apply([(OP_DELETE if op == "delete" else OP_UPSERT, e) for e in es[k:k + 256]])
    time.sleep(pause)
assert ct.stats["failed"] == 0, ct.last_error
"""


def count(lab, member: str) -> int:
    out = lab.run(member, ["conntrack", "-L", "-p", "udp", "--orig-port-dst", str(DPORT)], check=False)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("udp"))


def status(lab, member: str) -> dict:
    return lab.control(member, {"cmd": "status"}, daemon="syncd", timeout=30)


@pytest.mark.parametrize("via", ["refresh", "request"])
def test_refresh_sends_every_entry_and_resurrects_no_deleted_one(via):
    with Lab(members=2, prefix="h4rf", ipv6=False) as lab:
        for m in lab.members:
            lab.run(m, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_max=262144"], check=False)
            lab.start_syncd(m)
        assert lab.wait_for(lambda: all(status(lab, m)["in_sync"] for m in lab.members), 15)
        lab.run("fw1", [PY, "-c", SNIPPET, "create", "0", str(N), str(DPORT)], timeout=120)
        assert lab.wait_for(lambda: count(lab, "fw2") == N, 60), count(lab, "fw2")
        sent = status(lab, "fw1")["peers"]["fw2"]["entries_sent"]
        bulks = status(lab, "fw2")["peers"]["fw1"]["bulk_received"]
        # Deletes spread over ~1 s, the transfer started while they run.
        deleting = lab.popen("fw1", [PY, "-c", SNIPPET, "delete", "0", str(DELETED), str(DPORT), "0.025"])
        assert lab.wait_for(lambda: count(lab, "fw1") < N, 20)
        if via == "refresh":
            assert lab.control("fw1", {"cmd": "resync"}, daemon="syncd", timeout=60)["ok"]
        else:
            assert lab.control("fw2", {"cmd": "resync-request"}, daemon="syncd", timeout=60)["ok"]
        assert deleting.wait(60) == 0 and count(lab, "fw1") == N - DELETED
        # The refresh is done when fw1 sent the table again and fw2 acknowledged everything.
        assert lab.wait_for(lambda: status(lab, "fw1")["peers"]["fw2"]["entries_sent"] >= sent + N - DELETED
                            and status(lab, "fw1")["peers"]["fw2"]["unacked"] == 0, 60)
        assert lab.wait_for(lambda: count(lab, "fw2") == N - DELETED, 20), count(lab, "fw2")
        if via == "refresh":
            assert status(lab, "fw1")["counters"]["refreshes"] == 1
        else:
            assert lab.wait_for(lambda: status(lab, "fw2")["peers"]["fw1"]["bulk_received"] == bulks + 1, 10)
            assert status(lab, "fw2")["peers"]["fw1"]["resync"] == "done"
        assert count(lab, "fw2") == N - DELETED       # still: nothing came back late


def test_a_refresh_does_not_send_a_peer_its_own_entries_back():
    """No carpd here, so both members count as carrying traffic, as both do
    in active-active: fw2's refresh must leave out the replicas of fw1's
    entries. Sent back as fw2's, old copies would overwrite fw1's entries and
    bring back on fw1 what it deleted since fw2's dump."""
    n = 2000
    with Lab(members=2, prefix="h4rb", ipv6=False) as lab:
        for m in lab.members:
            lab.start_syncd(m)
        assert lab.wait_for(lambda: all(status(lab, m)["in_sync"] for m in lab.members), 15)
        lab.run("fw1", [PY, "-c", SNIPPET, "create", "0", str(n), str(DPORT)], timeout=60)
        assert lab.wait_for(lambda: count(lab, "fw2") == n, 30), count(lab, "fw2")
        before = status(lab, "fw1")["kernel"]
        sent = status(lab, "fw2")["peers"]["fw1"]["entries_sent"]
        assert lab.control("fw2", {"cmd": "resync"}, daemon="syncd", timeout=60)["ok"]
        assert lab.wait_for(lambda: status(lab, "fw2")["counters"]["refreshes"] == 1, 10)
        lab.wait_for(lambda: False, 2)                 # let a wrong refresh arrive
        assert status(lab, "fw2")["peers"]["fw1"]["entries_sent"] == sent
        assert status(lab, "fw1")["kernel"] == before  # fw1 applied nothing
        assert count(lab, "fw1") == count(lab, "fw2") == n


def test_the_routine_refresh_resends_only_entries_about_to_run_out_on_the_peer():
    """fw1's refresh of non-TCP entries re-sends the flow whose copy on fw2
    runs out within a minute (20 s left), not the one a live event sent with
    10 minutes left; fw2 refreshes none of fw1's entries."""
    snippet = SNIPPET.replace("timeout=600", "timeout=int(sys.argv[6])")
    with Lab(members=2, prefix="h4rr", ipv6=False) as lab:
        for m in lab.members:
            lab.start_syncd(m)
        assert lab.wait_for(lambda: all(status(lab, m)["in_sync"] for m in lab.members), 15)
        lab.run("fw1", [PY, "-c", snippet, "create", "0", "50", str(DPORT), "0", "600"], timeout=60)
        lab.run("fw1", [PY, "-c", snippet, "create", "50", "53", str(DPORT), "0", "20"], timeout=60)
        assert lab.wait_for(lambda: count(lab, "fw2") == 53, 30), count(lab, "fw2")
        for m in lab.members:
            assert lab.control(m, {"cmd": "refresh"}, daemon="syncd", timeout=30)["ok"]
        assert lab.wait_for(lambda: status(lab, "fw1")["counters"]["stateless_refreshed"] == 3, 10)
        lab.wait_for(lambda: False, 1)
        assert status(lab, "fw1")["counters"]["stateless_refreshed"] == 3
        assert status(lab, "fw2")["counters"]["stateless_refreshed"] == 0
        assert count(lab, "fw1") == count(lab, "fw2") == 53

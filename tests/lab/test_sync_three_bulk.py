"""Three members: what a third member's origin deletes while a bulk transfer
runs does not come back on the member that receives the bulk (issue 19,
case 9).

fw2 (B, the preferred master: the member that forwards flows is their
origin, syncd/core/ownership.py) originates N entries; fw1 (A) and fw3 (C)
hold copies. C reboots (syncd stops, its table is flushed, syncd starts
again: it asks A and B for bulk transfers, and as a backup it is offered in
A's bulk the entries A holds for B). While those bulks run, B deletes entries, in
batches with pauses so that the deletes span the transfers. A's bulk reads
its dump a piece at a time: a copy it read before B's delete reached it can
still go to C after C applied that delete, and C re-creates the entry.

After the bulks and two anti-entropy rounds (the next one may have begun
before the bulk ended), none of the entries B deleted may exist on C or A,
and every entry B still has must be on both (the transfer did happen).
"""
from __future__ import annotations

import signal
import time

import pytest

from tests.labkit import Lab
from tests.lab.sync_helpers import PY, TIMING, in_sync, logs, start_member, syncd_status
from tests.lab.test_sync_failover import settled
from tests.lab.test_sync_refresh import DPORT, SNIPPET

pytestmark = pytest.mark.lab

N = 30000               # B's entries: A's bulk of them to C takes seconds, not a moment
DIGEST_INTERVAL = 5     # anti-entropy rounds this often, to keep the test short
PAUSE = 0.1             # between two batches of 256 deletes on B: ~2.5k deletes/s
BULK_LIMIT = 120        # a bulk of N entries in the lab takes seconds; bounded here


def origin_ports(lab: Lab, member: str) -> set[int]:
    """Source ports of B's injected entries (all to DPORT) in member's table."""
    out = lab.run(member, ["conntrack", "-L", "-p", "udp", "--orig-port-dst", str(DPORT)],
                  check=False, timeout=60).stdout
    ports = set()
    for line in out.splitlines():
        for field in line.split():
            if field.startswith("sport="):
                ports.add(int(field[6:]))
                break
    return ports


def bulk_done(lab: Lab, member: str) -> bool:
    """member's syncd has a finished resync from every peer."""
    peers = syncd_status(lab, member).get("peers", {})
    return bool(peers) and all(p["resync"] == "done" for p in peers.values())


def test_deletes_during_a_bulk_stay_deleted_on_every_member():
    with Lab(members=3, prefix="tb3", ipv6=False, sync={"digest_interval": DIGEST_INTERVAL},
             advskews={"fw1": 100, "fw2": 0, "fw3": 150}, **TIMING) as lab:
        for m in lab.members:
            lab.run(m, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_max=262144"])
            start_member(lab, m)
        assert lab.wait_for(lambda: settled(lab, "fw2") and in_sync(lab), 30), logs(lab)
        lab.run("fw2", [PY, "-c", SNIPPET, "create", "0", str(N), str(DPORT)], timeout=120)
        assert lab.wait_for(lambda: all(len(origin_ports(lab, m)) == N for m in lab.members), 60), \
            {m: len(origin_ports(lab, m)) for m in lab.members}

        # C reboots: syncd gone, table gone, syncd back (carpd stays: a backup).
        lab.stop_daemon("fw3", "syncd")
        lab.run("fw3", ["conntrack", "-F"], check=False)
        deleting = lab.popen("fw2", [PY, "-c", SNIPPET, "delete", "0", str(N // 2), str(DPORT),
                                     str(PAUSE)])
        t_deletes = time.monotonic()
        lab.start_syncd("fw3")
        assert deleting.poll() is None, "B's deletes ended before C's syncd asked for its bulks"
        assert lab.wait_for(lambda: bulk_done(lab, "fw3"), BULK_LIMIT, 0.1), logs(lab, "fw3")
        t_bulk = time.monotonic()
        assert deleting.poll() is None or deleting.returncode == 0
        deleting.send_signal(signal.SIGTERM)   # B deletes nothing after the bulks
        deleting.wait(10)
        assert lab.wait_for(lambda: in_sync(lab), 30), logs(lab)

        # Every round sends each peer a digest; the one after the bulk ended
        # starts at most an interval later; 3 s for the repair to travel.
        lab.wait_for(lambda: False, 2 * DIGEST_INTERVAL + 3)
        kept = origin_ports(lab, "fw2")
        deleted = set(range(1024, 1024 + N)) - kept
        assert 0 < len(deleted) < N, len(deleted)
        held = {m: origin_ports(lab, m) for m in ("fw1", "fw3")}
        back = {m: sorted(held[m] & deleted) for m in held}
        missing = {m: len(kept - held[m]) for m in held}
        print(f"\nthree members: B deleted {len(deleted)} of {N}; C's bulks were done "
              f"{t_bulk - t_deletes:.1f} s after the deletes began; back on A: {len(back['fw1'])}, "
              f"on C: {len(back['fw3'])}; "
              f"missing on A: {missing['fw1']}, on C: {missing['fw3']}")
        assert back == {"fw1": [], "fw3": []}, \
            {m: (len(p), p[:10]) for m, p in back.items()}
        assert missing == {"fw1": 0, "fw3": 0}

"""Anti-entropy in the lab: DESTROY events lost on purpose are repaired
within one digest interval (docs/sync.md, "Anti-entropy").

fw1 (master) holds 20 entries its peer has replicated. Its sync datagrams
(both ways) are dropped by an nft rule long enough for fw2 to count as down (fw1 then
keeps nothing queued for it), 10 entries are deleted on fw1 meanwhile, and
the link comes back: the bulk transfer that follows carries the table, not
the deletes. The next digest round must delete the 10 on fw2.
"""
from __future__ import annotations

import time

from tests.labkit import Lab, SYNC_PORT
from tests.lab.sync_helpers import in_sync, logs, start_member, syncd_status
from tests.lab.test_sync_failover import all_master

INTERVAL = 2
SRC, DST = "198.51.100.201", "203.0.113.201"


def entry_args(port: int) -> list[str]:
    return ["-p", "tcp", "-s", SRC, "-d", DST, "--sport", str(port), "--dport", "443"]


def count(lab: Lab, member: str) -> int:
    out = lab.run(member, ["conntrack", "-L", "-s", SRC], check=False).stdout
    return sum(1 for ln in out.splitlines() if DST in ln)


def test_deletes_lost_while_the_link_was_down_are_repaired_within_one_interval():
    with Lab(members=2, prefix="ae", ipv6=False, advbase=1, carp={"sync_hold": 20},
             sync={"digest_interval": INTERVAL}) as lab:
        for m in lab.members:
            start_member(lab, m)
        assert lab.wait_for(lambda: all_master(lab, "fw1") and in_sync(lab), 30), logs(lab)
        for port in range(40000, 40020):
            lab.run("fw1", ["conntrack", "-I", *entry_args(port), "--state", "ESTABLISHED",
                            "-t", "600", "-u", "SEEN_REPLY,ASSURED"])
        assert lab.wait_for(lambda: count(lab, "fw2") == 20, 10), logs(lab)
        block = "table inet aetest {\n" + "".join(
            f" chain {hook} {{\n  type filter hook {hook} priority -10;\n"
            f"  udp dport {SYNC_PORT} drop\n }}\n" for hook in ("input", "output")) + "}\n"
        lab.run("fw1", ["nft", "-f", "-"], input=block)
        try:
            assert lab.wait_for(lambda: syncd_status(lab, "fw1").get("peers", {})
                                .get("fw2", {}).get("state") == "down", 10), logs(lab)
            for port in range(40000, 40010):
                lab.run("fw1", ["conntrack", "-D", *entry_args(port)])
        finally:
            lab.run("fw1", ["nft", "delete table inet aetest"], check=False)
        t0 = time.monotonic()
        assert lab.wait_for(lambda: count(lab, "fw2") == 10, 4 * INTERVAL + 6), \
            f"fw2 still holds {count(lab, 'fw2')}\n" + logs(lab)
        took = time.monotonic() - t0
        peer = syncd_status(lab, "fw2")["peers"]["fw1"]
        print(f"\nanti-entropy: 10 lost deletes repaired {took:.1f} s after the link came back "
              f"(digest_interval {INTERVAL} s; stale_deleted {peer['stale_deleted']}, "
              f"ranges_differing {peer['ranges_differing']})")
        assert peer["stale_deleted"] >= 10 and count(lab, "fw1") == 10

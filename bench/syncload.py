"""State sync carrying load while the failover benchmark runs (issue 20):
syncd on every member of the lab and, on the master, a steady stream of
new conntrack entries that its syncd sends to the peer.

The load worker (in the member's namespace, started by SyncLoad) puts
`rate` new entries per second into the kernel table, paced in batches over
each second, and deletes each second's entries `window` s later, so the
table stays near rate x window entries and both creates and deletes cross
the sync link. It runs until it is killed (a node loss kills it with the
member) or `duration` s have passed.

    python -m bench.syncload --rate 5000 --window 10 --duration 3600
"""
from __future__ import annotations

import argparse
import sys
import time

from bench.common import REPO

LOAD_DPORT = 40000       # the load's entries use their own ports (bench.sync uses 20000+)
CONNTRACK_MAX = 262144


def run(rate: int, window: int, duration: float) -> None:
    from bench.ctprobe import BATCH, Injector
    from bench.sync import entry
    start = time.monotonic()
    live: dict[int, list] = {}      # second -> the entries made in it
    second = 0
    while time.monotonic() - start < duration:
        # ports cycle over 2 windows: a second's entries are gone before its port returns
        entries = [entry(i, LOAD_DPORT + second % (2 * window)) for i in range(rate)]
        new = Injector("new", entries)
        old = live.pop(second - window, None)
        gone = Injector("destroy", old) if old else None
        live[second] = entries
        for lo in range(0, rate, BATCH):
            delay = start + second + lo / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            hi = min(rate, lo + BATCH)
            new.send(lo, hi)
            if gone:
                gone.send(lo, hi)
        for inj in (new, gone):
            if inj:
                inj.sock.close()
        second += 1


class SyncLoad:
    """syncd on every member; the load worker on `source` (the master)."""

    def __init__(self, lab, rate: int, window: int = 10, source: str = "fw1",
                 duration: float = 3600):
        self.lab, self.rate, self.window, self.source = lab, rate, window, source
        self.duration = duration
        for m in lab.members:
            lab.run(m, ["sysctl", "-q", "-w", f"net.netfilter.nf_conntrack_max={CONNTRACK_MAX}"],
                    check=False)

    def start(self, member: str) -> None:
        """A member (re)starts: its syncd, and the worker if it is the source.
        Call before the CARP daemon (the image starts both at boot)."""
        self.lab.start_syncd(member)
        if member == self.source:
            self.lab.popen(member, [sys.executable, "-m", "bench.syncload", "--rate", self.rate,
                                    "--window", self.window, "--duration", self.duration],
                           env={"PYTHONPATH": str(REPO)})

    def applied(self, member: str) -> int:
        """Peer records syncd on member has written to its kernel table."""
        st = self.lab.control(member, {"cmd": "status"}, daemon="syncd", timeout=10)
        return int(st["counters"]["applied_records"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.syncload", description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, required=True, help="new entries per second")
    ap.add_argument("--window", type=int, default=10, help="seconds an entry lives")
    ap.add_argument("--duration", type=float, default=3600, help="stop after this many seconds")
    a = ap.parse_args(argv)
    if not 1 <= a.rate <= 50000 or not 1 <= a.window <= 60:
        print("error: --rate 1..50000, --window 1..60", file=sys.stderr)
        return 2
    run(a.rate, a.window, a.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())

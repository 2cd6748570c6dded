"""The state-sync daemons' idle cost: CPU seconds per second of each member's
daemon in a 2-member lab that carries no traffic, fwcluster-syncd beside
conntrackd (each configured as bench/flood.py runs it).

After carpd has settled (fw1 master) and a few seconds more, the daemons'
CPU time (bench.common.cpu_seconds: ns on a CPU, every thread) is read at
the start and the end of --seconds; the load average is printed beside. With --profile DIR syncd runs with SYNCD_PROFILE (cProfile,
syncd/trace.py): the profile shows where the idle time goes.

The table goes to docs/perf/idle.md (--doc; not for a profiled run).

  .venv/bin/python -m bench.idle [--seconds 60] [--impls fwcluster-syncd,conntrackd] [--profile DIR]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.common import arg_parser, have_root, markdown_table
from bench.flood import lab_sync, start_cluster

IMPLS = ("fwcluster-syncd", "conntrackd")
SETTLE = 5.0          # after fw1 is master: start-up bulks and first rounds done


def one_impl(impl: str, seconds: float) -> dict:
    from tests.labkit import Lab
    with Lab(members=2, prefix="bidl", advbase=1, sync=lab_sync(impl)) as lab:
        daemons = start_cluster(lab, impl)
        time.sleep(SETTLE)
        cpu0, t0 = {m: daemons.cpu(m) for m in lab.members}, time.monotonic()
        time.sleep(seconds)
        cpu1, took = {m: daemons.cpu(m) for m in lab.members}, time.monotonic() - t0
        for m in lab.members:
            if impl != "conntrackd":
                lab.stop_daemon(m, "syncd")      # a clean stop writes the profile
        return {m: round((cpu1[m] - cpu0[m]) / took, 4) for m in lab.members}


def main(argv=None) -> int:
    ap = arg_parser("idle", __doc__)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--profile", help="directory: syncd writes a cProfile per member there")
    args = ap.parse_args(argv)
    if not have_root():
        return 2
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        os.environ["SYNCD_PROFILE"] = str(Path(args.profile).resolve() / "idle")
    load = os.getloadavg()
    results = {impl: one_impl(impl, args.seconds) for impl in args.impls.split(",")}
    print(json.dumps({"load": load, "seconds": args.seconds, "cpu_s_per_s": results}, indent=1))
    table = markdown_table(["implementation", "fw1 (master) CPU s/s", "fw2 (peer) CPU s/s"],
                           [[impl, f"{r['fw1']:.4f}", f"{r['fw2']:.4f}"] for impl, r in results.items()])
    print(table)
    print(f"load average at the start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    if args.doc and not args.profile:      # a profiled run's figures include cProfile's cost
        Path(args.doc).write_text(DOC_HEAD.format(seconds=f"{args.seconds:g}", load=f"{load[0]:.2f}")
                                  + table + "\n" + DOC_TAIL)
    return 0


DOC_HEAD = """# Idle cost of the state-sync daemons: `make bench-idle`

CPU seconds per second of each member's state-sync daemon in a 2-member
lab that carries no traffic (carpd settled, fw1 master), measured over
{seconds} s as the time each daemon's threads spent on a CPU
(/proc/PID/task/*/schedstat). fwcluster-syncd as shipped, conntrackd
(FTFW) as `make bench-flood` runs it. One run, load average {load} at its
start.

"""

DOC_TAIL = """
Reading it: an idle syncd wakes for its timers only when one is due (the
next ALIVE, twice a second per link, or a peer's timeout; the 50 ms tick
runs only while something is in flight) and for its housekeeping (table
size every 2 s, own addresses every 10 s, the config channel's poll every
5 s). What remains is mostly the ALIVEs each way and that housekeeping,
each wake a pass through Python; conntrackd, a C daemon, sleeps between
its own keep-alives.
"""


if __name__ == "__main__":
    sys.exit(main())

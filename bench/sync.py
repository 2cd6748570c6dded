"""make bench-sync: fwcluster-syncd side by side with conntrackd (FTFW).

In one 2-member lab, for each implementation in turn (same kernel, same
sync link, same load):

* new entries are put into fw1's conntrack table at a fixed rate (1k, 5k,
  10k per second, 3 s each) by an injector process that uses ctnetlink, so
  the sync path is measured, not a traffic generator;
* a watcher on fw2 timestamps each entry's NEW event as the daemon puts it
  into fw2's kernel table (conntrackd runs with DisableExternalCache on, so
  both inject straight into the kernel, pfsync style);
* lag = presence on fw2 - creation on fw1 (one monotonic clock), p50/p99;
* peak: 20000 entries injected as fast as possible; the rate at which they
  all arrive on fw2;
* CPU seconds (user+system, /proc) of the daemons on fw1 and fw2 per 10k
  replicated entries.

Prints JSON and a markdown table; writes docs/perf/sync.md.
  .venv/bin/python -m bench.sync [--levels 1000,5000,10000] [--seconds 3] [--peak 20000]
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, arg_parser, have_root, markdown_table, percentile

PY = sys.executable
DPORT_BASE = 20000
SRC_PER_ADDR = 50000


def key_of(i: int, dport: int) -> tuple:
    return (f"192.0.2.{100 + i // SRC_PER_ADDR}", 1024 + i % SRC_PER_ADDR, dport)


def entry(i: int, dport: int):
    from syncd.core.entry import Entry
    src, sport, _ = key_of(i, dport)
    return Entry(4, 17, 0, src, "198.51.100.100", sport, dport,
                 "198.51.100.100", src, dport, sport, status=0x8, timeout=600)


# --- workers (run inside the lab namespaces) ---------------------------------------
def worker_inject(args) -> None:
    from syncd.conntrack import Conntrack
    from syncd.core.entry import OP_UPSERT
    ct = Conntrack(events=False)
    times = [0.0] * args.count
    start = time.monotonic()
    done = 0
    while done < args.count:
        now = time.monotonic()
        due = args.count if args.rate <= 0 else min(args.count, int((now - start) * args.rate) + 1)
        if due > done:
            n = min(due - done, 256)
            t = time.monotonic()
            ct.apply([(OP_UPSERT, entry(i, args.dport)) for i in range(done, done + n)])
            for i in range(done, done + n):
                times[i] = t
            done += n
        else:
            time.sleep(0.0005)
    Path(args.out).write_text(json.dumps({"times": times, "failed": ct.stats["failed"],
                                          "seconds": time.monotonic() - start}))


def worker_watch(args) -> None:
    from syncd.conntrack import Conntrack, Overrun
    ct = Conntrack(events=True)
    index = {key_of(i, args.dport): i for i in range(args.count)}
    seen = [None] * args.count
    left = args.count
    Path(args.out + ".ready").write_text("ready")
    deadline = time.monotonic() + args.timeout
    overruns = 0
    while left and time.monotonic() < deadline:
        r, _, _ = select.select([ct.events], [], [], 0.2)
        if not r:
            continue
        # Small reads, each timestamped when it returns: a big batch would
        # stamp late arrivals with an early time.
        try:
            events = ct.read_events(limit=8)
        except Overrun:
            overruns += 1
            continue
        now = time.monotonic()
        for kind, e in events:
            if kind == "new" and e.odport == args.dport:
                i = index.get((e.osrc, e.osport, e.odport))
                if i is not None and seen[i] is None:
                    seen[i] = now
                    left -= 1
    Path(args.out).write_text(json.dumps({"seen": seen, "overruns": overruns}))


# --- the run ---------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CONNTRACKD_CONF = """General {{
    Systemd off
    HashSize 65536
    HashLimit 262144
    LogFile {dir}/conntrackd.log
    Syslog off
    LockFile {dir}/conntrackd.lock
    UNIX {{ Path {dir}/conntrackd.sock }}
    NetlinkBufferSize 8388608
    NetlinkBufferSizeMaxGrowth 67108864
    NetlinkEventsReliable off
}}
Sync {{
    Mode FTFW {{
        DisableExternalCache on
        ResendQueueSize 262144
    }}
    UDP {{
        IPv4_address {me}
        IPv4_Destination_Address {peer}
        Port {port}
        Interface sync0
        SndSocketBuffer 24985600
        RcvSocketBuffer 24985600
        Checksum on
    }}
}}
"""


class Impl:
    def __init__(self, lab, name: str):
        self.lab, self.name = lab, name
        self.procs = {}

    def start(self) -> None:
        lab = self.lab
        if self.name == "fwcluster-syncd":
            for m in lab.members:
                self.procs[m] = lab.start_syncd(m)
            ok = lab.wait_for(lambda: all(lab.control(m, {"cmd": "status"}, daemon="syncd").get("in_sync")
                                          for m in lab.members), 15)
            if not ok:
                raise RuntimeError("syncd did not get in sync")
        else:
            for k, m in enumerate(lab.members, start=1):
                d = lab.dir / f"conntrackd-{m}"
                d.mkdir(exist_ok=True)
                peer = 2 if k == 1 else 1
                conf = d / "conntrackd.conf"
                conf.write_text(CONNTRACKD_CONF.format(dir=d, me=f"203.0.113.{k}",
                                                       peer=f"203.0.113.{peer}", port=3780))
                self.procs[m] = lab.popen(m, ["conntrackd", "-C", str(conf)],
                                          stdout=open(d / "stdout.log", "wb"), stderr=subprocess.STDOUT)
            time.sleep(1.5)
            for m, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"conntrackd on {m} exited: "
                                       f"{(lab.dir / f'conntrackd-{m}' / 'conntrackd.log').read_text()[-800:]}")

    def cpu(self) -> dict:
        return {m: cpu_seconds(p.pid) for m, p in self.procs.items()}

    def stop(self) -> None:
        for m, p in self.procs.items():
            if self.name == "fwcluster-syncd":
                self.lab.stop_daemon(m, "syncd")
            else:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


def count(lab, member: str) -> int:
    out = lab.run(member, ["conntrack", "-C"], check=False).stdout.strip()
    return int(out or 0)


def flush(lab) -> None:
    """Empty both tables and let the daemons finish replicating the deletes,
    so no run pays for the previous one's cleanup."""
    lab.run("fw1", ["conntrack", "-F"], check=False)
    lab.wait_for(lambda: count(lab, "fw2") < 50, 30, 0.2)
    lab.run("fw2", ["conntrack", "-F"], check=False)
    last = (-1, -1)
    for _ in range(60):          # until both tables stop changing
        time.sleep(0.5)
        now = (count(lab, "fw1"), count(lab, "fw2"))
        if now == last:
            break
        last = now


def one_run(lab, impl: Impl, rate: float, count: int, dport: int, timeout: float) -> dict:
    out_i, out_w = lab.dir / f"inject-{dport}.json", lab.dir / f"watch-{dport}.json"
    env = {"PYTHONPATH": str(REPO)}
    watch = lab.popen("fw2", [PY, "-m", "bench.sync", "worker-watch", "--count", count, "--dport", dport,
                              "--timeout", timeout, "--out", out_w], env=env)
    if not lab.wait_for(lambda: Path(str(out_w) + ".ready").exists(), 15):
        raise RuntimeError("watcher did not start")
    cpu0 = impl.cpu()
    lab.run("fw1", [PY, "-m", "bench.sync", "worker-inject", "--count", count, "--dport", dport,
                    "--rate", rate, "--out", out_i], timeout=timeout + 60, env=env)
    watch.wait(timeout + 30)
    cpu1 = impl.cpu()
    inj, w = json.loads(out_i.read_text()), json.loads(out_w.read_text())
    lags = [s - t for s, t in zip(w["seen"], inj["times"]) if s is not None]
    seen_times = [s for s in w["seen"] if s is not None]
    res = {"rate": rate, "count": count, "replicated": len(lags), "inject_failed": inj["failed"],
           "inject_seconds": round(inj["seconds"], 3), "watch_overruns": w["overruns"],
           "lag_p50_ms": round(percentile(lags, 50) * 1000, 2) if lags else None,
           "lag_p99_ms": round(percentile(lags, 99) * 1000, 2) if lags else None,
           "lag_max_ms": round(max(lags) * 1000, 2) if lags else None,
           "cpu_s": {m: round(cpu1[m] - cpu0[m], 3) for m in cpu0}}
    if lags:
        span = max(seen_times) - min(inj["times"])
        res["replicated_per_s"] = round(len(lags) / span) if span > 0 else None
    res["cpu_s_per_10k"] = {m: round(v * 10000 / max(1, len(lags)), 3) for m, v in res["cpu_s"].items()}
    if impl.name == "fwcluster-syncd":
        st = lab.control("fw2", {"cmd": "status"}, daemon="syncd", timeout=60)
        src = lab.control("fw1", {"cmd": "status"}, daemon="syncd", timeout=60)
        res["syncd"] = {"fw2_kernel": st.get("kernel"), "fw2_last_error": st.get("last_error"),
                        "fw1_overruns": src["counters"]["overruns"],
                        "fw1_resent": src["peers"]["fw2"]["msgs_resent"], "drops": st.get("drops")}
    flush(lab)
    return res


def bench(args) -> dict:
    """{impl: [{"levels": [...], "peak": {...}}, ...one per repetition]}.
    Repetitions alternate the implementations, so a busy moment of the
    machine does not land on one of them only."""
    from tests.labkit import Lab
    results = {name: [] for name in args.impls}
    with Lab(members=2, prefix="h4bs", ipv6=False) as lab:
        for m in lab.members:
            lab.run(m, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_max=262144"], check=False)
        dport = DPORT_BASE
        for rep in range(args.runs):
            for name in args.impls:
                impl = Impl(lab, name)
                impl.start()
                runs = []
                try:
                    for rate in args.levels:
                        dport += 1
                        count = int(rate * args.seconds)
                        print(f"[{rep + 1}/{args.runs}] {name}: {rate}/s x {args.seconds}s ...",
                              file=sys.stderr, flush=True)
                        runs.append(one_run(lab, impl, rate, count, dport, args.seconds + 30))
                        print("  ", json.dumps(runs[-1]), file=sys.stderr, flush=True)
                    dport += 1
                    print(f"[{rep + 1}/{args.runs}] {name}: peak, {args.peak} entries at once ...",
                          file=sys.stderr, flush=True)
                    peak = one_run(lab, impl, 0, args.peak, dport, 60)
                    print("  ", json.dumps(peak), file=sys.stderr, flush=True)
                finally:
                    impl.stop()
                    flush(lab)
                results[name].append({"levels": runs, "peak": peak})
    return results


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def summarize(results: dict) -> dict:
    """Per implementation and level: the median over repetitions (and the
    p99 range), since one shared 2-core machine makes single runs noisy."""
    out = {}
    for name, reps in results.items():
        rows = []
        n_levels = len(reps[0]["levels"])
        for i in list(range(n_levels)) + ["peak"]:
            xs = [r["peak"] if i == "peak" else r["levels"][i] for r in reps]
            rows.append({
                "rate": xs[0]["rate"], "count": xs[0]["count"],
                "replicated_all": all(x["replicated"] == x["count"] for x in xs),
                "replicated_min": min(x["replicated"] for x in xs),
                "replicated_per_s": _median([x.get("replicated_per_s") for x in xs]),
                "lag_p50_ms": _median([x["lag_p50_ms"] for x in xs]),
                "lag_p99_ms": _median([x["lag_p99_ms"] for x in xs]),
                "lag_p99_range_ms": [min(x["lag_p99_ms"] for x in xs), max(x["lag_p99_ms"] for x in xs)],
                "cpu_s_per_10k": {m: _median([x["cpu_s_per_10k"][m] for x in xs]) for m in ("fw1", "fw2")},
            })
        out[name] = rows
    return out


def render(summary: dict, args) -> str:
    headers = ["implementation", "offered new/s", "replicated", "lag p50", "lag p99 (range)",
               "CPU s/10k fw1", "CPU s/10k fw2"]
    rows = []
    for name, levels in summary.items():
        for x in levels:
            offered = "max (peak)" if x["rate"] == 0 else f"{x['rate']:,}"
            repl = "all" if x["replicated_all"] else f"min {x['replicated_min']}/{x['count']}"
            if x["rate"] == 0 and x.get("replicated_per_s"):
                repl += f", {x['replicated_per_s']:,}/s"
            lo, hi = x["lag_p99_range_ms"]
            rows.append([name, offered, repl, f"{x['lag_p50_ms']} ms",
                         f"{x['lag_p99_ms']} ms ({lo}–{hi})",
                         f"{x['cpu_s_per_10k']['fw1']:.2f}", f"{x['cpu_s_per_10k']['fw2']:.2f}"])
    return markdown_table(headers, rows)


DOC_HEAD = """# State sync performance: fwcluster-syncd vs conntrackd (FTFW)

Measured by `make bench-sync` (`bench/sync.py`) in the namespace lab: two
members on one kernel, sync over the lab's sync bridge, both
implementations injecting peers' entries straight into the kernel table
(conntrackd: FTFW, `DisableExternalCache on`). New UDP entries are inserted
into fw1's table by a ctnetlink injector at a fixed rate for {seconds} s;
a watcher on fw2 timestamps each one's NEW event there. Lag = presence on
fw2 - creation on fw1. Peak: {peak} entries inserted as fast as the
injector can; "replicated at N/s" is the rate at which they all arrived.
CPU: user+system seconds of the daemon on each member per 10k replicated
entries. Every cell is the median of {runs} repetitions (implementations
alternate); "lag p99 (range)" also gives the lowest and highest p99 seen. The machine has 2 cores shared by the injector, the watcher and
both daemons of a run (and anything else running), so absolute numbers
are pessimistic; the side-by-side comparison is the point. Load average
(1/5/15 min) when the run started: {load_start}; when it ended: {load_end}.

"""


def main(argv=None) -> int:
    ap = arg_parser("sync", __doc__)
    sub = ap.add_subparsers(dest="mode")
    for name in ("worker-inject", "worker-watch"):
        w = sub.add_parser(name)
        w.add_argument("--count", type=int, required=True)
        w.add_argument("--dport", type=int, required=True)
        w.add_argument("--rate", type=float, default=0)
        w.add_argument("--timeout", type=float, default=60)
        w.add_argument("--out", required=True)
    ap.add_argument("--levels", default="1000,5000,10000")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--peak", type=int, default=20000)
    ap.add_argument("--impls", default="fwcluster-syncd,conntrackd")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (medians are reported)")
    args = ap.parse_args(argv)
    if args.mode == "worker-inject":
        worker_inject(args)
        return 0
    if args.mode == "worker-watch":
        worker_watch(args)
        return 0
    if not have_root():
        return 2
    args.levels = [int(x) for x in args.levels.split(",")]
    args.impls = args.impls.split(",")
    load_start = os.getloadavg()
    results = bench(args)
    load_end = os.getloadavg()
    summary = summarize(results)
    print(json.dumps({"summary": summary, "runs": results}, indent=1))
    table = render(summary, args)
    print(table)
    if args.doc:
        doc = Path(args.doc)
        doc.parent.mkdir(parents=True, exist_ok=True)
        loads = {k: " / ".join(f"{x:.2f}" for x in v) for k, v in
                 (("load_start", load_start), ("load_end", load_end))}
        doc.write_text(DOC_HEAD.format(seconds=args.seconds, peak=args.peak, runs=args.runs, **loads) + table
                       + "\n\nMedians per cell:\n\n```json\n" + json.dumps(summary, indent=1) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

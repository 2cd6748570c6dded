"""make bench-sync: fwcluster-syncd side by side with conntrackd (FTFW).

In one 2-member lab, for each implementation in turn (same kernel, same
sync link, same load):

* new entries are put into fw1's conntrack table at a fixed rate (1k, 5k,
  10k per second, 3 s each) by an injector process that uses ctnetlink, so
  the sync path is measured, not a traffic generator; then the same entries
  are updated (their mark set) and then deleted, at the same rate;
* a watcher on fw2 timestamps each entry's NEW (UPDATE with the mark,
  DESTROY) event as the daemon changes fw2's kernel table (conntrackd runs
  with DisableExternalCache on, so both inject straight into the kernel,
  pfsync style);
* lag = presence on fw2 - creation on fw1 (one monotonic clock), p50/p99;
  the same for updates and deletes;
* peak: 20000 entries injected as fast as possible; the rate at which they
  all arrive on fw2;
* CPU seconds of the daemons on fw1 and fw2 (ns on a CPU, every thread:
  bench.common.cpu_seconds) per 10k replicated entries (NEW phase);
* bulk: with 100k entries in the table, fw1 is made to send all of them to
  fw2 (syncd: the `resync` control command; conntrackd -B) while new
  entries arrive at 1k/s: their lag.

--trace DIR runs syncd alone with SYNCD_TRACE (syncd/trace.py) and prints
the per-step breakdown of the lag (docs/perf/sync.md); --profile DIR adds
SYNCD_PROFILE (cProfile of each daemon).

Prints JSON and a markdown table; writes docs/perf/sync.md.
  .venv/bin/python -m bench.sync [--levels 1000,5000,10000] [--seconds 3] [--peak 20000]
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import REPO, arg_parser, cpu_seconds, have_root, markdown_table, percentile, write_section

PY = sys.executable
# The injector and the watcher run SCHED_RR 99 (as conntrackd does by
# default): on a machine shared with other work their own waits for a CPU
# would otherwise be measured as lag, for every implementation.
MEASURE = ["chrt", "-r", "99", PY]
DPORT_BASE = 20000
SRC_PER_ADDR = 50000


def key_of(i: int, dport: int) -> tuple:
    return (f"192.0.2.{100 + i // SRC_PER_ADDR}", 1024 + i % SRC_PER_ADDR, dport)


def entry(i: int, dport: int, mark: int = 0):
    """An assured UDP flow (seen reply, assured, confirmed): the default
    [sync] filter replicates it."""
    from syncd.core.entry import Entry
    src, sport, _ = key_of(i, dport)
    return Entry(4, 17, 0, src, "198.51.100.100", sport, dport,
                 "198.51.100.100", src, dport, sport, status=0xe, timeout=600, mark=mark)


PHASES = ("new", "update", "destroy")
HARNESS = "harness"      # no daemon: the probes alone (see Impl.source)
UPDATE_MARK = 1          # an update sets this mark: the watcher tells it from others


def phase_record(phase: str, i: int, dport: int):
    from syncd.core.entry import OP_DELETE, OP_UPSERT
    if phase == "destroy":
        return OP_DELETE, entry(i, dport, UPDATE_MARK)
    return OP_UPSERT, entry(i, dport, UPDATE_MARK if phase == "update" else 0)


# --- workers (run inside the lab namespaces) ---------------------------------------
def worker_inject(args) -> None:
    from bench.ctprobe import run_injector
    entries = [phase_record(args.phase, i, args.dport)[1] for i in range(args.count)]
    Path(args.out).write_text(json.dumps(run_injector(args.phase, entries, args.rate)))


def worker_watch(args) -> None:
    from bench.ctprobe import Watcher
    w = Watcher()
    index = {key_of(i, args.dport): i for i in range(args.count)}
    seen = [None] * args.count
    left = args.count
    Path(args.out + ".ready").write_text("ready")
    deadline = time.monotonic() + args.timeout
    overruns = 0
    cpu = None
    while left and time.monotonic() < deadline:
        r, _, _ = select.select([w], [], [], 0.2)
        if not r:
            continue
        for _ in range(8):
            try:
                got = w.read()
            except OSError:       # ENOBUFS: events lost, those entries stay unseen
                overruns += 1
                continue
            if got is None:
                break
            now, keys = got
            if cpu is None:        # from the first event on: the probe's own cost
                cpu = time.process_time()
            for kind, src, sport, dport, mark in keys:
                if kind == args.phase and dport == args.dport and (
                        kind != "update" or mark == UPDATE_MARK):
                    i = index.get((src, sport, dport))
                    if i is not None and seen[i] is None:
                        seen[i] = now
                        left -= 1
    cpu = time.process_time() - cpu if cpu is not None else 0.0
    Path(args.out).write_text(json.dumps({"seen": seen, "overruns": overruns, "cpu_s": cpu}))


# --- the floor: Python's least work per event ---------------------------------------------
# What any Python implementation has to do, and nothing else: read kernel
# events, encode records, HMAC, sendto; recvfrom, verify, decode, one
# netlink batch. No reliability (acks, resends, sessions), no asyncio, no
# policy. Its lag is how close a Python syncd can get at best.
FLOOR_PORT = 3780          # the lab ruleset opens the sync port only; syncd is stopped meanwhile
FLOOR_KEY = b"\x01" * 32


def _floor_gc() -> None:
    import gc      # as syncd/daemon.py does: the floor gets every trick syncd has
    from syncd.daemon import GC_GEN0
    gc.freeze()
    gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])


def worker_floor_send(args) -> None:
    from syncd.conntrack import Conntrack
    from syncd.core import wire
    import socket
    _floor_gc()
    ct = Conntrack()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("203.0.113.1", FLOOR_PORT))
    seq = 0
    per = wire.MAX_BODY // wire.REC_LEN[4]
    while True:
        select.select([ct.events], [], [])
        recs = ct.read_records(limit=128)      # as syncd reads them: straight into records
        for i in range(0, len(recs), per):
            seq += 1
            body = recs[i:i + per]
            m = wire.Message(wire.DATA, 0, 1, 1, 1, seq, 1, seq, len(body))
            sock.sendto(wire.encode(FLOOR_KEY, m, b"".join(body)), ("203.0.113.2", FLOOR_PORT))


def worker_floor_recv(args) -> None:
    from syncd.conntrack import Conntrack
    from syncd.core import wire
    import socket
    _floor_gc()
    ct = Conntrack(events=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("203.0.113.2", FLOOR_PORT))
    sock.setblocking(False)
    while True:
        select.select([sock], [], [])
        records = []
        for _ in range(16):
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            records.extend(wire.decode(FLOOR_KEY, data).records)
        ct.apply(records)


# --- the run ---------------------------------------------------------------------------
CONNTRACKD_CONF = """General {{
    Systemd off
    HashSize 65536
    HashLimit 262144
    LogFile {dir}/conntrackd.log
    Syslog off
    LockFile {dir}/conntrackd.lock
    UNIX {{ Path {dir}/conntrackd.sock }}
    NetlinkBufferSize 67108864
    NetlinkBufferSizeMaxGrowth 134217728
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


def start_conntrackd(lab, general: str = "") -> dict:
    """conntrackd (CONNTRACKD_CONF, `general` added to its General
    section) on both members of a 2-member lab: member -> process."""
    procs = {}
    for k, m in enumerate(lab.members, start=1):
        d = lab.dir / f"conntrackd-{m}"
        d.mkdir(exist_ok=True)
        conf = CONNTRACKD_CONF.format(dir=d, me=f"203.0.113.{k}", peer=f"203.0.113.{3 - k}", port=3780)
        conf = conf.replace("    NetlinkEventsReliable off\n", "    NetlinkEventsReliable off\n" + general)
        (d / "conntrackd.conf").write_text(conf)
        procs[m] = lab.popen(m, ["conntrackd", "-C", str(d / "conntrackd.conf")],
                             stdout=open(d / "stdout.log", "wb"), stderr=subprocess.STDOUT)
    time.sleep(1.5)
    for m, p in procs.items():
        if p.poll() is not None:
            raise RuntimeError(f"conntrackd on {m} exited: "
                               f"{(lab.dir / f'conntrackd-{m}' / 'conntrackd.log').read_text()[-800:]}")
    return procs


SYNCD_UNIT = REPO / "overlays/cluster/usr/lib/systemd/system/fwcluster-syncd.service"


def shipped_sched() -> tuple[str, str]:
    """(chrt policy, priority) of the shipped syncd unit."""
    conf = dict(line.split("=", 1) for line in SYNCD_UNIT.read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    policy = {"rr": "rr", "fifo": "fifo", "batch": "batch", "idle": "idle"}.get(
        conf.get("CPUSchedulingPolicy", "other"), "other")
    return policy, conf.get("CPUSchedulingPriority", "0") if policy in ("rr", "fifo") else "0"


class Impl:
    def __init__(self, lab, name: str):
        self.lab, self.name = lab, name
        self.procs = {}

    # Where the injector writes: the harness row injects into the watched
    # table itself (no replication), which gives the probes' own lag and
    # the highest rate they can measure.
    @property
    def source(self) -> str:
        return "fw2" if self.name == HARNESS else "fw1"

    def start(self) -> None:
        lab = self.lab
        if self.name == HARNESS:
            return
        if self.name == "fwcluster-syncd":
            for m in lab.members:
                self.procs[m] = lab.start_syncd(m)
            ok = lab.wait_for(lambda: all(lab.control(m, {"cmd": "status"}, daemon="syncd").get("in_sync")
                                          for m in lab.members), 15)
            if not ok:
                raise RuntimeError("syncd did not get in sync")
        elif self.name == "python-floor":
            env = {"PYTHONPATH": str(REPO)}
            self.procs["fw1"] = lab.popen("fw1", [PY, "-m", "bench.sync", "worker-floor-send"], env=env)
            self.procs["fw2"] = lab.popen("fw2", [PY, "-m", "bench.sync", "worker-floor-recv"], env=env)
            time.sleep(1.5)
            for m, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"floor worker on {m} exited {p.returncode}")
        else:
            self.procs = start_conntrackd(lab)

    def schedule(self, rr: bool) -> str:
        """conntrackd gives itself SCHED_RR 99 (its Scheduler section's
        default); with rr the Python implementations get the same, else
        they run as shipped: what fwcluster-syncd.service sets
        (CPUSchedulingPolicy/Priority). Returns the policies in force."""
        if self.name == HARNESS:
            return "(no daemon)"
        if self.name != "conntrackd":
            policy, prio = ("rr", "99") if rr else shipped_sched()
            for p in self.procs.values():
                subprocess.run(["chrt", "-a", f"--{policy}", "-p", prio, str(p.pid)], check=True)
        out = set()
        for p in self.procs.values():
            cp = subprocess.run(["chrt", "-p", str(p.pid)], capture_output=True, text=True)
            pol = [l.split(":")[-1].strip() for l in cp.stdout.splitlines()]
            out.add(" ".join(pol))
        return "; ".join(sorted(out))

    def cpu(self) -> dict:
        if self.name == HARNESS:
            return {"fw1": 0.0, "fw2": 0.0}
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


def lag_stats(lags: list) -> dict:
    return {"lag_p50_ms": round(percentile(lags, 50) * 1000, 2) if lags else None,
            "lag_p99_ms": round(percentile(lags, 99) * 1000, 2) if lags else None,
            "lag_max_ms": round(max(lags) * 1000, 2) if lags else None}


def one_phase(lab, impl: Impl, phase: str, rate: float, count: int, dport: int, timeout: float,
              trigger=None) -> dict:
    """One phase (new, update or destroy) of `count` entries at `rate`; with
    trigger, it is called (in a thread) just before the injector starts."""
    out_i, out_w = lab.dir / f"inject-{dport}-{phase}.json", lab.dir / f"watch-{dport}-{phase}.json"
    env = {"PYTHONPATH": str(REPO)}
    watch = lab.popen("fw2", [*MEASURE, "-m", "bench.sync", "worker-watch", "--count", count, "--dport", dport,
                              "--phase", phase, "--timeout", timeout, "--out", out_w], env=env)
    if not lab.wait_for(lambda: Path(str(out_w) + ".ready").exists(), 15):
        raise RuntimeError("watcher did not start")
    cpu0 = impl.cpu()
    thread = None
    if trigger is not None:
        thread = threading.Thread(target=trigger, daemon=True)
        thread.start()
    lab.run(impl.source, [*MEASURE, "-m", "bench.sync", "worker-inject", "--count", count, "--dport", dport,
                    "--phase", phase, "--rate", rate, "--out", out_i], timeout=timeout + 60, env=env)
    watch.wait(timeout + 30)
    cpu1 = impl.cpu()
    if thread is not None:
        thread.join(120)
    inj, w = json.loads(out_i.read_text()), json.loads(out_w.read_text())
    lags = [s - t for s, t in zip(w["seen"], inj["times"]) if s is not None]
    seen_times = [s for s in w["seen"] if s is not None]
    res = {"replicated": len(lags), "inject_failed": inj["failed"],
           "inject_seconds": round(inj["seconds"], 3), "watch_overruns": w["overruns"],
           **lag_stats(lags), "cpu_s": {m: round(cpu1[m] - cpu0[m], 3) for m in cpu0},
           # the probes' own CPU per 10k (injector's send loop, watcher from its first event)
           "probe_cpu_s_per_10k": {"inject": round(inj.get("cpu_s", 0) * 10000 / max(1, count), 3),
                                   "watch": round(w.get("cpu_s", 0) * 10000 / max(1, count), 3)}}
    if lags:
        span = max(seen_times) - min(inj["times"])
        res["replicated_per_s"] = round(len(lags) / span) if span > 0 else None
    res["cpu_s_per_10k"] = {m: round(v * 10000 / max(1, len(lags)), 3) for m, v in res["cpu_s"].items()}
    return res


def one_run(lab, impl: Impl, rate: float, count: int, dport: int, timeout: float) -> dict:
    """NEW, then UPDATE, then DESTROY of the same entries; the NEW phase's
    figures stay at the top level (the table's columns)."""
    res = {"rate": rate, "count": count}
    for phase in PHASES:
        res[phase] = one_phase(lab, impl, phase, rate, count, dport, timeout)
    res.update({k: v for k, v in res["new"].items()})
    if impl.name == "fwcluster-syncd":
        st = lab.control("fw2", {"cmd": "status"}, daemon="syncd", timeout=60)
        src = lab.control("fw1", {"cmd": "status"}, daemon="syncd", timeout=60)
        res["syncd"] = {"fw2_kernel": st.get("kernel"), "fw2_last_error": st.get("last_error"),
                        "fw1_overruns": src["counters"]["overruns"],
                        "fw1_resent": src["peers"]["fw2"]["msgs_resent"], "drops": st.get("drops")}
    flush(lab)
    return res


def one_bulk(lab, impl: Impl, size: int, rate: float, seconds: float, dport: int,
             via: str = "refresh") -> dict:
    """Lag of new entries (rate/s for `seconds`) while fw1 sends its whole
    table of `size` entries to fw2. syncd: via "refresh" fw1 pushes a full
    refresh (resync); via "request" fw2 asks fw1 for the protocol's bulk
    (RESYNC_REQ, as after losing the master role)."""
    one_phase(lab, impl, "new", 0, size, dport, 120)       # the table to send
    if impl.name == "fwcluster-syncd":
        member, cmd = ("fw2", "resync-request") if via == "request" else ("fw1", "resync")

        def trigger():
            lab.control(member, {"cmd": cmd}, daemon="syncd", timeout=120)
    else:
        conf = lab.dir / "conntrackd-fw1" / "conntrackd.conf"

        def trigger():
            lab.run("fw1", ["conntrackd", "-C", str(conf), "-B"], check=False, timeout=120)
    started = time.monotonic()
    res = one_phase(lab, impl, "new", rate, int(rate * seconds), dport + 1, seconds + 60, trigger)
    res.update({"size": size, "rate": rate, "seconds": round(time.monotonic() - started, 2)})
    flush(lab)
    return res


def bench(args) -> dict:
    """{impl: [{"levels": [...], "peak": {...}, "bulk": {...}}, ...one per
    repetition]}. Repetitions alternate the implementations, so a busy
    moment of the machine does not land on one of them only."""
    from tests.labkit import Lab
    results = {name: [] for name in args.impls}
    sched = results["_sched"] = {}
    with Lab(members=2, prefix="h4bs", ipv6=False) as lab:
        for m in lab.members:
            lab.run(m, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_max=262144"], check=False)
        dport = DPORT_BASE
        for rep in range(args.runs):
            for name in args.impls:
                impl = Impl(lab, name)
                impl.start()
                sched[name] = impl.schedule(args.sched == "rr")
                runs, bulk = [], None
                try:
                    for rate in args.levels:
                        dport += 1
                        count = int(rate * args.seconds)
                        print(f"[{rep + 1}/{args.runs}] {name}: {rate}/s x {args.seconds}s ...",
                              file=sys.stderr, flush=True)
                        runs.append(one_run(lab, impl, rate, count, dport, args.seconds + 30))
                        print("  ", json.dumps(runs[-1]), file=sys.stderr, flush=True)
                    dport += 1
                    peak = None
                    if args.peak > 0:  # --peak 0 leaves the peak out
                        print(f"[{rep + 1}/{args.runs}] {name}: peak, {args.peak} entries at once ...",
                              file=sys.stderr, flush=True)
                        peak = one_run(lab, impl, 0, args.peak, dport, 60)
                        print("  ", json.dumps(peak), file=sys.stderr, flush=True)
                    if args.bulk and name not in ("python-floor", HARNESS):
                        dport += 2
                        print(f"[{rep + 1}/{args.runs}] {name}: 1k/s during a bulk of {args.bulk} ...",
                              file=sys.stderr, flush=True)
                        bulk = one_bulk(lab, impl, args.bulk, 1000, args.seconds, dport, args.bulk_via)
                        print("  ", json.dumps(bulk), file=sys.stderr, flush=True)
                finally:
                    impl.stop()
                    flush(lab)
                results[name].append({"levels": runs, "peak": peak, "bulk": bulk})
    return results


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def summarize(results: dict) -> dict:
    """Per implementation and level: the median over repetitions (and the
    p99 range), since one shared 2-core machine makes single runs noisy."""
    out = {}
    for name, reps in results.items():
        if name.startswith("_"):
            continue
        rows = []
        n_levels = len(reps[0]["levels"])
        for i in list(range(n_levels)) + (["peak"] if all(r["peak"] for r in reps) else []):
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
                "probe_cpu_s_per_10k": {k: _median([x.get("probe_cpu_s_per_10k", {}).get(k) for x in xs])
                                        for k in ("inject", "watch")},
                **{phase: _phase_median([x.get(phase) for x in xs]) for phase in PHASES[1:]},
            })
        bulks = [r["bulk"] for r in reps if r.get("bulk")]
        out[name] = {"levels": rows, "bulk": _phase_median(bulks) if bulks else None}
    return out


def _phase_median(xs: list) -> dict | None:
    xs = [x for x in xs if x]
    if not xs:
        return None
    return {"replicated_min": min(x["replicated"] for x in xs),
            "replicated_per_s": _median([x.get("replicated_per_s") for x in xs]),
            "lag_p50_ms": _median([x["lag_p50_ms"] for x in xs]),
            "lag_p99_ms": _median([x["lag_p99_ms"] for x in xs]),
            "lag_p99_range_ms": [min(x["lag_p99_ms"] or 0 for x in xs), max(x["lag_p99_ms"] or 0 for x in xs)],
            **({"size": xs[0]["size"], "seconds": _median([x["seconds"] for x in xs])} if "size" in xs[0] else {})}


def render(summary: dict, args) -> str:
    headers = ["implementation", "offered new/s", "replicated", "lag p50", "lag p99 (range)",
               "CPU s/10k fw1", "CPU s/10k fw2"]
    rows = []
    for name, sm in summary.items():
        for x in sm["levels"]:
            offered = "max (peak)" if x["rate"] == 0 else f"{x['rate']:,}"
            repl = "all" if x["replicated_all"] else f"min {x['replicated_min']}/{x['count']}"
            if x["rate"] == 0 and x.get("replicated_per_s"):
                repl += f", {x['replicated_per_s']:,}/s"
            lo, hi = x["lag_p99_range_ms"]
            rows.append([name, offered, repl, f"{x['lag_p50_ms']} ms",
                         f"{x['lag_p99_ms']} ms ({lo}–{hi})",
                         f"{x['cpu_s_per_10k']['fw1']:.2f}", f"{x['cpu_s_per_10k']['fw2']:.2f}"])
    return markdown_table(headers, rows)


def render_phases(summary: dict) -> str:
    """UPDATE and DESTROY lag per level, and the lag during a bulk."""
    headers = ["implementation", "offered/s", "UPDATE p50", "UPDATE p99 (range)", "DESTROY p50",
               "DESTROY p99 (range)"]
    rows = []

    def cell(x, what):
        if not x:
            return "—"
        if what == "p50":
            return f"{x['lag_p50_ms']} ms"
        lo, hi = x["lag_p99_range_ms"]
        return f"{x['lag_p99_ms']} ms ({lo}–{hi})"
    for name, sm in summary.items():
        for x in sm["levels"]:
            offered = "max (peak)" if x["rate"] == 0 else f"{x['rate']:,}"
            if x["rate"] == 0:
                offered += "".join(f", {p} {x[p]['replicated_per_s']:,}/s" for p in PHASES[1:]
                                   if x.get(p) and x[p].get("replicated_per_s"))
            rows.append([name, offered, cell(x.get("update"), "p50"), cell(x.get("update"), "p99"),
                         cell(x.get("destroy"), "p50"), cell(x.get("destroy"), "p99")])
    out = markdown_table(headers, rows)
    bulk_rows = [[name, f"{sm['bulk']['size']:,}", f"{sm['bulk']['replicated_min']:,}",
                  cell(sm["bulk"], "p50"), cell(sm["bulk"], "p99")]
                 for name, sm in summary.items() if sm.get("bulk")]
    if bulk_rows:
        out += "\n\nNew entries at 1,000/s while fw1 sends its whole table to fw2:\n\n" + markdown_table(
            ["implementation", "table sent", "new replicated (min)", "lag p50", "lag p99 (range)"], bulk_rows)
    return out


# --- the breakdown (--trace) --------------------------------------------------------
STEPS = [("kernel event -> fw1 syncd wakes", "inject", "m_wake"),
         ("fw1: read + parse events", "m_wake", "m_read"),
         ("fw1: encode records", "m_read", "m_enc"),
         ("fw1: pack, sign, sendto", "m_enc", "m_sent"),
         ("network -> fw2 syncd wakes", "m_sent", "r_wake"),
         ("fw2: recvfrom (batch)", None, "r_recv"),
         ("fw2: authenticate + decode (batch)", None, "r_auth"),
         ("fw2: to the kernel request", "r_received", "r_kernel"),
         ("fw2: netlink apply (batch)", "r_kernel", "r_applied"),
         ("fw2 kernel event -> watcher", "r_applied", "seen"),
         ("total (lag)", "inject", "seen")]


def _index(batches: list, stamp_names: tuple) -> dict:
    """key -> stamps of the batches that carried it, oldest first."""
    out: dict = {}
    for b in batches:
        stamps = dict(zip(stamp_names, b[:-1]))
        for k in b[-1]:
            out.setdefault(tuple(k), []).append(stamps)
    return out


def breakdown(lab_dir: Path, trace_dir: Path, levels: list, dports: list) -> list:
    """Per level and phase: median and p99 of each step over the entries
    whose every stamp is known."""
    from syncd.core.entry import OP_DELETE, OP_UPSERT
    sent = _index(json.loads((trace_dir / "trace-fw1.json").read_text())["sent"],
                  ("m_wake", "m_read", "m_enc", "m_sent"))
    applied = _index(json.loads((trace_dir / "trace-fw2.json").read_text())["applied"],
                     ("r_wake", "r_recv", "r_auth", "r_received", "r_kernel", "r_applied"))
    rows = []
    for rate, dport in zip(levels, dports):
        for phase in PHASES:
            inj = json.loads((lab_dir / f"inject-{dport}-{phase}.json").read_text())["times"]
            seen = json.loads((lab_dir / f"watch-{dport}-{phase}.json").read_text())["seen"]
            op = OP_DELETE if phase == "destroy" else OP_UPSERT
            mark = 0 if phase == "new" else UPDATE_MARK
            steps = {name: [] for name, _, _ in STEPS}
            for i, (t0, t9) in enumerate(zip(inj, seen)):
                src, sport, _ = key_of(i, dport)
                k = (src, sport, dport, op, mark)
                if t9 is None or k not in sent or k not in applied:
                    continue
                st = {"inject": t0, "seen": t9, **sent[k][0], **applied[k][0]}
                for name, a, b in STEPS:
                    steps[name].append(st[b] - (st[a] if a else 0.0))
            rows.append({"rate": rate, "phase": phase, "entries": len(steps["total (lag)"]),
                         "steps": {name: [round(percentile(v, 50) * 1000, 3), round(percentile(v, 99) * 1000, 3)]
                                   for name, v in steps.items() if v}})
    return rows


def render_breakdown(rows: list) -> str:
    phases = [r for r in rows if r["phase"] == "new"]
    headers = ["step (NEW entries)"] + [f"{r['rate']:,}/s p50 / p99 ms" for r in phases]
    table = [[name] + [" / ".join(str(x) for x in r["steps"].get(name, ["—", "—"])) for r in phases]
             for name, _, _ in STEPS]
    return markdown_table(headers, table)


def trace_run(args) -> dict:
    """syncd alone, with SYNCD_TRACE (and SYNCD_PROFILE with --profile): the
    levels once, then the joined breakdown."""
    from tests.labkit import Lab
    trace_dir = Path(args.trace).resolve()
    trace_dir.mkdir(parents=True, exist_ok=True)
    os.environ["SYNCD_TRACE"] = str(trace_dir / "trace")
    if args.profile:
        os.environ["SYNCD_PROFILE"] = str(trace_dir / "profile")
    with Lab(members=2, prefix="h4bt", ipv6=False) as lab:
        for m in lab.members:
            lab.run(m, ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_max=262144"], check=False)
        impl = Impl(lab, "fwcluster-syncd")
        impl.start()
        print("trace: syncd", impl.schedule(args.sched == "rr"), file=sys.stderr, flush=True)
        dports, runs = [], []
        try:
            for k, rate in enumerate(args.levels):
                dports.append(DPORT_BASE + 100 + k)
                print(f"trace: {rate}/s x {args.seconds}s ...", file=sys.stderr, flush=True)
                runs.append(one_run(lab, impl, rate, int(rate * args.seconds), dports[-1], args.seconds + 30))
                print("  ", json.dumps(runs[-1]), file=sys.stderr, flush=True)
        finally:
            impl.stop()
        rows = breakdown(lab.dir, trace_dir, args.levels, dports)
    return {"runs": runs, "breakdown": rows}


DOC_HEAD = """# State sync performance: fwcluster-syncd vs conntrackd (FTFW)

Measured by `make bench-sync` (`bench/sync.py`) in the namespace lab: two
members on one kernel, sync over the lab's sync bridge, both
implementations injecting peers' entries straight into the kernel table
(conntrackd: FTFW, `DisableExternalCache on`). UDP entries are inserted
into fw1's table by a ctnetlink injector at a fixed rate for {seconds} s,
then updated (mark set), then deleted, at the same rate; a watcher on fw2
timestamps each one's NEW, UPDATE and DESTROY event there (bench/ctprobe.py:
requests encoded before the clock starts, raw event decoding). Lag = change
on fw2 - change on fw1 (one monotonic clock). Peak: {peak} entries at once;
"replicated at N/s" is the rate at which they all arrived. CPU: the
daemon's seconds on a CPU (every thread, /proc/PID/task/*/schedstat) on
each member per 10k replicated entries (NEW phase). python-floor is the least a Python implementation
must do (read, encode, HMAC, sendto; recvfrom, verify, decode, one netlink
batch; no reliability). harness is no implementation at all: the injector
writes into fw2's table, where the watcher is, so its lag is what the
probes themselves add to every row and its peak the highest rate they can
measure. Every cell is the median of {runs} repetitions
(implementations alternate); "lag p99 (range)" also gives the lowest and
highest p99 seen. Injector and watcher run SCHED_RR 99, like conntrackd
itself. The machine has 2 cores and may be shared with other work (the
load averages below tell): absolute numbers depend on it, the side-by-side
comparison in one run is the point. Load average (1/5/15 min) when the run started:
{load_start}; when it ended: {load_end}.

"""


def main(argv=None) -> int:
    from bench import mix     # here: it builds on bench.flood, which imports this module
    ap = arg_parser("sync", __doc__)
    sub = ap.add_subparsers(dest="mode")
    for name in ("worker-floor-send", "worker-floor-recv"):
        sub.add_parser(name)
    mix.add_workers(sub)
    for name in ("worker-inject", "worker-watch"):
        w = sub.add_parser(name)
        w.add_argument("--count", type=int, required=True)
        w.add_argument("--dport", type=int, required=True)
        w.add_argument("--rate", type=float, default=0)
        w.add_argument("--phase", choices=PHASES, default="new")
        w.add_argument("--timeout", type=float, default=60)
        w.add_argument("--out", required=True)
    ap.add_argument("--levels", default="1000,5000,10000")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--peak", type=int, default=20000)
    ap.add_argument("--impls", default=f"fwcluster-syncd,conntrackd,python-floor,{HARNESS}")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (medians are reported)")
    ap.add_argument("--bulk", type=int, default=100000, help="table size sent during the bulk lag run (0: none)")
    ap.add_argument("--bulk-via", choices=("refresh", "request"), default="refresh",
                    help="syncd's bulk: fw1's full refresh, or fw2's RESYNC_REQ (the protocol's bulk)")
    ap.add_argument("--trace", help="directory: run syncd alone with SYNCD_TRACE, print the per-step breakdown")
    ap.add_argument("--profile", action="store_true", help="with --trace: cProfile each daemon too")
    ap.add_argument("--sched", choices=("shipped", "rr"), default="shipped",
                    help="rr: syncd and the floor get conntrackd's own SCHED_RR 99 (like for like)")
    ap.add_argument("--mix-rate", type=int, default=5000,
                    help="new flows/s of the realistic mix (bench/mix.py; 0: none)")
    ap.add_argument("--mix-seconds", type=float, default=4)
    ap.add_argument("--only-mix", action="store_true", help="run the realistic mix alone")
    args = ap.parse_args(argv)
    if args.mode in mix.WORKERS:
        mix.WORKERS[args.mode](args)
        return 0
    if args.mode == "worker-inject":
        worker_inject(args)
        return 0
    if args.mode == "worker-watch":
        worker_watch(args)
        return 0
    if args.mode == "worker-floor-send":
        worker_floor_send(args)
    if args.mode == "worker-floor-recv":
        worker_floor_recv(args)
    if not have_root():
        return 2
    args.levels = [int(x) for x in args.levels.split(",")]
    args.impls = args.impls.split(",")
    if args.trace:
        out = trace_run(args)
        print(json.dumps(out, indent=1))
        print(render_breakdown(out["breakdown"]))
        return 0
    if args.only_mix or args.mix_rate:
        run_mix(args)
    if args.only_mix:
        return 0
    load_start = os.getloadavg()
    results = bench(args)
    load_end = os.getloadavg()
    summary = summarize(results)
    print(json.dumps({"summary": summary, "runs": results}, indent=1))
    table = "Scheduling: " + "; ".join(f"{k} {v}" for k, v in results["_sched"].items()) + ".\n\n" \
        + render(summary, args) + "\n\nUPDATE and DESTROY of the same entries, at the same rate:\n\n" \
        + render_phases(summary)
    print(table)
    if args.doc:
        loads = {k: " / ".join(f"{x:.2f}" for x in v) for k, v in
                 (("load_start", load_start), ("load_end", load_end))}
        write_doc(Path(args.doc), DOC_HEAD.format(seconds=args.seconds, peak=args.peak, runs=args.runs, **loads)
                  + table + "\n\nThe medians of every cell, as JSON, are on the benchmark's standard "
                  "output.\n")
    return 0


MIX_HEAD = """## A realistic mix: most flows short, a tenth long

Real flows through the master at {rate:,} new per second for {seconds:g} s
(bench/mix.py has the method): of every ten, 4 DNS-like UDP query/answer,
2 failed connects (SYN, RST), 3 short TCP exchanges that close, 1 long
(a TCP session kept established, or a UDP flow used again until assured,
in turn). fwcluster-syncd runs as shipped ([sync] filter as shipped, the
ruleset's ct event masks), conntrackd as bench-flood configures it (its
manual's `assured,destroy` event mask and state filter). CPU: the
daemon's seconds on a CPU (every thread) per 10k flows opened, on the sender (fw1)
and the receiver (fw2); sync link bytes: fw1's sync0, both ways; lag of
the long flows: fw1's table showing them ESTABLISHED / [ASSURED] to
fw2's. Completed: flows each of whose packets was answered within 3 s (a
short flow the loaded machine did not answer in time makes less work for
the daemons). One run per implementation, load average {load} at its
start.

"""


def run_mix(args) -> None:
    from bench import mix
    load = os.getloadavg()
    results = mix.run(["fwcluster-syncd", "conntrackd"], args.mix_rate, args.mix_seconds)
    print(json.dumps({"mix": results}, indent=1))
    table = mix.render(results)
    print(table)
    if args.doc:
        write_section(Path(args.doc), "bench-sync-mix",
                      MIX_HEAD.format(rate=args.mix_rate, seconds=args.mix_seconds,
                                      load=" / ".join(f"{x:.2f}" for x in load)) + table)


BEGIN, END = "<!-- bench-sync: begin -->\n", "<!-- bench-sync: end -->\n"


def write_doc(doc: Path, generated: str) -> None:
    """The generated part goes between the BEGIN/END markers when the file
    has them (the rest is written by hand: before/after, breakdown), else
    it is the whole file."""
    old = doc.read_text() if doc.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        generated = head + BEGIN + generated + END + rest.split(END, 1)[1]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(generated)


if __name__ == "__main__":
    sys.exit(main())

"""bench-sync's realistic mix: real flows through the master, most short, a
tenth long, fwcluster-syncd beside conntrackd (each as bench/flood.py
configures it: syncd as shipped, conntrackd as its manual recommends).

A load generator in the client namespace opens --rate new flows per second
for --seconds through fw1 (the master of a 2-member lab, real carpd), to a
server worker in the server namespace. Of every ten flows:

* 4 DNS-like: a UDP query and its answer, then nothing (never assured);
* 2 failed connects: a SYN to a closed port, the server's RST;
* 3 short TCP exchanges: connect, one request and its echo, close;
* 1 long flow, TCP and UDP in turn: a TCP session that stays established,
  or a UDP flow that answers and is used again 2.5 s later (assured).

A flow is completed when each of its packets got its answer (a failed
connect: the RST) within 3 s; generator and server run SCHED_RR 1, below
the daemons. Per implementation: the daemons' CPU seconds (ns on a CPU, every
thread: bench.common.cpu_seconds) per 10k
flows opened on the sender (fw1) and the receiver (fw2), from the first
flow to a second after the last one's last packet; the sync link's bytes
(fw1's sync0, both ways) in that time; the replication lag of the long
flows: from fw1's table showing one ESTABLISHED (TCP) or [ASSURED] (UDP)
to fw2's (`conntrack -E` on each, one clock), p50/p99.

Run by `python -m bench.sync` (--mix-rate, --mix-seconds; --only-mix).
"""
from __future__ import annotations

import json
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, first_seen, lags, markdown_table, percentile, watch_events
from bench.flood import lab_sync, start_cluster, sync_bytes

PY = sys.executable
# The server worker's ports; nothing listens on FAIL_PORT (the kernel's RST).
DNS_PORT, LONG_UDP_PORT, SHORT_TCP_PORT, LONG_TCP_PORT, FAIL_PORT = 5353, 5354, 5380, 5381, 5399
# One cycle of ten flows; "long" alternates TCP and UDP.
CYCLE = ("dns", "fail", "short", "dns", "short", "fail", "dns", "short", "dns", "long")
UDP_AGAIN = 2.5        # a UDP flow used again after its answer + 2 s is assured (nf_conntrack_proto_udp)
FLOW_TIMEOUT = 3.0     # a flow's packets not answered by then: given up (counted)
SETTLE = 1.0           # after the last packet: the daemons' replication of it is measured too


# --- workers (run inside the lab namespaces) ---------------------------------------
def worker_serve(args) -> None:
    """Echo every UDP datagram and every TCP segment's data; close a TCP
    connection when its client does. Runs until killed (or --seconds)."""
    _more_files()
    sel = selectors.DefaultSelector()
    for port in (DNS_PORT, LONG_UDP_PORT):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((args.addr, port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, "udp")
    for port in (SHORT_TCP_PORT, LONG_TCP_PORT):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((args.addr, port))
        t.listen(4096)
        t.setblocking(False)
        sel.register(t, selectors.EVENT_READ, "listen")
    Path(args.out).write_text("ready")
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            try:
                if key.data == "udp":
                    for _ in range(64):
                        data, peer = s.recvfrom(512)
                        s.sendto(data, peer)
                elif key.data == "listen":
                    for _ in range(64):
                        c, _peer = s.accept()
                        c.setblocking(False)
                        sel.register(c, selectors.EVENT_READ, "conn")
                else:
                    data = s.recv(512)
                    if data:
                        s.send(data)
                    else:
                        sel.unregister(s)
                        s.close()
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                if key.data == "conn":
                    sel.unregister(s)
                    s.close()


def _more_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Flows:
    """The generator's flows: each a small state machine on a selector."""

    def __init__(self, dst: str):
        self.dst = dst
        self.sel = selectors.DefaultSelector()
        self.kept: list[socket.socket] = []           # long flows, open to the end
        self.again: list[tuple[float, socket.socket]] = []   # long UDP: (when, socket)
        self.started = {k: 0 for k in ("dns", "fail", "short", "long-tcp", "long-udp")}
        self.done = dict.fromkeys(self.started, 0)
        self.given_up = 0
        self.longs = 0
        self.scanned = 0.0

    def open(self, kind: str, now: float) -> None:
        if kind == "long":
            kind = ("long-tcp", "long-udp")[self.longs % 2]
            self.longs += 1
        self.started[kind] += 1
        udp = kind in ("dns", "long-udp")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        s.setblocking(False)
        port = {"dns": DNS_PORT, "long-udp": LONG_UDP_PORT, "short": SHORT_TCP_PORT,
                "long-tcp": LONG_TCP_PORT, "fail": FAIL_PORT}[kind]
        if udp:
            s.connect((self.dst, port))
            s.send(b"q")
            self.sel.register(s, selectors.EVENT_READ, [kind, "answer", now])
        else:
            s.connect_ex((self.dst, port))
            self.sel.register(s, selectors.EVENT_WRITE, [kind, "connect", now])

    def step(self, s: socket.socket, state: list, now: float) -> None:
        kind, phase, _t = state
        if phase == "connect":
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or kind == "fail":
                return self.finish(s, kind, ok=kind == "fail")
            s.send(b"x")
            self.sel.modify(s, selectors.EVENT_READ, [kind, "answer", now])
            return
        try:
            s.recv(512)
        except OSError:
            return self.finish(s, kind, ok=False)
        if kind == "long-udp" and phase == "answer":
            self.sel.unregister(s)
            self.again.append((now + UDP_AGAIN, s))
        elif kind.startswith("long"):
            self.sel.unregister(s)
            self.kept.append(s)
            self.done[kind] += 1
        else:
            self.finish(s, kind, ok=True)

    def finish(self, s: socket.socket, kind: str, ok: bool) -> None:
        self.sel.unregister(s)
        s.close()
        if ok:
            self.done[kind] += 1
        else:
            self.given_up += 1

    def turn(self, now: float, wait: float) -> None:
        while self.again and self.again[0][0] <= now:
            _when, s = self.again.pop(0)
            s.send(b"y")
            self.sel.register(s, selectors.EVENT_READ, ["long-udp", "again", now])
        for key, _ in self.sel.select(wait):
            self.step(key.fileobj, key.data, now)
        if now - self.scanned >= 0.1:           # unanswered: given up (a scan is O(flows))
            self.scanned = now
            for key in list(self.sel.get_map().values()):
                if now - key.data[2] > FLOW_TIMEOUT:
                    self.finish(key.fileobj, key.data[0], ok=False)

    def pending(self) -> bool:
        return bool(self.again or self.sel.get_map())


def worker_load(args) -> None:
    """args.rate new flows per second for args.seconds (paced in 10 ms
    slices), each as CYCLE says; then every flow's last packet; writes the
    counts to args.out and keeps the long flows open for args.hold s."""
    _more_files()
    flows = Flows(args.dst)
    total = int(args.rate * args.seconds)
    opened, t0 = 0, time.monotonic()
    deadline = t0 + args.seconds + UDP_AGAIN + FLOW_TIMEOUT + 5
    while (opened < total or flows.pending()) and time.monotonic() < deadline:
        now = time.monotonic()
        due = min(total, int((now - t0) * args.rate) + 1)
        while opened < due:
            try:
                flows.open(CYCLE[opened % len(CYCLE)], now)
            except OSError:
                flows.given_up += 1         # out of ports or buffers: not made
            opened += 1
        flows.turn(now, 0.01 if opened < total else 0.05)
    took = time.monotonic() - t0
    Path(args.out).write_text(json.dumps({"opened": opened, "seconds": round(took, 3),
                                          "open_seconds": args.seconds, "started": flows.started,
                                          "done": flows.done, "given_up": flows.given_up}))
    time.sleep(args.hold)


# --- the lab side ---------------------------------------------------------------------
def one_impl(impl: str, rate: int, seconds: float) -> dict:
    from tests.labkit import CLIENT4, SERVER4, Lab
    with Lab(members=2, prefix="bmix", advbase=1, sync=lab_sync(impl)) as lab:
        env = {"PYTHONPATH": str(REPO)}
        ready = lab.dir / "serve.ready"
        # the server as the generator: a daemon's real-time priority must not starve it
        lab.popen("server", ["chrt", "-r", "1", PY, "-m", "bench.sync", "worker-mix-serve", "--addr", SERVER4,
                             "--seconds", "600", "--out", str(ready)], env=env)
        if not lab.wait_for(ready.exists, 10):
            raise RuntimeError("the mix's server did not start")
        daemons = start_cluster(lab, impl)
        time.sleep(2)
        watches = {(m, proto): (lab.dir / f"{m}-{proto}.events", port)
                   for m in lab.members for proto, port in (("tcp", LONG_TCP_PORT), ("udp", LONG_UDP_PORT))}
        for (m, proto), (path, port) in watches.items():
            watch_events(lab, m, path, proto, port)
        time.sleep(0.5)
        out = lab.dir / "mix.json"
        cpu0 = {m: daemons.cpu(m) for m in lab.members}
        bytes0, t0 = sync_bytes(lab), time.monotonic()
        # the lowest real-time priority, as bench-flood's generator: the
        # packets' way through the namespaces runs in its context
        gen = lab.popen("client", ["chrt", "-r", "1", PY, "-m", "bench.sync", "worker-mix-load",
                                   "--dst", SERVER4, "--rate", str(rate), "--seconds", str(seconds),
                                   "--hold", "60", "--out", str(out)], env=env)
        limit = seconds + UDP_AGAIN + FLOW_TIMEOUT + 10
        if not lab.wait_for(out.exists, limit, 0.1):
            raise RuntimeError(f"the mix's generator did not finish in {limit:.0f} s")
        time.sleep(SETTLE)
        took = time.monotonic() - t0
        cpu1 = {m: daemons.cpu(m) for m in lab.members}
        link = sync_bytes(lab) - bytes0
        got = json.loads(out.read_text())
        gen.terminate()
        long_lags = []
        for proto, marker in (("tcp", "ESTABLISHED"), ("udp", "[ASSURED]")):
            source, replica = (first_seen(watches[(m, proto)][0], marker, watches[(m, proto)][1])
                               for m in ("fw1", "fw2"))
            long_lags += lags(source, replica)
        flows = got["opened"]
        return {"asked_per_s": rate, "achieved_per_s": round(flows / got["open_seconds"]),
                "flows": flows, "given_up": got["given_up"], "started": got["started"], "done": got["done"],
                "seconds": round(took, 2), "long": got["started"]["long-tcp"] + got["started"]["long-udp"],
                "completed": sum(got["done"].values()),
                "long_replicated": len(long_lags),
                "cpu_s_per_10k": {m: round((cpu1[m] - cpu0[m]) * 10000 / max(1, flows), 3)
                                  for m in lab.members},
                "sync_bytes": link, "sync_bytes_per_flow": round(link / max(1, flows), 1),
                "long_lag_p50_ms": round(percentile(long_lags, 50) * 1000, 2) if long_lags else None,
                "long_lag_p99_ms": round(percentile(long_lags, 99) * 1000, 2) if long_lags else None}


def run(impls: list[str], rate: int, seconds: float) -> dict:
    return {impl: one_impl(impl, rate, seconds) for impl in impls}


def render(results: dict) -> str:
    rows = [[impl, f"{r['achieved_per_s']:,}", f"{r['flows']:,}", f"{r['completed']:,}",
             f"{r['long_replicated']:,} of {r['long']:,}",
             f"{r['long_lag_p50_ms']} ms", f"{r['long_lag_p99_ms']} ms",
             f"{r['cpu_s_per_10k']['fw1']:.3f}", f"{r['cpu_s_per_10k']['fw2']:.3f}",
             f"{r['sync_bytes']:,} ({r['sync_bytes_per_flow']:g}/flow)"]
            for impl, r in results.items()]
    return markdown_table(["implementation", "new flows/s", "flows", "completed", "long replicated",
                           "long lag p50", "long lag p99", "CPU s/10k fw1", "CPU s/10k fw2", "sync link bytes"], rows)


def add_workers(sub) -> None:
    """The mix's worker sub-commands of `python -m bench.sync`."""
    s = sub.add_parser("worker-mix-serve")
    s.add_argument("--addr", required=True)
    s.add_argument("--seconds", type=float, default=600)
    s.add_argument("--out", required=True)
    g = sub.add_parser("worker-mix-load")
    g.add_argument("--dst", required=True)
    g.add_argument("--rate", type=float, required=True)
    g.add_argument("--seconds", type=float, required=True)
    g.add_argument("--hold", type=float, default=60)
    g.add_argument("--out", required=True)


WORKERS = {"worker-mix-serve": worker_serve, "worker-mix-load": worker_load}

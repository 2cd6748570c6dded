"""Active-active with the real daemons: three members, carpd's per-bucket
elections, syncd, the default template. 300 IPv4 and 60 IPv6 TCP sessions
from as many client addresses are spread over the members; one member is lost (its sessions
continue on the two survivors, which split its buckets) and returns (it
takes its buckets back once in sync; no session is lost).

Who carries a flow is measured on the forwarding path: a small extra table
in every member remembers, for 3 s, the client address of every packet it
forwarded from the LAN (conntrack cannot tell: with state sync every member
holds every entry).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fwcluster.core import hashbuckets
from carp_helpers import neigh_mac
from tests.labkit import LAN_VIP6, SERVER4, SERVER6, WAN_VIP6, Lab

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "overlays" / "cluster" / "etc" / "fwcluster" / "ruleset.nft.j2"
BUCKETS = 30
PORT = 5101
# 300 client addresses: 150 on the LAN, 150 of another documentation
# range that the members route to the client (the LAN has too few).
EXTRA_NET = "203.0.113"  # .101-.250; the sync link uses .1-.4 of the same /24
CLIENTS = [f"192.0.2.{i}" for i in range(101, 251)] + [f"{EXTRA_NET}.{i}" for i in range(101, 251)]
CLIENTS6 = [f"2001:db8:1::{i:x}" for i in range(0x200, 0x23c)]
CONFIG = {"balance": {"mode": "active-active", "buckets": BUCKETS},
          "carp": {"sync_hold": 20}, "firewall": {"template": str(TEMPLATE)}}
MEASURE_TTL = 3  # seconds a forwarded source is remembered

SERVER = r"""
import asyncio, sys
async def main(port, lifetime):
    async def echo(r, w):
        try:
            while line := await r.readline():
                w.write(line); await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()
    await asyncio.start_server(echo, None, port, backlog=1024)
    await asyncio.sleep(lifetime)
asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""

# One TCP session per source address, each sending a line every `interval`
# and waiting for its echo; the status file (rewritten every 0.25 s) has
# the wall-clock time of every session's last echo and its error, if any.
CLIENT = r"""
import asyncio, json, os, sys, time
dst, port, duration, interval, status = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    float(sys.argv[4]), sys.argv[5]
srcs = sys.argv[6:]
last, err = [None] * len(srcs), [None] * len(srcs)
end = time.monotonic() + min(duration, 400)
async def session(i, src):
    await asyncio.sleep(i * 0.005)
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(dst, port, local_addr=(src, 0)), 10)
    except (OSError, asyncio.TimeoutError) as e:
        err[i] = f"connect: {e!r}"; return
    n = 0
    try:
        while time.monotonic() < end:
            w.write(b"%d\n" % n); await w.drain()
            line = await asyncio.wait_for(r.readline(), 30)
            if line != b"%d\n" % n:
                err[i] = f"bad echo {line!r}"; return
            last[i] = time.time(); n += 1
            await asyncio.sleep(interval)
    except (OSError, asyncio.TimeoutError) as e:
        err[i] = repr(e)
    finally:
        w.close()
async def report():
    while True:
        with open(status + ".tmp", "w") as f:
            json.dump({"time": time.time(), "last": last, "errors": err}, f)
        os.replace(status + ".tmp", status)
        if time.monotonic() >= end:
            return
        await asyncio.sleep(0.25)
async def main():
    tasks = [asyncio.create_task(session(i, s)) for i, s in enumerate(srcs)]
    await report()
    for t in tasks:
        t.cancel()
asyncio.run(main())
"""

MEASURE = f"""table inet fwmeasure {{
  set carried {{ type ipv4_addr; flags dynamic, timeout; timeout {MEASURE_TTL}s; }}
  set carried6 {{ type ipv6_addr; flags dynamic, timeout; timeout {MEASURE_TTL}s; }}
  chain forward {{ type filter hook forward priority 10; policy accept;
    iifname "lan0" meta nfproto ipv4 update @carried {{ ip saddr }}
    iifname "lan0" meta nfproto ipv6 update @carried6 {{ ip6 saddr }}
  }}
}}
"""


def _routes(lab: Lab, member: str) -> None:
    """The extra client range lives behind the client (link down drops these)."""
    for net in (f"{EXTRA_NET}.96/27", f"{EXTRA_NET}.128/25"):
        lab.run(member, ["ip", "route", "replace", net, "via", "192.0.2.100", "dev", "lan0"])


def _prepare(lab: Lab) -> None:
    for m in lab.members:
        res = lab.fwctl(m, "rules", "apply")
        assert res.get("ok"), res
        lab.run(m, ["nft", "-f", "-"], input=MEASURE)
        _routes(lab, m)
    extra = [f"addr add {a}/{24 if a.startswith('192.') else 32} dev eth0" for a in CLIENTS]
    extra += [f"addr add {a}/64 dev eth0 nodad" for a in CLIENTS6]
    lab.run("client", ["ip", "-batch", "-"], input="\n".join(extra) + "\n")


def _owned(lab: Lab) -> dict[str, list[int] | None]:
    return {m: ((lab.status(m) or {}).get("buckets") or {}).get("owned") for m in lab.members}


def _expected_owned(lab: Lab, alive) -> dict[str, list[int]]:
    owner = hashbuckets.owners(BUCKETS, lab.members, alive)
    return {m: sorted(b for b, o in owner.items() if o == m) for m in alive}


def _wait_owned(lab: Lab, alive, timeout: float) -> None:
    want = _expected_owned(lab, alive)
    ok = lab.wait_for(lambda: {m: o for m, o in _owned(lab).items() if m in alive} == want, timeout, 0.2)
    assert ok, (f"bucket ownership did not settle to {want}: {_owned(lab)}\n"
                + "\n".join(f"--- {m}:\n{lab.log_tail(m, 'carpd', 1200)}" for m in alive))


def _carried(lab: Lab, members, which: str = "carried") -> dict[str, set[str]]:
    """Client addresses each member forwarded in the last MEASURE_TTL s."""
    out = {}
    for m in members:
        data = json.loads(lab.run(m, ["nft", "-j", "list", "set", "inet", "fwmeasure", which]).stdout)
        elems = next(i["set"] for i in data["nftables"] if "set" in i).get("elem", [])
        out[m] = {e["elem"]["val"] if isinstance(e, dict) else e for e in elems}
    return out


class Load:
    def __init__(self, lab: Lab, duration: float, interval: float = 0.2, srcs=CLIENTS,
                 target: str = SERVER4):
        self.srcs = list(srcs)
        self.status_path = lab.dir / f"balance-load-{target}.json"
        self.proc = lab.popen("client", [PY, "-c", CLIENT, target, PORT, duration, interval,
                                         self.status_path, *self.srcs])

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {"last": [None] * len(self.srcs), "errors": [None] * len(self.srcs), "time": 0}

    def alive_since(self, t: float) -> int:
        return len(self.alive_set(t))

    def alive_set(self, t: float) -> set[str]:
        return {s for s, x in zip(self.srcs, self.status()["last"]) if x and x > t}

    def wait_all_alive_since(self, lab: Lab, t: float, timeout: float) -> int:
        lab.wait_for(lambda: self.alive_since(t) == len(self.srcs), timeout, 0.25)
        return self.alive_since(t)

    def errors(self) -> dict[str, str]:
        return {self.srcs[i]: e for i, e in enumerate(self.status()["errors"]) if e}


def _spread_check(lab: Lab, members, alive, label: str) -> dict[str, int]:
    time.sleep(MEASURE_TTL + 0.5)  # forget who carried what before
    counts = {}
    for which, clients, server in (("carried", CLIENTS, SERVER4), ("carried6", CLIENTS6, SERVER6)):
        carried = _carried(lab, members, which)
        counts[which] = {m: len(s) for m, s in carried.items()}
        where: dict[str, list[str]] = {}
        for m, srcs in carried.items():
            for s in srcs:
                where.setdefault(s, []).append(m)
        # Every session is carried, by exactly one member: the owner of its bucket.
        assert sorted(where) == sorted(clients), f"{which}: {len(where)} of {len(clients)} flows carried"
        assert {s: ms for s, ms in where.items() if len(ms) != 1} == {}
        owner = hashbuckets.owners(BUCKETS, lab.members, alive)
        want = {s: owner[hashbuckets.flow_bucket(s, server, BUCKETS)] for s in clients}
        assert {s: ms[0] for s, ms in where.items()} == want
    print(f"\n{label}: flows carried per member {counts}")
    return counts["carried"]


def test_three_members_share_300_sessions_and_keep_them_through_loss_and_return():
    with Lab(members=3, prefix="fwbal", ipv6=True, **CONFIG) as lab:
        _prepare(lab)
        for m in lab.members:
            lab.start_syncd(m)
        for m in lab.members:
            lab.start_carpd(m)
        _wait_owned(lab, lab.members, 30)
        # Every member holds the vips of both families and accepts their
        # multicast MACs; the client resolves the IPv6 vip to its MAC too
        # (carpd answers the solicitation, the kernel's own answer is dropped).
        for m in lab.members:
            assert lab.has_addr(m, "lan0", "192.0.2.1") and lab.has_addr(m, "wan0", "198.51.100.1")
            assert lab.has_addr(m, "lan0", LAN_VIP6) and lab.has_addr(m, "wan0", WAN_VIP6)
            maddr = lab.run(m, ["ip", "maddr", "show", "dev", "lan0"]).stdout
            assert hashbuckets.vip_mac(1) in maddr and hashbuckets.vip_mac(3) in maddr
        assert lab.ping("client", SERVER6, timeout=3)
        assert neigh_mac(lab, "client", LAN_VIP6) == hashbuckets.vip_mac(3)

        lab.popen("server", [PY, "-c", SERVER, PORT, 300])
        assert lab.wait_for(lambda: f":{PORT} " in lab.run("server", ["ss", "-ltn"]).stdout, 10)
        t_start = time.time()
        load = Load(lab, duration=240)
        load6 = Load(lab, duration=240, srcs=CLIENTS6, target=SERVER6)
        alive = load.wait_all_alive_since(lab, t_start, 30)
        assert alive == len(CLIENTS), load.errors()
        assert load6.wait_all_alive_since(lab, t_start, 30) == len(CLIENTS6), load6.errors()

        # 1. Spread: each member carries a third, +- 8 points.
        counts = _spread_check(lab, lab.members, lab.members, "all members up")
        for m, n in counts.items():
            assert abs(n / len(CLIENTS) - 1 / 3) <= 0.08, counts
        st = lab.fwctl("fw1", "status")["buckets"]
        assert st["count"] == BUCKETS and st["owned"] == st["applied"] == _expected_owned(lab, lab.members)["fw1"]
        assert len(st["by_master"]) == 3  # fw1 knows all three owners from their adverts
        human = lab.fwctl_raw("fw1", "status").stdout
        assert "buckets: 10 of 30 owned here" in human and "(this member)" in human, human

        # 2. Node loss of fw1: its buckets go to fw2 and fw3, half each, and
        # every session carries on through them.
        t_loss = lab.node_loss("fw1")
        survivors = ["fw2", "fw3"]
        _wait_owned(lab, survivors, 15)
        t_taken = time.time()
        # Within the CARP takeover time: master-down 3 s + skew/256 (+ polling).
        took = time.monotonic() - t_loss
        print(f"\nfw1's buckets owned by fw2/fw3 {took:.1f} s after its loss")
        assert took < 6, took
        assert {m: len(o) for m, o in _owned(lab).items() if m in survivors} == {"fw2": 15, "fw3": 15}
        alive = load.wait_all_alive_since(lab, t_taken, 30)
        alive6 = load6.wait_all_alive_since(lab, t_taken, 30)
        print(f"\nafter the loss of fw1: {alive} of {len(CLIENTS)} IPv4 and "
              f"{alive6} of {len(CLIENTS6)} IPv6 sessions alive")
        assert alive == len(CLIENTS), (load.errors(), lab.log_tail("fw2", "syncd", 1500))
        assert alive6 == len(CLIENTS6), load6.errors()
        counts = _spread_check(lab, survivors, survivors, "fw1 lost")

        # 3. fw1 returns (a reboot: empty conntrack table, no owned buckets),
        # resyncs, and takes its buckets back; no session is lost.
        lab.run("fw1", ["conntrack", "-F"], check=False)
        lab.run("fw1", ["nft", "flush", "set", "inet", "fwcluster", "owned_buckets"])
        lab.node_return("fw1")
        _routes(lab, "fw1")
        # Ordered takeover: without syncd's word fw1 stays demoted (sync_hold)
        # and claims nothing, though it would win every one of its buckets.
        lab.start_carpd("fw1")
        time.sleep(5)  # longer than the master-down time (3 s + skew)
        st = lab.status("fw1")
        assert st["demotion_sources"] == {"syncd": 32} and st["buckets"]["owned"] == [], st["buckets"]
        assert _owned(lab)["fw2"] == _expected_owned(lab, survivors)["fw2"]
        lab.start_syncd("fw1")
        _wait_owned(lab, lab.members, 20)
        t_back = time.time()
        alive = load.wait_all_alive_since(lab, t_back, 30)
        alive6 = load6.wait_all_alive_since(lab, t_back, 30)
        print(f"\nafter fw1 returned: {alive} of {len(CLIENTS)} IPv4 and "
              f"{alive6} of {len(CLIENTS6)} IPv6 sessions alive")
        assert alive == len(CLIENTS), load.errors()
        assert alive6 == len(CLIENTS6), load6.errors()
        counts = _spread_check(lab, lab.members, lab.members, "fw1 back")
        assert load.errors() == {} and load6.errors() == {}


def test_control_without_state_sync_the_lost_members_sessions_die():
    """The same loss without syncd: the survivors have no state for fw1's
    flows and drop them, while every other flow continues -- so the test
    above can tell when state does not reach the bucket's new owner."""
    srcs = CLIENTS[:60]
    with Lab(members=3, prefix="fwbal", ipv6=False, **{**CONFIG, "carp": {}}) as lab:
        _prepare(lab)
        for m in lab.members:
            lab.start_carpd(m)
        _wait_owned(lab, lab.members, 30)
        lab.popen("server", [PY, "-c", SERVER, PORT, 120])
        assert lab.wait_for(lambda: f":{PORT} " in lab.run("server", ["ss", "-ltn"]).stdout, 10)
        t_start = time.time()
        load = Load(lab, duration=90, srcs=srcs)
        assert load.wait_all_alive_since(lab, t_start, 30) == len(srcs), load.errors()
        owner = hashbuckets.owners(BUCKETS, lab.members)
        on_fw1 = {s for s in srcs if owner[hashbuckets.flow_bucket(s, SERVER4, BUCKETS)] == "fw1"}
        assert 5 < len(on_fw1) < len(srcs) - 5
        lab.node_loss("fw1")
        _wait_owned(lab, ["fw2", "fw3"], 15)
        t_taken = time.time()
        others = set(srcs) - on_fw1
        assert lab.wait_for(lambda: load.alive_set(t_taken) >= others, 30, 0.25), load.errors()
        time.sleep(8)  # time for TCP to retransmit into the new owners
        alive = load.alive_set(t_taken)
        print(f"\nwithout syncd: {len(alive & on_fw1)} of fw1's {len(on_fw1)} sessions alive, "
              f"{len(alive & others)} of {len(others)} others")
        assert alive & on_fw1 == set()

        # A clean stop (SIGTERM) hands every bucket over at once: carpd bows
        # out of each (advbase = advskew = 255) instead of going silent.
        t0 = time.monotonic()
        lab.stop_daemon("fw2", "carpd")
        assert lab.wait_for(lambda: _owned(lab)["fw3"] == list(range(BUCKETS)), 2, 0.05), _owned(lab)
        print(f"fw2 stopped: fw3 owns all buckets {time.monotonic() - t0:.2f} s after SIGTERM")
        assert lab.run("fw2", ["nft", "-j", "list", "set", "inet", "fwcluster", "owned_buckets"]).stdout \
            .count('"elem"') == 0

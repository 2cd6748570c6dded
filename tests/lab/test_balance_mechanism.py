"""Active-active mechanism on the real kernel, without carpd: three members
all hold the vips, frames reach all of them through the vips' multicast
MACs, and the default template's balance chain lets exactly one member
carry each flow -- the one owning the flow's bucket. Bucket ownership is
set by hand here (what carpd will do from its per-bucket elections).

Each flow is a TCP connection from its own client address to the server
that exchanges data, so both directions must pass the same member; with
snat the replies come back addressed to the WAN vip (NAT) and must still
find that member. The kernel's choice is compared, flow by flow, with
fwcluster.core.hashbuckets's model of the hash.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path


from fwcluster.core import hashbuckets
from tests.labkit import LAN_VIP4, LAN_VIP6, SERVER4, SERVER6, WAN_VIP4, WAN_VIP6, Lab

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "overlays" / "cluster" / "etc" / "fwcluster" / "ruleset.nft.j2"
BUCKETS = 30
CLIENTS = 120  # 192.0.2.101 .. .220, beside the lab's own .100
CLIENTS6 = 60  # 2001:db8:1::1:1 .. ::1:3c
PORT = 8080

# Echo server on some ports: answers every line, exits by itself after
# `lifetime` seconds.
SERVER = r"""
import asyncio, sys
async def main(lifetime, ports):
    async def echo(r, w):
        try:
            while line := await r.readline():
                w.write(b"pong " + line); await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()
    for port in ports:
        await asyncio.start_server(echo, None, port, backlog=512)
    await asyncio.sleep(lifetime)
asyncio.run(main(float(sys.argv[1]), [int(p) for p in sys.argv[2:]]))
"""

# One connection per source address; each sends a line, expects the echo;
# all stay open until `hold` seconds after the report is printed.
CLIENT = r"""
import asyncio, json, sys
async def one(src, dst, port):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(dst, port, local_addr=(src, 0)), 5)
        w.write(b"ping\n"); await w.drain()
        ok = (await asyncio.wait_for(r.readline(), 5)) == b"pong ping\n"
        return src, ok, w
    except (OSError, asyncio.TimeoutError):
        return src, False, None
async def main(dst, port, hold, srcs):
    res = await asyncio.gather(*(one(s, dst, port) for s in srcs))
    print(json.dumps({s: ok for s, ok, _ in res}), flush=True)
    await asyncio.sleep(hold)
    for _, _, w in res:
        if w: w.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]))
"""


def _clients4() -> list[str]:
    return [f"192.0.2.{101 + i}" for i in range(CLIENTS)]


def _clients6() -> list[str]:
    return [f"2001:db8:1::1:{i:x}" for i in range(1, CLIENTS6 + 1)]


def _template(tmp: Path, snat: bool) -> Path:
    text = TEMPLATE.read_text()
    if snat:
        old = "{%- set snat_to_vip = [] %}"
        assert old in text
        text = text.replace(old, '{%- set snat_to_vip = ["wan0"] %}')
    path = tmp / "ruleset.nft.j2"
    path.write_text(text)
    return path


def _carried(lab: Lab, member: str, port: int) -> list[str]:
    """Original source addresses of the TCP entries to `port` (any state: a
    connection that already closed still has its entry, in TIME_WAIT)."""
    out = lab.run(member, ["conntrack", "-L", "-f", "ipv4", "-p", "tcp", "--dport", str(port)],
                  check=False).stdout
    if lab.ipv6:
        out += lab.run(member, ["conntrack", "-L", "-f", "ipv6", "-p", "tcp", "--dport", str(port)],
                       check=False).stdout
    return [m.group(1) for line in out.splitlines() for m in [re.search(r"src=(\S+)", line)] if m]


def _set_owned(lab: Lab, owned: dict[str, set[int]]) -> None:
    for m in lab.members:
        lab.run(m, [PY, "-c", "import sys; from fwcluster import nft; "
                              "nft.set_owned_buckets(map(int, sys.argv[1:]))", *sorted(owned[m])])


def _owned(lab: Lab, alive=None) -> dict[str, set[int]]:
    owner = hashbuckets.owners(BUCKETS, lab.members, alive)
    return {m: {b for b, o in owner.items() if o == m} for m in lab.members}


def _setup(lab: Lab, template: Path) -> None:
    vips = [(LAN_VIP4, 24, "lan0", 1), (WAN_VIP4, 24, "wan0", 2)]
    if lab.ipv6:
        vips += [(LAN_VIP6, 64, "lan0", 3), (WAN_VIP6, 64, "wan0", 4)]
    for m in lab.members:
        # Every member holds the vips (active-active); their frames go to
        # the multicast MAC, which the NIC must accept.
        for addr, plen, ifname, vhid in vips:
            lab.run(m, ["ip", "addr", "add", f"{addr}/{plen}", "dev", ifname]
                    + (["nodad"] if ":" in addr else []))
            lab.run(m, ["ip", "maddr", "add", hashbuckets.vip_mac(vhid), "dev", ifname])
        res = lab.fwctl(m, "rules", "apply", "--template", str(template))
        assert res["ok"], res
    _set_owned(lab, _owned(lab))
    extra = [f"addr add {a}/24 dev eth0" for a in _clients4()]
    if lab.ipv6:
        extra += [f"addr add {a}/64 dev eth0 nodad" for a in _clients6()]
        # Neighbour discovery does not give out the multicast MAC (the kernel
        # answers with the member's own; see docs/firewall.md): static here.
        lab.run("client", ["ip", "-6", "neigh", "replace", LAN_VIP6, "lladdr", hashbuckets.vip_mac(3),
                           "dev", "eth0", "nud", "permanent"])
        lab.run("server", ["ip", "-6", "neigh", "replace", WAN_VIP6, "lladdr", hashbuckets.vip_mac(4),
                           "dev", "eth0", "nud", "permanent"])
    lab.run("client", ["ip", "-batch", "-"], input="\n".join(extra) + "\n")


def _connect(lab: Lab, port: int) -> tuple[dict[str, bool], dict[str, list[str]]]:
    """Open every client's connection to `port`; while they are open, read
    which member carries each. Returns (answered, source -> members)."""
    runs = [(SERVER4, _clients4())] + ([(SERVER6, _clients6())] if lab.ipv6 else [])
    procs = [lab.popen("client", [PY, "-c", CLIENT, dst, str(port), "2", *srcs], stdout=-1, stderr=-1)
             for dst, srcs in runs]
    answered = {}
    for p in procs:
        line = p.stdout.readline()
        assert line, p.stderr.read().decode(errors="replace")
        answered.update(json.loads(line))
    where: dict[str, list[str]] = {}
    for m in lab.members:
        for src in _carried(lab, m, port):
            where.setdefault(src, []).append(m)
    for p in procs:
        p.wait(20)
    return answered, where


def _expected(lab: Lab, owned: dict[str, set[int]]) -> dict[str, str]:
    out = {}
    for dst, srcs in [(SERVER4, _clients4())] + ([(SERVER6, _clients6())] if lab.ipv6 else []):
        for src in srcs:
            b = hashbuckets.flow_bucket(src, dst, BUCKETS)
            out[src] = next(m for m in lab.members if b in owned[m])
    return out


def _check_round(lab: Lab, port: int, owned: dict[str, set[int]], label: str) -> dict[str, int]:
    answered, where = _connect(lab, port)
    spread = {m: sum(1 for ms in where.values() if m in ms) for m in lab.members}
    print(f"\n{label}: {len(answered)} flows, {BUCKETS} buckets, carried per member: {spread}")
    # Both directions passed: every connection exchanged data.
    assert [s for s, ok in answered.items() if not ok] == []
    # Exactly one member carries each flow, and it is the bucket owner that
    # the model of the kernel's hash predicts.
    assert {s: ms for s, ms in where.items() if len(ms) != 1} == {}
    assert {s: ms[0] for s, ms in where.items()} == _expected(lab, owned)
    return spread


def test_routed_flows_ipv4_and_ipv6_follow_bucket_ownership(tmp_path):
    with Lab(members=3, prefix="fwbal", ipv6=True,
             balance={"mode": "active-active", "buckets": BUCKETS}) as lab:
        _setup(lab, _template(tmp_path, snat=False))
        lab.popen("server", [PY, "-c", SERVER, "40", str(PORT), str(PORT + 1), str(PORT + 2)])
        assert lab.wait_for(lambda: f":{PORT + 2} " in lab.run("server", ["ss", "-ltn"]).stdout, 10)

        # ARP for the vip from the client resolves to the multicast MAC.
        lab.run("client", [PY, "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                                     f".sendto(b'x', ('{LAN_VIP4}', 9))"])
        lab.wait_for(lambda: "lladdr" in lab.run("client", ["ip", "neigh", "show", LAN_VIP4]).stdout, 3)
        neigh = lab.run("client", ["ip", "neigh", "show", LAN_VIP4]).stdout
        assert hashbuckets.vip_mac(1) in neigh, neigh

        spread = _check_round(lab, PORT, _owned(lab), "routed, all members")
        assert all(n >= (CLIENTS + CLIENTS6) // 6 for n in spread.values()), spread

        # fw1 is lost: its buckets go to the survivors (what carpd's elections
        # will do); new flows follow at once, fw1 carries none.
        after = _owned(lab, alive=["fw2", "fw3"])
        _set_owned(lab, after)
        spread = _check_round(lab, PORT + 1, after, "routed, fw1 lost")
        assert spread["fw1"] == 0

        # Control: if every member owned every bucket, the count above would
        # see flows carried twice -- the measurement can tell.
        _set_owned(lab, {m: set(range(BUCKETS)) for m in lab.members})
        _, where = _connect(lab, PORT + 2)
        assert sum(1 for ms in where.values() if len(ms) > 1) > len(where) // 2


def test_snat_replies_find_the_member_of_the_original_flow(tmp_path):
    with Lab(members=3, prefix="fwbal", ipv6=False, snat=True,
             balance={"mode": "active-active", "buckets": BUCKETS}) as lab:
        _setup(lab, _template(tmp_path, snat=True))
        lab.popen("server", [PY, "-c", SERVER, "40", str(PORT)])
        assert lab.wait_for(lambda: f":{PORT} " in lab.run("server", ["ss", "-ltn"]).stdout, 10)
        # Replies come back addressed to the WAN vip, not to the client:
        # only the conntrack original tuple puts them in the flow's bucket.
        spread = _check_round(lab, PORT, _owned(lab), "snat, all members")
        assert all(n >= CLIENTS // 6 for n in spread.values()), spread
        # The reply tuples are NATed to the vip, each member from its own
        # slice of ports, so two members never choose the same tuple.
        slice_ = 64512 // 3
        for k, m in enumerate(lab.members):
            out = lab.run(m, ["conntrack", "-L", "-p", "tcp", "--dport", str(PORT)]).stdout
            ports = [int(p) for p in re.findall(rf"dst={re.escape(WAN_VIP4)} sport={PORT} dport=(\d+)", out)]
            assert len(ports) == spread[m]
            assert all(1024 + k * slice_ <= p < 1024 + (k + 1) * slice_ for p in ports), (m, ports)

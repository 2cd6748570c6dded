"""State sync keeps sessions alive across the loss of a member (real kernel,
strict ruleset, nf_conntrack_tcp_loose=0, real carpd and syncd).

One lab runs the scenarios in order (module fixtures; the numbers they
measure are printed with -s):
  1. 1000 TCP sessions + 200 UDP flows + one session opened ~200 ms before
     the failure; node loss of the master; every session keeps exchanging.
  2. failback: the lost member returns (carpd first, syncd later), stays
     demoted until its bulk resync is done, takes the vips back; no session lost.
  3. 5% loss on both members' sync links while 1000 new sessions open; node
     loss; every session survives.
  4. forged / replayed / truncated / wrong-version sync datagrams: dropped,
     counted, conntrack unchanged.
  5. control: the same node loss without syncd kills the sessions.
"""
from __future__ import annotations

import json
import time

import pytest

from tests.labkit import Lab
from tests.lab.sync_helpers import (TIMING, Load, ct_count, in_sync, logs, start_member,
                                    start_server, syncd_status)

SETTLE = 0.3     # echoes this long after the failure count as "after"


def vhids(lab: Lab) -> list[int]:
    return [v["vhid"] for v in lab.vips]


def all_master(lab: Lab, member: str) -> bool:
    return all(lab.vip_state(member, v) == "MASTER" for v in vhids(lab))


def settled(lab: Lab, master: str) -> bool:
    others = [m for m in lab.members if m != master]
    return all_master(lab, master) and all(
        lab.vip_state(m, v) == "BACKUP" for m in others for v in vhids(lab))


def bring_up(lab: Lab, syncd: bool = True, fresh: bool = True) -> None:
    """Both members running, fw1 master, in sync; with fresh, the previous
    scenario's conntrack entries are flushed (a clean start for each)."""
    for m in lab.members:
        start_member(lab, m, syncd)
    assert lab.wait_for(lambda: settled(lab, "fw1"), 20), logs(lab)
    if fresh:
        if syncd:   # let transfers from the last role change finish first
            assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)
            time.sleep(1)
            assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)
        for m in lab.members:
            lab.run(m, ["conntrack", "-F"], check=False)
    if syncd:
        assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)


def lose_and_wait(lab: Lab, member: str, survivor: str) -> float:
    t = time.time()
    lab.node_loss(member)
    assert lab.wait_for(lambda: all_master(lab, survivor), 10), logs(lab, survivor)
    return t


def replicated(lab: Lab, at_least: int) -> bool:
    """fw1's changes are all acknowledged by fw2 and fw2 holds the entries."""
    st = syncd_status(lab, "fw1")
    peer = st.get("peers", {}).get("fw2", {})
    return peer.get("state") == "up" and peer.get("unacked") == 0 and ct_count(lab, "fw2") >= at_least


@pytest.fixture(scope="module")
def lab():
    with Lab(members=2, prefix="h4sy", **TIMING) as lab:
        start_server(lab)
        yield lab


@pytest.fixture(scope="module")
def loss_run(lab):
    """Scenario 1 and 2; returns what they measured."""
    r = {}
    bring_up(lab)
    tcp = Load(lab, "tcp", 1000)
    udp = Load(lab, "udp", 200, udp=True)
    t0 = time.time()
    r["tcp_before"] = tcp.wait_alive_since(t0 + 2, 40)
    r["udp_before"] = udp.wait_alive_since(t0 + 2, 40)
    assert lab.wait_for(lambda: replicated(lab, 1200), 20), logs(lab)
    late = Load(lab, "late", 1)
    assert lab.wait_for(lambda: (late.status() or {}).get("opened_at", [None])[0] is not None, 10)
    opened = late.status()["opened_at"][0]      # connected: the handshake went through fw1
    while time.time() < opened + 0.2:
        time.sleep(0.005)
    tf = lose_and_wait(lab, "fw1", "fw2")
    r["late_age"] = tf - opened
    r["tcp_after_loss"] = tcp.wait_alive_since(tf + SETTLE, 30)
    if r["tcp_after_loss"] < 1000:
        print(tcp.diagnose(tf + SETTLE))
    r["udp_after_loss"] = udp.wait_alive_since(tf + SETTLE, 15)
    r["late_after_loss"] = late.wait_alive_since(tf + SETTLE, 15)
    r["recovery_s"] = time.time() - tf
    r["errors_after_loss"] = tcp.errors()[:5]

    # Failback: fw1 boots again; carpd first (it must hold back), syncd 4 s later.
    lab.node_return("fw1")
    t_back = time.time()
    lab.start_carpd("fw1")
    early = []
    deadline = time.time() + 4.0     # longer than fw1's master-down time (3 s)
    while time.time() < deadline:
        if lab.vip_state("fw1", 1) == "MASTER":
            early.append(time.time() - t_back)
        time.sleep(0.05)
    lab.start_syncd("fw1")
    ordered = []

    def fw1_master():
        if all_master(lab, "fw1"):
            ordered.append(bool(syncd_status(lab, "fw1").get("in_sync")))
            return True
        return False

    assert lab.wait_for(fw1_master, 30), logs(lab)
    r["master_before_syncd"] = early
    r["in_sync_when_master"] = ordered[0]
    r["failback_s"] = time.time() - t_back
    tb = time.time()
    r["tcp_after_failback"] = tcp.wait_alive_since(tb + SETTLE, 30)
    if r["tcp_after_failback"] < 1000:
        print(tcp.diagnose(tb + SETTLE))
    r["udp_after_failback"] = udp.wait_alive_since(tb + SETTLE, 15)
    r["fw1_peer"] = syncd_status(lab, "fw1")["peers"]["fw2"]
    print("\nsync failover run:", json.dumps({k: v for k, v in r.items() if k != "fw1_peer"}))
    for load in (tcp, udp, late):
        load.stop()
    return r


def test_1000_tcp_sessions_survive_node_loss(loss_run):
    assert loss_run["tcp_before"] == 1000
    assert loss_run["tcp_after_loss"] == 1000, loss_run


def test_udp_flows_survive_node_loss(loss_run):
    assert loss_run["udp_before"] == 200
    assert loss_run["udp_after_loss"] == 200, loss_run


def test_session_opened_200ms_before_failure_survives(loss_run):
    assert loss_run["late_age"] < 0.5, loss_run
    assert loss_run["late_after_loss"] == 1, loss_run


def test_failback_waits_for_resync_and_keeps_sessions(loss_run):
    assert loss_run["master_before_syncd"] == [], "carpd claimed the vips before syncd ran"
    assert loss_run["in_sync_when_master"] is True
    assert loss_run["fw1_peer"]["bulk_received"] >= 1
    assert loss_run["tcp_after_failback"] == 1000, loss_run
    assert loss_run["udp_after_failback"] == 200, loss_run


def sync_loss(lab: Lab, member: str, percent: int | None) -> str:
    """Random loss of `percent` of the datagrams leaving member's sync0:
    tc netem where the kernel has it, else an nftables numgen rule (this
    test kernel is built without CONFIG_NET_SCH_NETEM)."""
    if percent is None:
        lab.run(member, ["tc", "qdisc", "del", "dev", "sync0", "root"], check=False)
        lab.run(member, ["nft", "delete", "table", "inet", "h4loss"], check=False)
        return ""
    cp = lab.run(member, ["tc", "qdisc", "replace", "dev", "sync0", "root", "netem",
                          "loss", f"{percent}%"], check=False)
    if cp.returncode == 0:
        return "netem"
    lab.run(member, ["nft", "-f", "-"], input=f"""table inet h4loss {{
  chain out {{ type filter hook output priority 0; policy accept;
    oifname "sync0" numgen random mod 100 < {percent} counter drop
  }}
}}
""")
    return "nft numgen"


def test_sessions_survive_with_5pct_loss_on_sync_link(lab, loss_run):
    bring_up(lab)
    how = {m: sync_loss(lab, m, 5) for m in lab.members}
    try:
        before = syncd_status(lab, "fw1")["peers"]["fw2"]["msgs_resent"]
        tcp = Load(lab, "netem", 1000)
        t0 = time.time()
        assert tcp.wait_alive_since(t0 + 2, 40) == 1000, tcp.diagnose(t0 + 2) + logs(lab)
        assert lab.wait_for(lambda: replicated(lab, 1000), 30), logs(lab)
        resent = syncd_status(lab, "fw1")["peers"]["fw2"]["msgs_resent"] - before
        tf = lose_and_wait(lab, "fw1", "fw2")
        alive = tcp.wait_alive_since(tf + SETTLE, 30)
        print(f"\n5% sync loss ({how}): {alive}/1000 alive after node loss, {resent} messages resent")
        assert resent > 0, "netem dropped nothing?"
        assert alive == 1000, tcp.diagnose(tf + SETTLE)
        tcp.stop()
    finally:
        for m in lab.members:
            sync_loss(lab, m, None)
    lab.node_return("fw1")
    start_member(lab, "fw1")


def test_switchover_and_back_without_restart_keeps_sessions(lab, loss_run):
    """fw1 hands over (maintenance) and takes the vips back without any
    restart: its own entries went stale while fw2 carried the flows, so it
    must have refreshed them from fw2 (bulk on losing the master role)."""
    bring_up(lab)
    tcp = Load(lab, "switch", 500)
    t0 = time.time()
    assert tcp.wait_alive_since(t0 + 2, 40) == 500
    assert lab.wait_for(lambda: replicated(lab, 500), 20), logs(lab)
    resyncs = syncd_status(lab, "fw1")["counters"]["role_resyncs"]
    assert lab.control("fw1", {"cmd": "maintenance", "on": True})["ok"]
    assert lab.wait_for(lambda: all_master(lab, "fw2"), 15), logs(lab)
    t1 = time.time()
    away = tcp.wait_alive_since(t1 + SETTLE, 30)
    assert lab.wait_for(lambda: syncd_status(lab, "fw1")["counters"]["role_resyncs"] > resyncs, 10)
    time.sleep(3)       # the flows move on through fw2 (sequence numbers advance)
    assert lab.control("fw1", {"cmd": "maintenance", "on": False})["ok"]
    assert lab.wait_for(lambda: all_master(lab, "fw1"), 15), logs(lab)
    t2 = time.time()
    back = tcp.wait_alive_since(t2 + SETTLE, 30)
    print(f"\nswitchover: {away}/500 alive on fw2, {back}/500 alive back on fw1")
    tcp.stop()
    assert away == 500, tcp.diagnose(t1 + SETTLE)
    assert back == 500, tcp.diagnose(t2 + SETTLE)


def test_fwctl_sync_and_conntrack(lab, loss_run):
    bring_up(lab)
    tcp = Load(lab, "fwctl", 20)
    t0 = time.time()
    assert tcp.wait_alive_since(t0 + 1, 20) == 20
    assert lab.wait_for(lambda: replicated(lab, 20), 10)
    st = lab.fwctl("fw1", "sync")
    peer = st["peers"]["fw2"]
    assert st["in_sync"] is True and peer["state"] == "up" and peer["entries_sent"] >= 20
    for key in ("last_seen", "msgs_sent", "msgs_received", "entries_received", "msgs_acked",
                "msgs_resent", "msgs_lost", "replay", "auth", "lag", "table_size", "unacked"):
        assert key in peer, key
    assert isinstance(st["local_entries"], int) and st["local_entries"] >= 20
    human = lab.fwctl_raw("fw1", "sync")
    assert human.returncode == 0 and "fw2" in human.stdout and "up" in human.stdout
    cnt = lab.fwctl("fw2", "conntrack", "count", "--proto", "tcp", "--dport", "5001")
    assert cnt["count"] >= 20 and "entries" not in cnt
    show = lab.fwctl("fw2", "conntrack", "show", "--dport", "5001", "--state", "ESTABLISHED")
    assert show["count"] >= 20 and show["entries"][0]["tcp"]["state"] == "ESTABLISHED"
    human = lab.fwctl_raw("fw2", "conntrack", "show", "--dport", "5001", "--state", "established",
                          "--limit", "3")
    assert human.returncode == 0 and human.stdout.count("ESTABLISHED") == 3
    assert f"{show['count']} of " in human.stdout
    tcp.stop()
    lab.stop_daemon("fw2", "syncd")
    assert lab.fwctl_raw("fw2", "sync").returncode == 3


SNIFF_AND_INJECT = r"""
import json, socket, struct, sys, time
sys.path.insert(0, REPO)
from syncd.core import keys, wire
from syncd.core.entry import Entry, OP_UPSERT
# ETH_P_ALL: outgoing frames reach only "all protocols" taps.
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("sync0", 0)); s.settimeout(10)
open(MARK + ".ready", "w").write("ready")
end = time.time() + 10
captured = None
while time.time() < end and captured is None:
    f = s.recv(65535)
    if f[12:14] != b"\x08\x00":
        continue
    ip = f[14:]; ihl = (ip[0] & 15) * 4
    if ip[9] != 17 or socket.inet_ntoa(ip[16:20]) != "203.0.113.2":
        continue
    udp = ip[ihl:]
    payload = udp[8:]
    if struct.unpack("!H", udp[2:4])[0] == 3780 and len(payload) > 40 and payload[3] == wire.DATA:
        captured = payload
assert captured, "no DATA message seen"
open(MARK, "w").write("captured")
time.sleep(1.5)   # the test snapshots fw2 now
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out.bind(("203.0.113.1", 0))
dst = ("203.0.113.2", 3780)
fake = Entry(4, 6, 0, "192.0.2.77", "198.51.100.77", 4242, 80, "198.51.100.77", "192.0.2.77", 80, 4242,
             status=14, timeout=600, tcp_state=3)
wrong_key = keys.sync_key(b"not-the-secret", "lab")
m = wire.Message(wire.DATA, 0, 1, 2**32 - 1, 2**60, 1, 1, 1)
sent = {
  "replayed": [captured],
  "forged_mac": [captured[:-33] + bytes([captured[-33] ^ 0xFF]) + captured[-32:],
                 wire.encode(wrong_key, m, wire.encode_record(OP_UPSERT, fake))],
  "truncated": [captured[:20], captured[:-5]],
  "wrong_version": [captured[:2] + b"\x09" + captured[3:]],
}
for kind, datagrams in sent.items():
    for d in datagrams:
        out.sendto(d, dst)
print(json.dumps({k: len(v) for k, v in sent.items()}))
"""


def forwarded_flows(lab: Lab, member: str) -> set[str]:
    """member's conntrack entries of client/server flows (not its own sync
    or CARP traffic), without the ticking timeout."""
    out = lab.run(member, ["conntrack", "-L"], check=False).stdout
    return {" ".join(w for i, w in enumerate(line.split()) if i != 2)
            for line in out.splitlines() if "203.0.113." not in line and "src=" in line}


def test_forged_replayed_truncated_wrong_version_dropped(lab, loss_run):
    bring_up(lab)
    import sys
    from tests.labkit import REPO
    mark = lab.dir / "inject.mark"
    sniffer = lab.popen("fw1", [sys.executable, "-c",
                                f"REPO={str(REPO)!r}\nMARK={str(mark)!r}\n" + SNIFF_AND_INJECT],
                        stdout=open(lab.dir / "inject.out", "w"), stderr=open(lab.dir / "inject.err", "w"))
    # Established sessions (a stable table), then a refresh sends them as
    # DATA messages for the sniffer to capture.
    load = Load(lab, "inject", 5, duration=30)
    t0 = time.time()
    assert load.wait_alive_since(t0 + 0.5, 20) == 5
    assert lab.wait_for(lambda: replicated(lab, 5), 10)
    ready = lab.dir / "inject.mark.ready"
    assert lab.wait_for(ready.exists, 15), (lab.dir / "inject.err").read_text()
    lab.control("fw1", {"cmd": "resync"}, daemon="syncd")
    assert lab.wait_for(mark.exists, 10), (lab.dir / "inject.err").read_text()
    time.sleep(0.4)
    before = syncd_status(lab, "fw2")
    table_before = forwarded_flows(lab, "fw2")
    assert sniffer.wait(15) == 0, (lab.dir / "inject.err").read_text()
    time.sleep(0.5)
    after = syncd_status(lab, "fw2")
    drops = {k: after["drops"].get(k, 0) - before["drops"].get(k, 0) for k in after["drops"]}
    print("\ninjected:", (lab.dir / "inject.out").read_text().strip(), "drops:", drops)
    assert drops.get("replay", 0) >= 1
    assert drops.get("truncated", 0) >= 1
    assert drops.get("bad_auth", 0) >= 3          # a cut-off tail fails the MAC
    assert drops.get("bad_version", 0) == 1
    assert after["peers"]["fw1"]["auth"] - before["peers"]["fw1"]["auth"] >= 2
    assert after["kernel"] == before["kernel"]
    table_after = forwarded_flows(lab, "fw2")
    load.stop()
    assert not [f for f in table_after if "192.0.2.77" in f]
    assert len(table_before) >= 5 and table_after == table_before


def test_control_without_syncd_sessions_die(lab, loss_run):
    """Proves the survival tests can fail: the same loss, no state sync."""
    bring_up(lab)
    for m in lab.members:
        lab.stop_daemon(m, "syncd")
    lab.run("fw2", ["conntrack", "-F"], check=False)
    tcp = Load(lab, "control", 1000)
    t0 = time.time()
    assert tcp.wait_alive_since(t0 + 2, 40) == 1000
    tf = lose_and_wait(lab, "fw1", "fw2")
    time.sleep(6)     # several TCP retransmissions: time enough to recover if it could
    alive = tcp.alive_since(tf + SETTLE)
    print(f"\ncontrol without syncd: {alive}/1000 alive after node loss")
    tcp.stop()
    assert alive == 0

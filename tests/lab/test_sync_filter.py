"""The default [sync] filter in the lab (real kernel, shipped ruleset, real
carpd and syncd): only assured entries are replicated, the kernel does not
even report the rest, a no-sync rule keeps its flows off the sync link, and
a session replicated this way survives node loss at every point of its life
that matters: just established (nothing sent yet), mid-stream, closing (one
side has sent its FIN).
"""
from __future__ import annotations

import socket
import time

import pytest

from fwcluster import nft
from fwcluster.core.config import SyncFilter
from syncd.core.protocol import Timing
from tests.labkit import CLIENT4, SERVER4, Lab
from tests.lab.sync_helpers import TIMING, in_sync, logs, start_member, syncd_status

# A replicated change is on the peer within one resend of a lost datagram.
REPLICATED = Timing().rto + 0.2
# Past a UDP flow's first reply, conntrack marks it assured once it is
# still active 2 s after its first packet (nf_conntrack_proto_udp.c).
UDP_STREAM = 2.0
PORT = 5110          # the test's own TCP listener on the server
FLOOD_PORT = 5111    # the server drops SYNs to it: entries stay SYN_SENT
SCAN_PORTS = range(6000, 6200)  # nobody answers: unreplied UDP entries
NOSYNC_PORT, SYNC_PORT_UDP = 5120, 5121   # UDP echo streams, one under a no-sync rule
PUSH_PORT, PUSH_EVERY = 5122, 0.1         # a server push stream, a datagram every 0.1 s
# Past this conntrack drops the old master's own copy of a UDP flow it
# no longer sees packets of (nf_conntrack_udp_timeout, answered, not a
# stream yet): watch beyond it.
UDP_UNREPLIED_TIMEOUT = 30.0
FLOOD = 200


def entries(lab: Lab, member: str, *args: str) -> list[str]:
    out = lab.run(member, ["conntrack", "-L", *args], check=False).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def tcp_state(lab: Lab, member: str, sport: int) -> str | None:
    for ln in entries(lab, member, "-p", "tcp", "--sport", str(sport)):
        return ln.split()[3]
    return None


def wait_state(lab: Lab, member: str, sport: int, states: tuple) -> bool:
    return lab.wait_for(lambda: tcp_state(lab, member, sport) in states, REPLICATED, 0.01)


class Session:
    """One TCP session client -> server through the master, in this process."""

    def __init__(self, lab: Lab, listener: socket.socket, sport: int):
        self.sport = sport
        self.client = lab.socket("client")
        self.client.settimeout(5)
        self.client.bind((CLIENT4, sport))
        self.client.connect((SERVER4, PORT))
        self.server, _ = listener.accept()
        self.server.settimeout(5)

    def echo(self, data: bytes) -> bool:
        """data client -> server and back."""
        try:
            self.client.sendall(data)
            got = b""
            while len(got) < len(data):
                got += self.server.recv(len(data) - len(got))
            self.server.sendall(got)
            back = b""
            while len(back) < len(data):
                back += self.client.recv(len(data) - len(back))
            return back == data
        except OSError:
            return False

    def close(self) -> None:
        for s in (self.client, self.server):
            s.close()


@pytest.fixture(scope="module")
def lab():
    with Lab(members=2, prefix="h4fl", **TIMING) as lab:
        for m in lab.members:
            start_member(lab, m)
        assert lab.wait_for(lambda: all(lab.vip_state("fw1", v["vhid"]) == "MASTER"
                                        for v in lab.vips), 20), logs(lab)
        assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)
        yield lab


@pytest.fixture(scope="module")
def listener(lab):
    s = lab.socket("server")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((SERVER4, PORT))
    s.listen(16)
    s.settimeout(5)
    yield s
    s.close()


def test_flood_and_scan_never_reach_the_peer_nor_syncd(lab):
    """SYNs that are never answered and UDP probes nobody answers: the kernel
    sends fw1's syncd no event for them (ct event masks) and fw2 gets none."""
    lab.run("server", ["nft", "-f", "-"], input=f"""table inet h4flood {{
  chain in {{ type filter hook input priority 0; policy accept; tcp dport {FLOOD_PORT} drop; }}
}}""")
    events = syncd_status(lab, "fw1")["counters"]["events"]
    socks = []
    try:
        socks = syn_flood(lab, FLOOD, 30000)
        probe = lab.socket("client", type=socket.SOCK_DGRAM)
        for port in SCAN_PORTS:
            probe.sendto(b"?", (SERVER4, port))
        probe.close()
        assert lab.wait_for(lambda: len(entries(lab, "fw1", "-p", "tcp", "--dport", str(FLOOD_PORT)))
                            >= FLOOD, 5), "the flood did not pass fw1"
        time.sleep(REPLICATED)
        events = syncd_status(lab, "fw1")["counters"]["events"] - events
        # A full refresh (as after an event overrun) reads the table: it
        # applies the same filter, or it would send the flood after all.
        assert lab.control("fw1", {"cmd": "resync"}, daemon="syncd").get("ok"), logs(lab, "fw1")
        time.sleep(REPLICATED)
        assert len(entries(lab, "fw1", "-p", "udp", "--src", CLIENT4)) >= len(SCAN_PORTS)
        assert entries(lab, "fw2", "-p", "tcp", "--dport", str(FLOOD_PORT)) == []
        assert entries(lab, "fw2", "-p", "udp", "--src", CLIENT4) == []
        # The kernel reported none of them (a few events of other flows, such
        # as the daemons' own, may come meanwhile).
        assert events < 20
    finally:
        for s in socks:
            s.close()
        lab.run("server", ["nft", "delete", "table", "inet", "h4flood"])


def test_a_nosync_rule_keeps_an_assured_flow_on_the_member(lab):
    """Two UDP echo streams, each past the point conntrack marks it assured;
    the one under a rule ending in sync.nosync stays on fw1 only."""
    nosync = nft.sync_events(SyncFilter())["nosync"]
    lab.run("fw1", ["nft", "insert", "rule", "inet", "fwcluster", "forward",
                    f"udp dport {NOSYNC_PORT} {nosync} accept"])
    echo = {p: lab.socket("server", type=socket.SOCK_DGRAM) for p in (NOSYNC_PORT, SYNC_PORT_UDP)}
    client = {p: lab.socket("client", type=socket.SOCK_DGRAM) for p in echo}
    try:
        for p in echo:
            echo[p].bind((SERVER4, p))
            echo[p].settimeout(1)
            client[p].settimeout(1)
        deadline = time.monotonic() + UDP_STREAM + 1.0
        while time.monotonic() < deadline:
            for p in echo:
                client[p].sendto(b"x", (SERVER4, p))
                data, peer = echo[p].recvfrom(16)
                echo[p].sendto(data, peer)
                client[p].recvfrom(16)
            time.sleep(0.1)
        # The routine refresh of non-TCP flows reads the table: the mark
        # keeps the flow out of it too.
        assert lab.control("fw1", {"cmd": "refresh"}, daemon="syncd").get("ok"), logs(lab, "fw1")
        time.sleep(REPLICATED)

        def assured(member, port):
            return [ln for ln in entries(lab, member, "-p", "udp", "--dport", str(port)) if "ASSURED" in ln]
        assert assured("fw1", NOSYNC_PORT) and assured("fw1", SYNC_PORT_UDP)
        assert assured("fw2", SYNC_PORT_UDP), "an assured UDP stream is replicated"
        assert entries(lab, "fw2", "-p", "udp", "--dport", str(NOSYNC_PORT)) == []
    finally:
        for s in list(echo.values()) + list(client.values()):
            s.close()


def syn_flood(lab: Lab, count: int, first_port: int) -> list[socket.socket]:
    """count connection attempts client -> server:FLOOD_PORT (which the
    server drops): SYN_SENT entries on the master."""
    socks = []
    for i in range(count):
        s = lab.socket("client")
        s.setblocking(False)
        s.bind((CLIENT4, first_port + i))
        try:
            s.connect((SERVER4, FLOOD_PORT))
        except BlockingIOError:
            pass
        socks.append(s)
    return socks


def test_flows_per_source_bounds_what_one_host_puts_in_the_table(lab):
    """The template's flows_per_source (off by default): past it, a source's
    new flows are dropped before they are accepted (no entry)."""
    bound = 20
    lab.run("fw1", ["conntrack", "-D", "-p", "tcp", "--dport", str(FLOOD_PORT)], check=False)
    text = lab.template_path.read_text()
    lab.template_path.write_text(text.replace("set flows_per_source = 0", f"set flows_per_source = {bound}"))
    lab.apply_rules(["fw1"])
    lab.run("server", ["nft", "-f", "-"], input=f"""table inet h4flood {{
  chain in {{ type filter hook input priority 0; policy accept; tcp dport {FLOOD_PORT} drop; }}
}}""")
    socks = []
    try:
        socks = syn_flood(lab, 2 * bound, 31000)
        time.sleep(0.5)
        held = len(entries(lab, "fw1", "-p", "tcp", "--dport", str(FLOOD_PORT)))
        assert held == bound, held
    finally:
        for s in socks:
            s.close()
        lab.run("server", ["nft", "delete", "table", "inet", "h4flood"])
        lab.template_path.write_text(text)
        lab.apply_rules(["fw1"])
        lab.run("fw1", ["conntrack", "-D", "-p", "tcp", "--dport", str(FLOOD_PORT)], check=False)


def test_the_end_of_a_replicated_session_reaches_the_peer(lab, listener):
    """A replicated entry's DESTROY (the kernel's mask lets it through, the
    filter keeps it: its status says assured) removes the peer's copy."""
    master, peer = "fw1", "fw2"
    s = Session(lab, listener, 40004)
    try:
        assert s.echo(b"hello")
        assert wait_state(lab, peer, 40004, ("ESTABLISHED",))
        lab.run(master, ["conntrack", "-D", "-p", "tcp", "--sport", "40004"])
        assert lab.wait_for(lambda: tcp_state(lab, peer, 40004) is None, REPLICATED, 0.01), \
            entries(lab, peer, "-p", "tcp")
    finally:
        s.close()


class PushStream:
    """One UDP flow client -> server that only the server feeds: the client
    subscribes with one datagram, the server then pushes every PUSH_EVERY s
    (a stream, a game server). Driven in this process, each run() bounded
    by its `seconds`."""

    def __init__(self, lab: Lab):
        self.server = lab.socket("server", type=socket.SOCK_DGRAM)
        self.server.bind((SERVER4, PUSH_PORT))
        self.client = lab.socket("client", type=socket.SOCK_DGRAM)
        self.client.connect((SERVER4, PUSH_PORT))
        self.sport = self.client.getsockname()[1]
        self.client.send(b"subscribe")
        self.server.settimeout(2)
        _, self.to = self.server.recvfrom(64)
        self.client.setblocking(False)
        self.received: list[float] = []

    def run(self, seconds: float) -> None:
        """Push for `seconds`, noting when each datagram reaches the client."""
        until, next_push = time.monotonic() + seconds, 0.0
        while (now := time.monotonic()) < until:
            if now >= next_push:
                self.server.sendto(b"push", self.to)
                next_push = now + PUSH_EVERY
            time.sleep(0.005)
            while True:
                try:
                    self.client.recv(64)
                except BlockingIOError:
                    break
                self.received.append(time.monotonic())

    def longest_gap(self, since: float) -> float:
        times = [since] + [t for t in self.received if t > since] + [time.monotonic()]
        return max(b - a for a, b in zip(times, times[1:]))

    def close(self) -> None:
        self.server.close()
        self.client.close()


def test_a_young_server_push_flow_survives_maintenance_and_the_way_back(lab):
    """A UDP flow answered for less than 2 s is not replicated (not
    assured yet). fw1 going into maintenance hands it over (syncd/handover.py):
    the server's pushes go on through fw2 past the old copy's timeout, and
    through fw1 again after maintenance ends."""
    stream = PushStream(lab)
    try:
        stream.run(0.4)
        young = entries(lab, "fw1", "-p", "udp", "--sport", str(stream.sport))
        assert young and "ASSURED" not in young[0], young
        assert entries(lab, "fw2", "-p", "udp", "--sport", str(stream.sport)) == []
        sent = syncd_status(lab, "fw1")["counters"]["handover_sent"]
        # The move is at once (fw1 announces its demotion): one push
        # interval, one replicated record (resent once if lost), and the
        # margin of a loaded machine.
        bound = PUSH_EVERY + Timing().rto + 0.2
        t_move = time.monotonic()
        cp = lab.fwctl_raw("fw1", "maintenance", "on")
        assert cp.returncode == 0, cp.stderr
        stream.run(UDP_UNREPLIED_TIMEOUT + 3)
        assert all(lab.vip_state("fw2", v["vhid"]) == "MASTER" for v in lab.vips), logs(lab)
        gap = stream.longest_gap(t_move)
        assert gap < bound, (f"the pushes stopped {gap:.2f} s after the move", logs(lab))
        assert syncd_status(lab, "fw1")["counters"]["handover_sent"] >= sent + 1, logs(lab, "fw1")
        t_back = time.monotonic()
        cp = lab.fwctl_raw("fw1", "maintenance", "off")
        assert cp.returncode == 0, cp.stderr
        stream.run(3.0)
        assert all(lab.vip_state("fw1", v["vhid"]) == "MASTER" for v in lab.vips), logs(lab)
        gap_back = stream.longest_gap(t_back)
        print(f"\nyoung push flow: longest gap {gap:.2f} s into maintenance "
              f"(watched {UDP_UNREPLIED_TIMEOUT + 3:.0f} s), {gap_back:.2f} s back")
        assert gap_back < bound, (f"the pushes stopped {gap_back:.2f} s after the way back", logs(lab))
    finally:
        stream.close()
        if lab.status("fw1").get("maintenance"):
            lab.fwctl_raw("fw1", "maintenance", "off")


def test_sessions_survive_node_loss_just_established_mid_stream_and_closing(lab, listener):
    mid = Session(lab, listener, 40001)
    for i in range(50):
        assert mid.echo(b"mid-%03d" % i)
    closing = Session(lab, listener, 40002)
    assert closing.echo(b"before the end")
    closing.client.shutdown(socket.SHUT_WR)           # the client's FIN
    assert closing.server.recv(16) == b""
    assert wait_state(lab, "fw2", 40002, ("FIN_WAIT", "CLOSE_WAIT")), entries(lab, "fw2", "-p", "tcp")
    assert wait_state(lab, "fw2", 40001, ("ESTABLISHED",))
    fresh = Session(lab, listener, 40003)               # nothing sent yet
    t = time.monotonic()
    assert wait_state(lab, "fw2", 40003, ("ESTABLISHED",)), entries(lab, "fw2", "-p", "tcp")
    lag = time.monotonic() - t
    lab.node_loss("fw1")
    assert lab.wait_for(lambda: all(lab.vip_state("fw2", v["vhid"]) == "MASTER" for v in lab.vips),
                        10), logs(lab, "fw2")
    print(f"\njust established: replicated within {lag * 1000:.1f} ms of connect()")
    assert fresh.echo(b"first words after the loss")
    assert mid.echo(b"mid-after")
    closing.server.sendall(b"last words")               # the other half, then its FIN
    closing.server.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = closing.client.recv(64)
        if not chunk:
            break
        got += chunk
    assert got == b"last words"
    for s in (fresh, mid, closing):
        s.close()


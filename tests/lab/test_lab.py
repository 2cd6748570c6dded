"""The lab itself: topology, strict stateful forwarding, teardown."""
from __future__ import annotations

import difflib
import os
import socket
import subprocess
import threading

import pytest

from fwcluster import configfile
from fwcluster.core import config
from tests.labkit import (CLIENT4, CLIENT6, LAN_VIP4, LAN_VIP6, SERVER4, SERVER6, WAN_VIP4,
                          WAN_VIP6, Lab, LabError)
from tests.labkit import ruleset

PORT = 8080


def add_vips_by_hand(lab: Lab, member: str) -> None:
    """What carpd does on becoming master, done with ip(8)."""
    for addr, dev in ((f"{LAN_VIP4}/24", "lan0"), (f"{WAN_VIP4}/24", "wan0"),
                      (f"{LAN_VIP6}/64", "lan0"), (f"{WAN_VIP6}/64", "wan0")):
        lab.run(member, ["ip", "addr", "add", addr, "dev", dev, "nodad"])


class EchoServer:
    peers: list
    """A TCP echo server on a socket inside a namespace, served by a thread."""

    def __init__(self, lab: Lab, role: str, family=socket.AF_INET, port=PORT):
        self.sock = lab.socket(role, family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.peers = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            self.peers.append(peer[0])
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        conn.settimeout(10)
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def connect(lab: Lab, role: str, host: str, family=socket.AF_INET, timeout=5.0) -> socket.socket:
    s = lab.socket(role, family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, PORT))
    return s


def roundtrip(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    return s.recv(len(data))


@pytest.mark.parametrize("family,client,server", [
    (socket.AF_INET, CLIENT4, SERVER4), (socket.AF_INET6, CLIENT6, SERVER6)])
def test_client_reaches_server_through_the_member_holding_the_vips(lab, family, client, server):
    add_vips_by_hand(lab, "fw1")
    echo = EchoServer(lab, "server", family)
    try:
        with connect(lab, "client", server, family) as s:
            assert roundtrip(s, b"hello") == b"hello"
            assert s.getsockname()[0] == client
            # The flow went through fw1: its conntrack table knows it.
            ct = lab.run("fw1", ["conntrack", "-L", "-p", "tcp", "--dport", str(PORT)]).stdout
            assert server in ct and "ESTABLISHED" in ct
            ct2 = lab.run("fw2", ["conntrack", "-L", "-p", "tcp", "--dport", str(PORT)]).stdout
            assert server not in ct2
    finally:
        echo.close()
    assert echo.accepted == 1


def test_ruleset_drops_a_new_connection_from_wan_to_lan(lab):
    add_vips_by_hand(lab, "fw1")
    # The server needs a route to the LAN to even try; give it one via the VIP.
    lab.run("server", ["ip", "route", "replace", "192.0.2.0/24", "via", WAN_VIP4])
    echo = EchoServer(lab, "client")
    try:
        # Listening: a connection from inside the client's own namespace works.
        with connect(lab, "client", CLIENT4) as s:
            assert roundtrip(s, b"x") == b"x"
        with pytest.raises((socket.timeout, OSError)):
            connect(lab, "server", CLIENT4, timeout=1.0).close()
    finally:
        echo.close()
    assert echo.accepted == 1
    # The drop was the forward policy of fw1 (no conntrack entry was confirmed).
    ct = lab.run("fw1", ["conntrack", "-L", "-p", "tcp", "--dport", str(PORT)]).stdout
    assert CLIENT4 not in ct


def test_a_session_without_its_conntrack_entry_dies(lab):
    """tcp_loose=0: mid-stream packets of an unknown flow are invalid and dropped."""
    add_vips_by_hand(lab, "fw1")
    echo = EchoServer(lab, "server")
    try:
        with connect(lab, "client", SERVER4) as s:
            assert roundtrip(s, b"before") == b"before"
            lab.run("fw1", ["conntrack", "-D", "-p", "tcp", "--dport", str(PORT)])
            with pytest.raises(socket.timeout):
                roundtrip(s, b"after")
    finally:
        echo.close()


def test_snat_lab_hides_the_lan_behind_the_wan_vip(lab_factory):
    lab = lab_factory(members=2, snat=True)
    add_vips_by_hand(lab, "fw1")
    # The server has no route back to the LAN: it answers the WAN VIP.
    routes = lab.run("server", ["ip", "route", "show", "default"]).stdout
    assert routes.strip() == ""
    for family, server, vip in ((socket.AF_INET, SERVER4, WAN_VIP4), (socket.AF_INET6, SERVER6, WAN_VIP6)):
        echo = EchoServer(lab, "server", family)
        try:
            with connect(lab, "client", server, family) as s:
                assert roundtrip(s, b"nat") == b"nat"
        finally:
            echo.close()
        assert echo.peers == [vip]


def test_members_forward_with_strict_settings(lab_factory):
    lab = lab_factory(members=3, ipv6=False)
    for m in lab.members:
        assert lab.sysctl(m, "net.netfilter.nf_conntrack_tcp_loose") == "0"
        assert lab.sysctl(m, "net.ipv4.ip_forward") == "1"
        rules = lab.run(m, ["nft", "list", "chain", "inet", "fwcluster", "forward"]).stdout
        assert "policy drop" in rules and "ct state invalid drop" in rules
    # Every member is on every segment: fw3 reaches fw1 on lan, wan and sync.
    for seg in ("lan", "wan", "sync"):
        assert lab.ping("fw3", lab.addr4("fw1", seg))
    # No VIP is up yet, so the client has no gateway.
    assert not lab.ping("client", LAN_VIP4, timeout=0.3)


def test_members_run_the_shipped_ruleset(lab_factory):
    """The lab's template is the shipped one with only its site-policy lines
    set, and every member runs exactly what it renders (fwctl rules diff)."""
    lab = lab_factory(members=2, snat=True)
    shipped = ruleset.TEMPLATE.read_text().splitlines()
    site = lab.template_path.read_text().splitlines()
    changed = [line for line in difflib.ndiff(shipped, site) if line[:2] in ("- ", "+ ")]
    assert changed == ["- {%- set snat_to_vip = [] %}", '+ {%- set snat_to_vip = ["wan0"] %}']
    assert configfile.load(lab.config_path, "fw1").firewall.template == str(lab.template_path)
    for m in lab.members:
        res = lab.fwctl(m, "rules", "diff")
        assert res["ok"] and res["changed"] is False, res
        nat = lab.run(m, ["nft", "list", "chain", "inet", "fwcluster", "postrouting"]).stdout
        assert f"snat ip to {WAN_VIP4}" in nat and f"snat ip6 to {WAN_VIP6}" in nat


def test_config_is_valid_and_secret_is_private(lab_factory):
    lab = lab_factory(members=4, advbase=0)
    cfg = configfile.load(lab.config_path, "fw4")
    assert [m.name for m in cfg.members] == ["fw1", "fw2", "fw3", "fw4"]
    assert all(m.advskew > 0 for m in cfg.members)
    assert [v.vhid for v in cfg.vips] == [1, 2, 3, 4]
    assert all(v.advbase == 0 for v in cfg.vips)
    assert os.stat(lab.secret_path).st_mode & 0o777 == 0o600
    assert configfile.secret(cfg) == lab.secret.encode()
    lab.write_config(advskews={"fw1": 50}, carp={"preempt": False})
    cfg = configfile.load(lab.config_path, "fw1")
    assert cfg.member("fw1").advskew == 50 and cfg.carp.preempt is False
    assert all(v.advbase == 0 for v in cfg.vips)  # kept from the constructor
    lab.write_config(advbase=1, advskews={})
    cfg = configfile.load(lab.config_path, "fw1")
    assert all(v.advbase == 1 for v in cfg.vips) and cfg.member("fw2").advskew == 100
    assert cfg.carp.preempt is False


def test_teardown_removes_every_namespace_even_when_the_body_raises():
    lab = Lab(members=2, prefix="fwt")
    with pytest.raises(RuntimeError, match="boom"):
        with lab:
            names = [lab.ns(r) for r in lab.roles]
            assert set(names) <= set(_netns_list())
            p = lab.popen("fw1", ["sleep", "60"])
            raise RuntimeError("boom")
    assert not set(names) & set(_netns_list())
    assert p.poll() is not None  # the tracked process was stopped
    assert not lab.dir.exists()


def test_popen_children_die_with_their_leader(lab):
    p = lab.popen("fw1", ["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE)
    child = int(p.stdout.readline())
    lab.node_loss("fw1")
    assert p.poll() is not None
    assert lab.wait_for(lambda: not os.path.exists(f"/proc/{child}"), 2)


def test_node_return_clears_vips_and_restores_links(lab):
    add_vips_by_hand(lab, "fw2")
    lab.node_loss("fw2")
    assert lab.has_addr("fw2", "lan0", LAN_VIP4)
    lab.node_return("fw2")
    assert not lab.has_addr("fw2", "lan0", LAN_VIP4)
    assert not lab.has_addr("fw2", "wan0", WAN_VIP6)
    assert lab.has_addr("fw2", "lan0", lab.addr4("fw2")) and lab.has_addr("fw2", "lan0", lab.addr6("fw2"))
    out = lab.run("fw2", ["ip", "-br", "link", "show", "lan0"]).stdout
    assert " UP " in out


def test_cut_blocks_frames_but_keeps_carrier_and_heal_restores(lab):
    peer = lab.addr4("fw1", "sync")
    lab.cut("fw2", "sync")
    assert not lab.ping("fw2", peer, timeout=0.3)
    assert "LOWER_UP" in lab.run("fw2", ["ip", "link", "show", "sync0"]).stdout
    lab.heal("fw2", "sync")
    assert lab.ping("fw2", peer)


def test_cut_without_carrier_is_a_pulled_cable(lab):
    lab.cut("fw2", "lan", carrier=False)
    assert lab.wait_for(lambda: "NO-CARRIER" in lab.run("fw2", ["ip", "link", "show", "lan0"]).stdout, 2)
    lab.heal("fw2", "lan")
    assert lab.wait_for(lambda: "LOWER_UP" in lab.run("fw2", ["ip", "link", "show", "lan0"]).stdout, 2)
    assert lab.ping("fw2", lab.addr4("fw1", "lan"))


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError):
        Lab(members=5)
    with pytest.raises(TypeError, match="advbse"):
        Lab(members=2, advbse=0)
    with Lab(members=2) as lab:
        with pytest.raises(KeyError):
            lab.ns("fw3")
        with pytest.raises(LabError, match="exited"):
            lab.run("fw1", ["false"])


def _netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_two_labs_at_once_in_one_process(lab_factory):
    a = lab_factory(members=2, ipv6=False)
    b = lab_factory(members=2, ipv6=False)
    assert a.ns("fw1") != b.ns("fw1")
    for lab in (a, b):
        lab.run("fw1", ["ip", "addr", "add", f"{LAN_VIP4}/24", "dev", "lan0"])
        assert lab.ping("client", LAN_VIP4)


def test_stale_namespaces_of_dead_labs_are_cleaned_up():
    from tests.labkit import cleanup_stale
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names no process
    name = f"fwt{dead.pid}-sw"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in cleanup_stale("fwt")
        assert name not in _netns_list()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_sigterm_to_a_lab_process_still_tears_the_lab_down():
    import signal
    import sys
    code = ("import time\nfrom tests.labkit import Lab\n"
            "lab = Lab(members=2, prefix='fwt').__enter__()\n"
            "print(lab.tag, flush=True)\ntime.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        tag = p.stdout.readline().strip()
        assert tag and any(n.startswith(tag + "-") for n in _netns_list())
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not any(n.startswith(tag + "-") for n in _netns_list())


def test_demo_shows_a_failover_and_cleans_up():
    """`make demo`: kept working by running it (needs carpd)."""
    import io
    from tests.labkit.demo import demo
    out = io.StringIO()
    assert demo(out=out, limit=40) == 0, out.getvalue()
    text = out.getvalue()
    assert "fw2 took over; client lost the gateway for" in text
    assert "fw1 preempted back" in text
    assert not any(n.startswith(f"fwdemo{os.getpid()}") for n in _netns_list())

"""DHCP in the namespace lab: Kea's HA on every member, with the
configuration fwcluster renders (docs/dhcp.md).

A client gets a lease; the member serving it is lost (links down, SIGKILL);
the client rebinds through the survivor, keeps its address, and renews
there; a second client gets a different address while one member is down;
after the member returns both clients keep their addresses and both
members' lease tables agree. A corrupt lease file does not stop a member;
a full one makes it refuse, visibly, and lose nothing. Load-balancing: both
serve, the survivor serves all. A new secret reaches Kea on both members.
DHCPv6 (pools6): the same through the loss and return of the primary.
"""
import errno
import os
import shutil
import subprocess
import time

import pytest

from fwcluster import configfile
from fwcluster.core import dhcp as core
from fwcluster.fwctl import dhcp as fwdhcp
from tests.lab import dhcp_helpers as dh
from tests.labkit import Lab
from tests.labkit.dhcp6client import Dhcp6Client
from tests.labkit.dhcpclient import DhcpClient

LEASE_TIME = 60
KEA_HTTP_TIMEOUT, PARTNER_DOWN, MARGIN = dh.KEA_HTTP_TIMEOUT, dh.PARTNER_DOWN, dh.MARGIN
SURVIVOR_BOUND, SYNC_BOUND = dh.SURVIVOR_BOUND, dh.SYNC_BOUND


def _lab(prefix: str) -> Lab:
    return Lab(members=2, prefix=prefix, ipv6=False,
               dhcp=[{"interface": "lan0", "pools": [dh.POOL], "lease_time": LEASE_TIME}],
               dhcp_ha={"partner_down": PARTNER_DOWN})


def _both(lab, state: str, family: int = 4) -> bool:
    return all(dh.ha_state(lab, m, family) == state for m in lab.members)


def _start_pair(lab, family: int = 4) -> None:
    """carpd on both members (fw1 the master), then Kea; back once both
    Kea servers of the family are in hot-standby."""
    for m in lab.members:
        lab.start_carpd(m)
    assert lab.wait_for(lambda: lab.masters(1) == ["fw1"], 5)
    for m in lab.members:
        dh.start_kea(lab, m)
    assert lab.wait_for(lambda: _both(lab, "hot-standby", family), SYNC_BOUND, 0.1), \
        {m: dh.ha_state(lab, m, family) for m in lab.members}


def _until(bound: float, attempt):
    """Call attempt() until it returns a lease or bound seconds pass;
    (lease or None, seconds from the start)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        lease = attempt()
        if lease is not None:
            return lease, time.monotonic() - t0
    return None, time.monotonic() - t0


def test_client_keeps_its_address_through_member_loss_and_return():
    dh.need_kea()
    with _lab("dhcpha") as lab:
        _start_pair(lab)

        # HA traffic is authenticated: the control agent refuses a request
        # without the password derived from the secret, or with another one.
        password = core.ha_password(lab.secret.encode(), "lab")
        assert dh.ha_post(lab, "fw2", "fw1") == 401
        assert dh.ha_post(lab, "fw2", "fw1", "lab:" + password[::-1]) == 401
        assert dh.ha_post(lab, "fw2", "fw1", "lab:" + password) == 200

        a = DhcpClient(lab, "02:00:00:00:0a:01")
        first = a.obtain()
        assert first is not None, "no lease from the cluster"
        assert first.server_id == lab.addr4("fw1"), "hot-standby: the primary (fw1) answers"
        assert first.router == "192.0.2.1" and first.dns == ("192.0.2.1",), "defaults: the LAN vip"
        a.configure(first)
        assert a.renew(first).ip == first.ip
        # Kea's lease update reached the standby before the client's ACK.
        assert dh.leases(lab, "fw2").get(first.ip) == "02:00:00:00:0a:01"
        # The partner's state as of fw1's last heartbeat (one a second).
        assert lab.wait_for(lambda: dh.status(lab, "fw1").get("partner_state") == "hot-standby",
                            2 * core.HEARTBEAT_MS / 1000 + MARGIN, 0.1)
        st = dh.status(lab, "fw1")
        assert (st["role"], st["state"], st["partner_role"], st["partner_state"]) == \
            ("primary", "hot-standby", "standby", "hot-standby")
        assert st["subnets"][0]["assigned"] == 1 and st["subnets"][0]["total"] == 50

        t_loss = lab.node_loss("fw1")
        # Renewal goes to the lost member's own address: unanswered.
        assert a.renew(first, timeout=0.5) is None
        rebound, _ = _until(SURVIVOR_BOUND, lambda: a.rebind(first, timeout=0.3))
        rebind_after = time.monotonic() - t_loss
        assert rebound is not None, f"no rebind through the survivor within {SURVIVOR_BOUND:.1f}s"
        assert rebound.ip == first.ip and rebound.server_id == lab.addr4("fw2")
        renewed = a.renew(rebound)
        renew_after = time.monotonic() - t_loss
        assert renewed is not None and renewed.ip == first.ip
        st = dh.status(lab, "fw2")
        assert st["state"] == "partner-down" and st["partner_age"] >= PARTNER_DOWN
        print(f"\nmember loss -> first rebind through the survivor {rebind_after:.2f}s, "
              f"first renewal there {renew_after:.2f}s (bound {SURVIVOR_BOUND:.1f}s)")

        b = DhcpClient(lab, "02:00:00:00:0b:01")
        second = b.obtain()
        assert second is not None and second.ip != first.ip
        b.configure(second)

        lab.node_return("fw1")
        lab.start_carpd("fw1")
        dh.start_kea(lab, "fw1")
        assert lab.wait_for(lambda: _both(lab, "hot-standby"), SYNC_BOUND + KEA_HTTP_TIMEOUT, 0.1), \
            {m: dh.ha_state(lab, m) for m in lab.members}
        # The returned primary took the survivor's leases before serving.
        assert dh.leases(lab, "fw1") == dh.leases(lab, "fw2") == {
            first.ip: "02:00:00:00:0a:01", second.ip: "02:00:00:00:0b:01"}
        for client, lease in ((a, renewed), (b, second)):
            # fw2's identifier: the standby does not answer now, the client
            # rebinds (at T2 in real life) and the primary does.
            again = client.renew(lease, timeout=0.5) or client.rebind(lease)
            assert again is not None and again.ip == lease.ip
            assert again.server_id == lab.addr4("fw1")
        assert dh.leases(lab, "fw1") == dh.leases(lab, "fw2")


def test_corrupt_lease_file_is_skipped_not_fatal():
    dh.need_kea()
    with _lab("dhcpbad") as lab:
        lease_file = dh.paths(lab, "fw1").lease_file
        (lab.dir / "fw1" / "kea").mkdir(parents=True, exist_ok=True)
        with open(lease_file, "wb") as f:
            f.write(b"address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,"
                    b"hostname,state,user_context\n"
                    b"192.0.2.150,not-a-mac,,x,y,1\n\xff\xfe garbage\n192.0.2.999,,,,,,\n")
        dh.start_kea(lab, "fw1")
        lease = DhcpClient(lab, "02:00:00:00:0c:01").obtain(timeout=3.0 + PARTNER_DOWN)
        # Alone, fw1 waits for its partner, then serves in partner-down.
        if lease is None:
            assert lab.wait_for(lambda: dh.ha_state(lab, "fw1") == "partner-down", SURVIVOR_BOUND, 0.2)
            lease = DhcpClient(lab, "02:00:00:00:0c:01").obtain()
        assert lease is not None and lease.ip == "192.0.2.150"


def _fill(directory) -> None:
    """Take every free page of the file system holding directory."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            for _ in range(1 << 16):  # bounded: the lab's file system is 1 MiB
                f.write(bytes(4096))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def test_full_lease_file_system_refuses_clearly_and_loses_nothing():
    """Kea 2.2 answers no grant or renewal it cannot write to its lease file
    (ALLOC_ENGINE_V4_ALLOC_ERROR) and stays in hot-standby, so its partner
    does not take over: fwctl dhcp says so (exit 1). The leases already
    granted stay in both members' tables, and once space is freed the member
    serves again, without a restart."""
    dh.need_kea()
    with _lab("dhcpful") as lab:
        kea_dir = lab.dir / "fw1" / "kea"
        kea_dir.mkdir(parents=True)
        # on the host (ip netns exec has a mount namespace of its own)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"fwdhcpful{os.getpid()}", kea_dir],
                       check=True)
        procs = []
        try:
            for m in lab.members:
                procs += dh.start_kea(lab, m)
            assert lab.wait_for(lambda: _both(lab, "hot-standby"), SYNC_BOUND, 0.1)
            a = DhcpClient(lab, "02:00:00:00:0e:01")
            first = a.obtain()
            assert first is not None
            a.configure(first)
            assert "problem" not in dh.status(lab, "fw1")

            _fill(kea_dir)
            # The lease file's last page still takes a few rows.
            for _ in range(4096 // 32):
                if a.renew(first, timeout=0.5) is None:
                    break
            else:
                pytest.fail("every renewal answered on a full file system")
            st = dh.status(lab, "fw1")
            assert st["lease_space_free"] == 0 and "lease file system full" in st["problem"]
            assert not fwdhcp.healthy(st) and "PROBLEM: lease file system full" in fwdhcp.line(st)
            assert DhcpClient(lab, "02:00:00:00:0e:02").obtain(timeout=1.0) is None
            assert _both(lab, "hot-standby"), "HA itself carries on"
            # The member keeps the lease; Kea's HA tells the standby to drop
            # the lease whose renewal failed (lease4-del) until it is renewed.
            assert dh.leases(lab, "fw1") == {first.ip: "02:00:00:00:0e:01"}

            os.unlink(kea_dir / "filler")
            assert "problem" not in dh.status(lab, "fw1")
            assert a.renew(first).ip == first.ip
            assert dh.leases(lab, "fw1") == dh.leases(lab, "fw2") == {first.ip: "02:00:00:00:0e:01"}
            second = DhcpClient(lab, "02:00:00:00:0e:02").obtain()
            assert second is not None and second.ip != first.ip
            assert dh.leases(lab, "fw1") == dh.leases(lab, "fw2")
        finally:
            for p in procs:
                p.kill()
                p.wait(10)
            subprocess.run(["umount", kea_dir], check=False)


def test_load_balancing_both_serve_and_the_survivor_serves_all():
    """load-balancing: each member answers the clients Kea's hash gives it;
    with one lost, the survivor (in partner-down) answers every client with
    its own address, and new ones."""
    dh.need_kea()
    with Lab(members=2, prefix="dhcplb", ipv6=False,
             dhcp=[{"interface": "lan0", "pools": [dh.POOL], "lease_time": LEASE_TIME}],
             dhcp_ha={"partner_down": PARTNER_DOWN, "mode": "load-balancing"}) as lab:
        for m in lab.members:
            dh.start_kea(lab, m)
        assert lab.wait_for(lambda: _both(lab, "load-balancing"), SYNC_BOUND, 0.1), \
            {m: dh.ha_state(lab, m) for m in lab.members}
        clients = [DhcpClient(lab, f"02:00:00:00:1b:{i:02x}") for i in range(12)]
        leases = {}
        for c in clients:
            lease = c.obtain()
            assert lease is not None
            c.configure(lease)
            leases[c] = lease
        by_server = {m: [c for c, le in leases.items() if le.server_id == lab.addr4(m)]
                     for m in lab.members}
        assert all(by_server.values()), f"both members serve: {by_server}"
        assert len({le.ip for le in leases.values()}) == len(clients)
        # each grant reached the partner before the client's ACK
        assert dh.leases(lab, "fw1") == dh.leases(lab, "fw2") == {
            le.ip: ":".join(f"{b:02x}" for b in c.mac) for c, le in leases.items()}

        t_loss = lab.node_loss("fw2")
        # Until partner-down the survivor cannot send its lease updates and
        # so answers nobody, its own clients included; then it serves all:
        # its own clients renew, the lost member's rebind.
        pending = list(clients)
        while pending and time.monotonic() - t_loss < SURVIVOR_BOUND:
            c = pending[0]
            mine = c in by_server["fw1"]
            again = c.renew(leases[c], timeout=0.3) if mine else c.rebind(leases[c], timeout=0.3)
            if again is not None:
                assert again.ip == leases[c].ip and again.server_id == lab.addr4("fw1")
                pending.pop(0)
        assert not pending, f"{len(pending)} clients not served within {SURVIVOR_BOUND:.1f}s"
        print(f"\nload-balancing: all {len(clients)} clients ({len(by_server['fw2'])} of the lost "
              f"member) served by the survivor {time.monotonic() - t_loss:.2f}s after the loss")
        assert dh.ha_state(lab, "fw1") == "partner-down"
        new = DhcpClient(lab, "02:00:00:00:1b:ff").obtain()
        assert new is not None and new.server_id == lab.addr4("fw1")
        assert new.ip not in {le.ip for le in leases.values()}


def test_secret_change_reaches_kea_on_both_members():
    """The HA password follows the cluster secret: after a new secret is
    rendered and Kea reloaded on one member, then on the other (as
    fwcluster-dhcp.path does on each member when /config/secret changes),
    the control agents take only the new password, and the pair is back in
    hot-standby with its lease tables in step."""
    dh.need_kea()
    with _lab("dhcpsec") as lab:
        procs = {m: dh.start_kea(lab, m) for m in lab.members}
        assert lab.wait_for(lambda: _both(lab, "hot-standby"), SYNC_BOUND, 0.1)
        a = DhcpClient(lab, "02:00:00:00:5e:01")
        first = a.obtain()
        assert first is not None

        old = core.ha_password(lab.secret.encode(), "lab")
        new_secret = (lab.secret + "-rotated").encode()
        new = core.ha_password(new_secret, "lab")
        assert dh.reload_kea(lab, "fw1", procs["fw1"], new_secret)
        assert lab.wait_for(lambda: dh.ha_post(lab, "fw2", "fw1", "lab:" + new) == 200, 5, 0.2)
        assert dh.ha_post(lab, "fw2", "fw1", "lab:" + old) == 401
        # One member changed: the two cannot talk until the other follows.
        time.sleep(PARTNER_DOWN)
        assert dh.reload_kea(lab, "fw2", procs["fw2"], new_secret)
        assert lab.wait_for(lambda: dh.ha_post(lab, "fw1", "fw2", "lab:" + new) == 200, 5, 0.2)
        assert dh.ha_post(lab, "fw1", "fw2", "lab:" + old) == 401
        assert lab.wait_for(lambda: _both(lab, "hot-standby"), SYNC_BOUND + PARTNER_DOWN, 0.2), \
            {m: dh.ha_state(lab, m) for m in lab.members}
        second = DhcpClient(lab, "02:00:00:00:5e:02").obtain()
        assert second is not None and second.ip != first.ip
        assert dh.leases(lab, "fw1") == dh.leases(lab, "fw2") == {
            first.ip: "02:00:00:00:5e:01", second.ip: "02:00:00:00:5e:02"}


def test_dhcpv6_client_keeps_its_address_through_member_loss():
    """kea-dhcp6 in the same HA as kea-dhcp4 (same peers, roles, control
    agent): the primary leases; the standby holds the lease before the
    client's REPLY; with the primary lost the client's RENEW (naming the
    primary's DUID) goes unanswered, its REBIND is answered by the survivor
    in partner-down with the same address, and it then renews there; a
    second client gets another address; after the primary returns both
    members hold the same two leases and both clients keep their addresses."""
    dh.need_kea()
    if not shutil.which("kea-dhcp6", path="/usr/sbin:/usr/bin:/sbin"):
        pytest.skip("kea-dhcp6 not installed (make deps installs it)")
    with Lab(members=2, prefix="dhcp6ha", ipv6=True,
             dhcp=[{"interface": "lan0", "pools": [dh.POOL], "pools6": [dh.POOL6],
                    "lease_time": LEASE_TIME}],
             dhcp_ha={"partner_down": PARTNER_DOWN}) as lab:
        _start_pair(lab, 6)
        duid = {m: bytes.fromhex(core.server_duid(configfile.load(lab.config_path, node=m), m)
                                 ["identifier"]) for m in lab.members}

        a = Dhcp6Client(lab, "02:00:00:00:6a:01")
        first = a.obtain()
        assert first is not None, "no DHCPv6 lease from the cluster"
        assert first.server_id.endswith(duid["fw1"]), "hot-standby: the primary (fw1) answers"
        assert first.dns == ("2001:db8:1::1",), "DNS defaults to the LAN's IPv6 vip"
        assert first.t1 == LEASE_TIME // 2 and first.valid == LEASE_TIME
        assert a.renew(first).ip == first.ip
        assert first.ip in dh.leases6(lab, "fw2"), "the lease reached the standby before the REPLY"
        st = dh.status(lab, "fw1")["v6"]
        assert (st["role"], st["state"], st["subnets"][0]["assigned"], st["subnets"][0]["total"]) == \
            ("primary", "hot-standby", 1, 256)

        t_loss = lab.node_loss("fw1")
        assert a.renew(first, timeout=0.5) is None, "a RENEW naming the lost member"
        rebound, _ = _until(SURVIVOR_BOUND, lambda: a.rebind(first, timeout=0.3))
        rebind_after = time.monotonic() - t_loss
        assert rebound is not None, f"no DHCPv6 rebind through the survivor within {SURVIVOR_BOUND:.1f}s"
        assert rebound.ip == first.ip and rebound.server_id.endswith(duid["fw2"])
        renewed = a.renew(rebound)
        renew_after = time.monotonic() - t_loss
        assert renewed is not None and renewed.ip == first.ip
        assert dh.status(lab, "fw2")["v6"]["state"] == "partner-down"
        print(f"\nDHCPv6: member loss -> first rebind through the survivor {rebind_after:.2f}s, "
              f"first renewal there {renew_after:.2f}s (bound {SURVIVOR_BOUND:.1f}s)")

        b = Dhcp6Client(lab, "02:00:00:00:6b:01")
        second = b.obtain()
        assert second is not None and second.ip != first.ip

        lab.node_return("fw1")
        lab.start_carpd("fw1")
        dh.start_kea(lab, "fw1")
        assert lab.wait_for(lambda: _both(lab, "hot-standby", 6), SYNC_BOUND + KEA_HTTP_TIMEOUT, 0.1), \
            {m: dh.ha_state(lab, m, 6) for m in lab.members}
        # The returned primary took the survivor's leases before serving.
        want = {first.ip: a.duid.hex(":"), second.ip: b.duid.hex(":")}
        assert dh.leases6(lab, "fw1") == dh.leases6(lab, "fw2") == want
        for client, lease in ((a, renewed), (b, second)):
            # a RENEW naming fw2 goes unanswered now; the REBIND reaches fw1
            again = client.renew(lease, timeout=0.5) or client.rebind(lease)
            assert again is not None and again.ip == lease.ip and again.server_id.endswith(duid["fw1"])
        assert dh.leases6(lab, "fw1") == dh.leases6(lab, "fw2") == want

"""DHCP on the VM cluster (issue 22): the client namespace gets a lease from
Kea on the booted image and keeps its address across a SIGKILL of the
master's qemu (rebind, then renewal, through the survivor) and across that
member's reboot (it comes back as tests/vm/test_vm_cluster.py brings a
killed member back, so the module leaves the cluster as it found it).

Runs on the session's vmlab (no boot of its own); the lab's cluster.toml
carries the [[dhcp]] fragment of tests/vm/lab.py.
"""
from __future__ import annotations

import json
import socket
import time

import pytest

from fwcluster import dhcpsvc
from tests.lab import dhcp_helpers as dh
from tests.labkit.dhcpclient import DhcpClient
from tests.labkit.netns import in_netns
from tests.vm.lab import DHCP_POOL, MEMBERS, SYNC_HOLD, ip
from tests.vm.test_vm_cluster import wait_roles

pytestmark = pytest.mark.image

FIRST, SECOND = "02:00:00:00:0d:01", "02:00:00:00:0d:02"
# A guest under load answers fwctl in a few seconds; both Kea servers talk
# within a few heartbeats once both answer.
HA_BOUND = 120
# The survivor's bound of the namespace lab, plus a guest's slower clock
# of events (TCG) on the HTTP timeout it waits out.
SURVIVOR_BOUND = dh.SURVIVOR_BOUND + 5


class ClientNs:
    """What DhcpClient needs of a lab (a socket in, and commands run in, a
    namespace), for the VM lab's client namespace."""

    def __init__(self, lab):
        self.lab = lab
        self.added: list[str] = []

    def socket(self, role, family, type):
        return in_netns(self.lab.ns(role), lambda: socket.socket(family, type))

    def run(self, role, argv):
        # only `ip addr replace ADDR dev IF` (DhcpClient.configure)
        ip(*argv[1:], ns=self.lab.ns(role))
        self.added.append(argv[3])


def dhcp_state(lab, member: str) -> str | None:
    rc, st = lab.fwctl(member, "dhcp")
    return st.get("state") if isinstance(st, dict) else None


def both(lab, state: str) -> bool:
    return all(dhcp_state(lab, m) == state for m in MEMBERS)


def leases(lab, member: str) -> dict[str, str]:
    """ip -> hardware address of every lease member's Kea holds."""
    out = lab.vm(member).check(
        "python3 -c \"import json; from fwcluster import dhcpsvc; "
        f"print(json.dumps(dhcpsvc.command('{dhcpsvc.APPLIANCE.control_socket}', 'lease4-get-all')))\"")
    reply = json.loads(out.strip().splitlines()[-1])
    return {le["ip-address"]: le["hw-address"] for le in (reply.get("arguments") or {}).get("leases", [])}


def member_addr(member: str) -> str:
    return f"192.0.2.1{MEMBERS[member]}"


@pytest.fixture
def client_ns(vmlab):
    """The client namespace; the leased addresses put on its eth0 are taken
    off afterwards, so later tests see the client as it was."""
    net = ClientNs(vmlab)
    yield net
    for addr in net.added:
        ip("addr", "del", addr, "dev", "eth0", ns=vmlab.ns("client"), check=False)


def test_client_keeps_its_address_across_kill_and_reboot_of_the_master(vmlab, client_ns):
    lab, net = vmlab, client_ns
    assert DHCP_POOL.startswith("192.0.2.")
    wait_roles(lab, "fw1", timeout=SYNC_HOLD + 120)
    lab.wait("Kea hot-standby on both members", lambda: both(lab, "hot-standby"), HA_BOUND, interval=2)
    a = DhcpClient(net, FIRST)
    first = a.obtain(timeout=5.0)
    assert first is not None, "no lease from the cluster"
    assert first.server_id == member_addr("fw1"), "hot-standby: the primary (fw1) answers"
    a.configure(first)
    assert a.renew(first, timeout=5.0).ip == first.ip
    assert leases(lab, "fw2").get(first.ip) == FIRST, "the lease reached the standby before the ACK"

    lab.kill("fw1")
    t_kill = time.monotonic()
    assert a.renew(first, timeout=0.5) is None, "renewal to the killed member's address"
    rebound = None
    while rebound is None and time.monotonic() - t_kill < SURVIVOR_BOUND:
        rebound = a.rebind(first, timeout=0.5)
    rebind_after = time.monotonic() - t_kill
    assert rebound is not None, f"no rebind through the survivor within {SURVIVOR_BOUND:.1f}s"
    assert rebound.ip == first.ip and rebound.server_id == member_addr("fw2")
    renewed = a.renew(rebound, timeout=5.0)
    renew_after = time.monotonic() - t_kill
    assert renewed is not None and renewed.ip == first.ip
    assert dhcp_state(lab, "fw2") == "partner-down"
    lab.state.setdefault("figures", {})["dhcp"] = {"rebind_s": round(rebind_after, 2),
                                                  "renew_s": round(renew_after, 2)}
    print(f"\nVM: qemu SIGKILL -> first rebind through the survivor {rebind_after:.2f}s, "
          f"first renewal there {renew_after:.2f}s (bound {SURVIVOR_BOUND:.1f}s)")

    b = DhcpClient(net, SECOND)
    second = b.obtain(timeout=5.0)
    assert second is not None and second.ip != first.ip
    b.configure(second)

    # The killed member boots again (a reboot from its disk, leases on /config).
    lab.start("fw1")
    lab.login("fw1")
    wait_roles(lab, "fw1", timeout=SYNC_HOLD + 120)
    lab.wait("Kea hot-standby on both members again", lambda: both(lab, "hot-standby"),
             HA_BOUND, interval=2)
    want = {first.ip: FIRST, second.ip: SECOND}
    assert leases(lab, "fw1") == leases(lab, "fw2") == want
    for client, lease in ((a, renewed), (b, second)):
        # Both hold fw2's identifier; the standby answers nobody now, so
        # the client rebinds (at T2) and the returned primary answers.
        again = client.renew(lease, timeout=0.5) or client.rebind(lease, timeout=5.0)
        assert again is not None and again.ip == lease.ip
        assert again.server_id == member_addr("fw1")
    assert leases(lab, "fw1") == leases(lab, "fw2") == want

"""DHCP on the VM cluster (issue 22): what tests/vm/test_vm_cluster.py needs
to follow the client namespace's leases from Kea on the booted image through
the master's power cut and return (the cluster's one kill and reboot serves
both the sessions and the leases). The lab's cluster.toml carries the
[[dhcp]] fragment of tests/vm/lab.py.
"""
from __future__ import annotations

import json
import socket
import time

from fwcluster import dhcpsvc
from tests.lab import dhcp_helpers as dh
from tests.labkit.dhcpclient import DhcpClient, Lease
from tests.labkit.netns import in_netns
from tests.vm.lab import MEMBERS, ip

FIRST, SECOND = "02:00:00:00:0d:01", "02:00:00:00:0d:02"
# A guest under load answers fwctl in a few seconds; both Kea servers talk
# within a few heartbeats once both answer.
HA_BOUND = 120
# The survivor's bound of the namespace lab, plus a guest's slower clock
# of events (TCG) on the HTTP timeout it waits out.
SURVIVOR_BOUND = dh.SURVIVOR_BOUND + 5


class ClientNs:
    """What DhcpClient needs of a lab (a socket in, and commands run in, a
    namespace), for the VM lab's client namespace; remove() takes the
    leased addresses off again, so later tests see the client as it was."""

    def __init__(self, lab):
        self.lab = lab
        self.added: list[str] = []

    def socket(self, role, family, type):
        return in_netns(self.lab.ns(role), lambda: socket.socket(family, type))

    def run(self, role, argv):
        # only `ip addr replace ADDR dev IF` (DhcpClient.configure)
        ip(*argv[1:], ns=self.lab.ns(role))
        self.added.append(argv[3])

    def remove(self) -> None:
        for addr in self.added:
            ip("addr", "del", addr, "dev", "eth0", ns=self.lab.ns("client"), check=False)
        self.added.clear()


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


def rebind_after_kill(client: DhcpClient, lease: Lease, t_kill: float) -> dict:
    """Right after the master's power cut: the renewal to its address goes
    unanswered, the rebind is answered by the survivor within
    SURVIVOR_BOUND of the kill, and the next renewal goes to the survivor.
    Returns what happened (asserted by the test that follows the kill)."""
    unanswered = client.renew(lease, timeout=0.5) is None
    rebound = None
    while rebound is None and time.monotonic() - t_kill < SURVIVOR_BOUND:
        rebound = client.rebind(lease, timeout=0.5)
    rebind_s = time.monotonic() - t_kill
    renewed = client.renew(rebound, timeout=5.0) if rebound else None
    return {"renew_unanswered": unanswered, "rebound": rebound, "rebind_s": rebind_s,
            "renewed": renewed, "renew_s": time.monotonic() - t_kill}

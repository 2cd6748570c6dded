"""Kea in the namespace lab: each member's kea-dhcp4 (and kea-dhcp6 where
the lab's [[dhcp]] has pools6) and kea-ctrl-agent run directly (not through systemd) with the configuration fwcluster renders,
leases and sockets in the lab's directory."""
from __future__ import annotations

import base64
import shutil
import signal
import socket

import pytest

from fwcluster import configfile, dhcpsvc
from fwcluster.core import dhcp as core

KEA_PROGRAMS = ("kea-dhcp4", "kea-ctrl-agent")
# What the lab's LAN needs: pools clear of the client's static .100-.10x and
# the members' .1K addresses.
POOL = "192.0.2.150-192.0.2.199"
POOL6 = "2001:db8:1::1000-2001:db8:1::10ff"

# Kea 2.2's HA client gives up on an unanswered request after 10 s (a fixed
# timeout in its HTTP client, not configurable): a partner that vanished (no
# RST, no ICMP) is seen failing then, and it is down as soon as partner_down
# seconds have passed without an answer (they have, by then). Plus one
# heartbeat interval for the failing request to be sent, and a margin for a
# loaded box.
KEA_HTTP_TIMEOUT = 10.0
PARTNER_DOWN = 3
MARGIN = 1.5
SURVIVOR_BOUND = KEA_HTTP_TIMEOUT + core.HEARTBEAT_MS / 1000 + PARTNER_DOWN + MARGIN
# Two members talk within a few heartbeats of starting.
SYNC_BOUND = 10.0


def need_kea():
    missing = [p for p in KEA_PROGRAMS if not shutil.which(p, path="/usr/sbin:/usr/bin:/sbin")]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make deps installs them)")


def paths(lab, member: str) -> dhcpsvc.Paths:
    base = lab.dir / member / "kea"
    return dhcpsvc.Paths(conf_dir=str(base), lease_file=str(base / "dhcp4.leases"),
                         control_socket=str(base / "dhcp4.sock"), log_output="stdout",
                         lease_file6=str(base / "dhcp6.leases"), control_socket6=str(base / "dhcp6.sock"))


def start_kea(lab, member: str, wait: float = 10.0):
    """Render this member's Kea configuration from the lab's cluster.toml and
    start kea-dhcp4 (kea-dhcp6 too with pools6) and kea-ctrl-agent in its
    namespace; return once the servers answer on their control sockets:
    (kea-dhcp4, kea-ctrl-agent[, kea-dhcp6])."""
    cfg = configfile.load(lab.config_path, node=member)
    p = paths(lab, member)
    dhcpsvc.write(dhcpsvc.render(cfg, member, configfile.secret(cfg), p))
    env = {"KEA_PIDFILE_DIR": p.conf_dir, "KEA_LOCKFILE_DIR": p.conf_dir}
    d4 = lab.popen(member, ["kea-dhcp4", "-c", p.dhcp4], env=env)
    ca = lab.popen(member, ["kea-ctrl-agent", "-c", p.ctrl_agent], env=env)
    procs = (d4, ca)
    sockets = [p.control_socket]
    if core.serves6(cfg):
        procs += (lab.popen(member, ["kea-dhcp6", "-c", p.dhcp6], env=env),)
        sockets.append(p.control_socket6)

    def answers():
        try:
            return all(dhcpsvc.command(s, "status-get")["result"] == 0 for s in sockets)
        except (OSError, ValueError):
            return False
    assert lab.wait_for(answers, wait, 0.1), f"{member}: Kea did not answer in {wait}s"
    return procs


def _socket(lab, member: str, family: int) -> str:
    p = paths(lab, member)
    return p.control_socket if family == 4 else p.control_socket6


def ha_state(lab, member: str, family: int = 4) -> str | None:
    try:
        reply = dhcpsvc.command(_socket(lab, member, family), "ha-heartbeat")
    except (OSError, ValueError):
        return None
    return (reply.get("arguments") or {}).get("state")


def leases(lab, member: str) -> dict[str, str]:
    """ip -> hardware address of every lease member's Kea holds."""
    reply = dhcpsvc.command(paths(lab, member).control_socket, "lease4-get-all")
    return {le["ip-address"]: le["hw-address"] for le in (reply.get("arguments") or {}).get("leases", [])}


def leases6(lab, member: str) -> dict[str, str]:
    """ip -> client DUID (hex, colons) of every DHCPv6 lease member's Kea holds."""
    reply = dhcpsvc.command(_socket(lab, member, 6), "lease6-get-all")
    return {le["ip-address"]: le["duid"] for le in (reply.get("arguments") or {}).get("leases", [])}


def status(lab, member: str) -> dict:
    """What `fwctl dhcp --json` shows on member (its Kea's sockets in the lab)."""
    cfg = configfile.load(lab.config_path, node=member)
    p = paths(lab, member)
    return dhcpsvc.status(cfg, member, p.control_socket, p.lease_file, p.control_socket6, p.lease_file6)


def ha_post(lab, src: str, dst: str, auth: str | None = None) -> int:
    """HTTP status of an HA heartbeat from src's namespace to dst's
    kea-ctrl-agent, with Authorization `auth` (a "user:password") or none."""
    cfg = configfile.load(lab.config_path, node=dst)
    body = b'{"command": "ha-heartbeat", "service": ["dhcp4"]}'
    head = (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    if auth:
        head += f"Authorization: Basic {base64.b64encode(auth.encode()).decode()}\r\n"
    s = lab.socket(src, socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(3)
        s.connect((str(cfg.member(dst).sync_address), cfg.dhcp_ha.port))
        s.sendall(head.encode() + b"\r\n" + body)
        status_line = s.recv(4096).split(b"\r\n", 1)[0]
    finally:
        s.close()
    return int(status_line.split()[1])


def reload_kea(lab, member: str, procs, secret: bytes) -> list[str]:
    """What `fwctl dhcp apply` does on the appliance when the secret changed:
    render this member's files with `secret`, then reload both Kea programs
    (SIGHUP, the units' ExecReload). procs: start_kea's (kea-dhcp4,
    kea-ctrl-agent). The files changed."""
    cfg = configfile.load(lab.config_path, node=member)
    changed = dhcpsvc.write(dhcpsvc.render(cfg, member, secret, paths(lab, member)))
    for p in procs:
        p.send_signal(signal.SIGHUP)
    return changed

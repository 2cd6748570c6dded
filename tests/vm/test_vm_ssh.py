"""ssh into the appliances of the VM lab (the shared two-member session):
key-only root login from the management link (the sync link here, the
ruleset's `management` list), refused with a password or an unknown key,
dropped by the ruleset from the LAN, closed without authorized_keys, and the
same host key after a member's reboot.

The lab seeds every member's /config with its throwaway key
(`seed-config --authorized-key`) and notes the host key at each boot
(tests/vm/lab.py). The reboot is the one test_vm_cluster.py does anyway
(fw1's power cut and return); run alone, this file reboots fw2 itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.vm.lab import LAN_VIP, MEMBERS, ROOT_PASSWORD, SEGMENTS

pytestmark = pytest.mark.image

LAN_CONNECT_TIMEOUT = 8  # seconds: the LAN probes end by then (dropped, not refused)


def sync_address(member: str) -> str:
    return SEGMENTS["sync"][1].format(k=MEMBERS[member]).split("/")[0]


def lan_address(member: str) -> str:
    return SEGMENTS["lan"][1].format(k=MEMBERS[member]).split("/")[0]


def known_hosts(lab) -> str:
    """Each member's host key as noted at its first boot: ssh checks the one
    it is served against it (StrictHostKeyChecking)."""
    path = lab.work / "known_hosts"
    text = "".join(f"{sync_address(m)} {' '.join(keys[0].split()[:2])}\n"
                   for m, keys in lab.host_keys.items())
    if not path.exists() or path.read_text() != text:  # unchanged: no rewrite under a reader
        path.write_text(text)
    return str(path)


def ssh(lab, role: str, address: str, command: str, *options: str, key=None, env=None,
        connect_timeout: int = 30, timeout: float = 90) -> subprocess.CompletedProcess:
    """ssh as root from the lab namespace `role` (options first: the first
    value of an option wins); never asks on a terminal."""
    argv = ["ip", "netns", "exec", lab.ns(role), "ssh", "-F", "/dev/null", *options,
            "-i", str(key or lab.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={connect_timeout}", "-o", f"UserKnownHostsFile={known_hosts(lab)}",
            "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlgorithms=ssh-ed25519",
            f"root@{address}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def test_host_keys_made_on_first_boot_on_config(vmlab):
    for m in MEMBERS:
        vm = vmlab.vm(m)
        assert vmlab.host_keys[m][0].startswith("ssh-ed25519 "), vmlab.host_keys[m]
        assert vm.check("stat -c '%a %U' /config/ssh /config/ssh/ssh_host_ed25519_key "
                        "/config/ssh/authorized_keys").split("\n") == ["700 root", "600 root", "600 root"]
        # none baked into the image: every card makes its own
        assert vm.check("ls /etc/ssh/ | grep -c ssh_host_ || true") == "0"
        assert vm.check("systemctl is-active ssh fwcluster-ssh-keys") == "active\nactive"
        # sshd only on IP (through the ruleset): systemd's ssh generator is replaced
        assert vm.check("systemctl list-units --all --plain --no-legend 'sshd-*.socket' | wc -l") == "0"
    assert vmlab.host_keys["fw1"][0] != vmlab.host_keys["fw2"][0]


def test_root_logs_in_with_the_key_from_the_management_link(vmlab):
    figures = vmlab.state.setdefault("figures", {}).setdefault("ssh_login_s", {})
    for m in MEMBERS:
        t = time.monotonic()
        p = ssh(vmlab, "mgmt", sync_address(m), "fwctl status --json")
        figures[m] = round(time.monotonic() - t, 1)
        assert p.returncode in (0, 1), p.stderr  # fwctl status: 1 = degraded, still an answer
        st = json.loads(p.stdout)
        assert st["node"] == m and st["cluster"] == "vmlab"


def test_password_and_unknown_keys_are_refused(vmlab, tmp_path):
    addr = sync_address("fw2")
    # root's right (console) password, offered through SSH_ASKPASS: the
    # server offers nothing but public keys, so it is never even asked for
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{ROOT_PASSWORD}'\n")
    askpass.chmod(0o700)
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    p = ssh(vmlab, "mgmt", addr, "true", "-o", "BatchMode=no", "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "NumberOfPasswordPrompts=1", env=env)
    assert p.returncode == 255 and "Permission denied (publickey)" in p.stderr, p.stderr
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    p = ssh(vmlab, "mgmt", addr, "true", key=other)
    assert p.returncode == 255 and "Permission denied (publickey)" in p.stderr, p.stderr


def test_ssh_from_the_lan_is_dropped_by_the_ruleset(vmlab):
    """The LAN client reaches the members' LAN addresses and the vip (they
    answer its ping) but tcp/22 there is dropped, so ssh times out; so does
    ssh to a member's sync address routed in through the LAN. The targets
    are probed at once: each probe is a wait for its own timeout."""
    def probe(target: str):
        ping = subprocess.run(["ip", "netns", "exec", vmlab.ns("client"), "ping", "-c1", "-W3",
                               target], capture_output=True, text=True, timeout=10)
        t = time.monotonic()
        p = ssh(vmlab, "client", target, "true", connect_timeout=LAN_CONNECT_TIMEOUT,
                timeout=LAN_CONNECT_TIMEOUT + 10)
        return target, ping, p, time.monotonic() - t

    targets = (lan_address("fw1"), lan_address("fw2"), LAN_VIP, sync_address("fw1"))
    known_hosts(vmlab)  # written once, before the probes read it
    with ThreadPoolExecutor(len(targets)) as ex:
        results = list(ex.map(probe, targets))
    for target, ping, p, took in results:
        # the sync address answers only through the vip's holder (fw1 here)
        assert ping.returncode == 0 or target == sync_address("fw1"), (target, ping.stdout)
        assert p.returncode == 255 and "timed out" in p.stderr, (target, p.stderr)
        assert took < LAN_CONNECT_TIMEOUT + 5, took


def test_no_authorized_keys_means_no_login(vmlab):
    vm = vmlab.vm("fw2")
    vm.check("mv /config/ssh/authorized_keys /config/ssh/authorized_keys.off")
    try:
        p = ssh(vmlab, "mgmt", sync_address("fw2"), "true")
        assert p.returncode == 255 and "Permission denied (publickey)" in p.stderr, p.stderr
        # what the boot-time unit says then
        out = vm.check("/usr/lib/fwcluster/ssh-keys /config/ssh")
        assert "nobody can log in over ssh; put public keys there" in out, out
    finally:
        # synced: /config commits every 30 s, and a power cut may come next
        vm.check("mv /config/ssh/authorized_keys.off /config/ssh/authorized_keys && sync")
    assert ssh(vmlab, "mgmt", sync_address("fw2"), "true").returncode == 0


def test_host_key_is_the_same_after_a_reboot(vmlab):
    rebooted = [m for m, keys in vmlab.host_keys.items() if len(keys) > 1]
    if not rebooted:  # this file alone: no earlier test rebooted a member
        vmlab.kill("fw2")
        vmlab.start("fw2")
        vmlab.login("fw2")
        rebooted = ["fw2"]
    for m in rebooted:
        assert len(set(vmlab.host_keys[m])) == 1, vmlab.host_keys[m]
        # and sshd serves it: known_hosts holds the first boot's key
        p = ssh(vmlab, "mgmt", sync_address(m), "cat /proc/sys/kernel/random/boot_id")
        assert p.returncode == 0, p.stderr
    vmlab.state.setdefault("figures", {})["ssh_host_key_kept_over_boots"] = {
        m: len(vmlab.host_keys[m]) for m in rebooted}

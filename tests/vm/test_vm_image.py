"""The booted image on its own, checked on the VM lab's members (the
session's boot; the image needs no boot of its own for this): the slot it
booted, root's password from /config and fwcluster-passwd, completion,
the daemons real-time as shipped, and the health check marking the slot
good through RAUC. Upgrades and their fallback: tests/vm/test_vm_upgrade.py.
"""
from __future__ import annotations

import json

import pytest

from tests.vm.lab import MEMBERS, ROOT_PASSWORD

pytestmark = pytest.mark.image

NEW_ROOT_PASSWORD = "vm-lab-root-pass-2"  # set in the guest with fwcluster-passwd
HEALTH_TIMEOUT = 120


def wait_active(vm, unit: str, timeout: float = HEALTH_TIMEOUT) -> None:
    """Wait in the guest until unit is active (the login prompt comes before
    multi-user.target, which waits for the health check)."""
    vm.check(f"timeout {int(timeout)} sh -c 'until systemctl is-active -q {unit}; do sleep 1; done'",
             timeout=timeout + 30)


def test_booted_slot_a_and_release(vmlab):
    for m in MEMBERS:
        vm = vmlab.vm(m)
        assert "fwcluster.slot=a" in vm.check("cat /proc/cmdline")
        assert vm.check("cat /usr/lib/fwcluster/release").startswith("VERSION=")


def shadow_root_field(vm) -> str:
    return vm.check("getent shadow root | cut -d: -f2")


def set_password(vm, password: str) -> str:
    return vm.check(f"echo {password} | fwcluster-passwd --stdin")


def test_root_password_from_config_and_fwcluster_passwd(vmlab):
    """The lab's login needed the seeded password; change it the operator's
    way on fw2, then back (a later reboot of fw2 logs in with the lab's)."""
    vm = vmlab.vm("fw2")
    seeded = vm.check("cat /config/root-password")
    assert seeded.startswith("$y$") and shadow_root_field(vm) == seeded
    # /etc/shadow on the read-only root is covered by config-setup's copy
    vm.check("mountpoint -q /etc/shadow")
    rc, out = vm.run("echo short | fwcluster-passwd --stdin")
    assert rc != 0 and "at least 8" in out
    assert vm.check("cat /config/root-password") == seeded
    try:
        out = set_password(vm, NEW_ROOT_PASSWORD)
        assert "root password set in /config/root-password" in out and "next boot" not in out
        new = vm.check("cat /config/root-password")
        assert new.startswith("$y$") and new != seeded and shadow_root_field(vm) == new
        assert vm.check("stat -c %a /config/root-password") == "600"
    finally:
        set_password(vm, ROOT_PASSWORD)
        vm.check("sync")  # /config commits every 30 s, and a power cut may come next


def test_fwctl_bash_completion_installed(vmlab):
    vm = vmlab.vm("fw2")
    vm.check("test -s /usr/share/bash-completion/completions/fwctl")
    vm.check("test -r /etc/profile.d/bash_completion.sh")
    out = vm.check("bash -c '. /usr/share/bash-completion/completions/fwctl && complete -p fwctl'")
    assert "fwctl" in out


def test_daemons_real_time_as_shipped(vmlab):
    vm = vmlab.vm("fw2")
    # as the units say: real-time, carpd above syncd
    for unit, prio in (("fwcluster-carpd", 40), ("fwcluster-syncd", 30)):
        pid = vm.check(f"systemctl show -p MainPID --value {unit}")
        sched = vm.check(f"chrt -p {pid}")
        assert "SCHED_RR" in sched and f"priority: {prio}" in sched, sched


def test_health_check_marks_ready(vmlab):
    vm = vmlab.vm("fw2")
    wait_active(vm, "fwcluster-health")
    st = json.loads(vm.check("fwctl upgrade --status --json"))
    assert st["booted"] == "A" and st["primary"] == "A" and st["compatible"] == "fwcluster-amd64"
    a = next(s for s in st["slots"] if s["bootname"] == "A")
    assert a["boot_status"] == "good" and a["version"], st
    assert st["signing"] == "development"
    assert "DEVELOPMENT-SIGNED" in vm.check("fwctl upgrade --status")
    assert vm.check("cat /etc/rauc/keyring.pem").startswith("-----BEGIN CERTIFICATE-----")

"""The real thing: boot the built image under qemu (BIOS) and check the
appliance on its own: root password, completion, daemons, ruleset, and the
health check marking the slot good through RAUC.

Upgrades and their fallback run on the two-VM cluster instead
(tests/vm/test_vm_upgrade.py: signed bundles, refusals, a broken bundle
falling back, a rolling upgrade), so this module boots only once.
Guest networking is qemu user-mode with restrict=on: nothing leaves the VM.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from image.qemu import VM, kvm_works
from image.seed import seed_config, write_vm_config

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.image

ROOT_PASSWORD = "image-test-root-1"  # seeded in /config/root-password
NEW_ROOT_PASSWORD = "image-test-root-2"  # set in the guest with fwcluster-passwd
BOOT_TIMEOUT = 420  # seconds to a login prompt; TCG on a busy 2-core host is slow
HEALTH_TIMEOUT = 120


@pytest.fixture(scope="module")
def lab(built_image):
    # Not pytest's tmp_path: other pytest runs on this machine prune those
    # while a long VM test still uses them.
    work = ROOT / "build" / "test-image-run"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    disk = work / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(built_image), str(disk)], check=True)
    cfg = work / "config"
    write_vm_config(cfg, root_password=ROOT_PASSWORD)
    seed_config(disk, cfg)
    kvm = kvm_works(built_image, ROOT / "build" / "stamps" / "qemu-accel")
    state = {"work": work, "disk": disk, "kvm": kvm, "vm": None,
             "password": ROOT_PASSWORD}
    vm = VM(disk, work / "console.log", kvm=kvm).start()
    state["vm"] = vm
    state["boot_seconds"] = vm.login(BOOT_TIMEOUT, password=ROOT_PASSWORD)
    yield state
    state["vm"].stop()
    disk.unlink(missing_ok=True)
    print(f"\nconsole log: {work / 'console.log'} (kvm={kvm})")


def wait_active(vm, unit: str, timeout: float = HEALTH_TIMEOUT) -> None:
    """Wait in the guest until unit is active (the login prompt comes before
    multi-user.target, which waits for the health check)."""
    vm.check(f"timeout {int(timeout)} sh -c 'until systemctl is-active -q {unit}; do sleep 1; done'",
             timeout=timeout + 30)


def test_boot_reaches_multi_user(lab):
    vm = lab["vm"]
    wait_active(vm, "multi-user.target")
    assert "fwcluster.slot=a" in vm.check("cat /proc/cmdline")
    assert vm.check("cat /usr/lib/fwcluster/release").startswith("VERSION=")


def shadow_root_field(vm) -> str:
    return vm.check("getent shadow root | cut -d: -f2")


def test_root_password_from_config_and_fwcluster_passwd(lab):
    """The fixture's login needed the seeded password; now change it the
    operator's way. The later boots log in with the new one, so it is
    also shown to survive a reboot and an upgrade."""
    vm = lab["vm"]
    seeded = vm.check("cat /config/root-password")
    assert seeded.startswith("$y$") and shadow_root_field(vm) == seeded
    # /etc/shadow on the read-only root is covered by config-setup's copy
    vm.check("mountpoint -q /etc/shadow")
    rc, out = vm.run("echo short | fwcluster-passwd --stdin")
    assert rc != 0 and "at least 8" in out
    assert vm.check("cat /config/root-password") == seeded
    out = vm.check(f"echo {NEW_ROOT_PASSWORD} | fwcluster-passwd --stdin")
    lab["password"] = NEW_ROOT_PASSWORD
    assert "root password set in /config/root-password" in out and "next boot" not in out
    new = vm.check("cat /config/root-password")
    assert new.startswith("$y$") and new != seeded and shadow_root_field(vm) == new
    assert vm.check("stat -c %a /config/root-password") == "600"


def test_fwctl_bash_completion_installed(lab):
    vm = lab["vm"]
    vm.check("test -s /usr/share/bash-completion/completions/fwctl")
    vm.check("test -r /etc/profile.d/bash_completion.sh")
    out = vm.check("bash -c '. /usr/share/bash-completion/completions/fwctl && complete -p fwctl'")
    assert "fwctl" in out


def test_daemons_active_with_config(lab):
    vm = lab["vm"]
    # the .link files on /config named the NICs
    vm.check("ip -br link show lan0 && ip -br link show sync0")
    out = vm.check("systemctl is-active fwcluster-carpd fwcluster-syncd", timeout=60)
    assert out.split() == ["active", "active"]
    # as the units say: real-time, carpd above syncd
    for unit, prio in (("fwcluster-carpd", 40), ("fwcluster-syncd", 30)):
        pid = vm.check(f"systemctl show -p MainPID --value {unit}")
        sched = vm.check(f"chrt -p {pid}")
        assert "SCHED_RR" in sched and f"priority: {prio}" in sched, sched
    status = json.loads(vm.check("fwctl status --json", timeout=60))
    assert status["node"] == "fw1" and status["cluster"] == "imgtest"


def test_cluster_ruleset_loaded(lab):
    vm = lab["vm"]
    out = vm.check("nft list ruleset")
    assert "table inet fwcluster" in out
    assert vm.check("systemctl is-active fwcluster-ruleset") == "active"


def test_health_check_marks_ready(lab):
    vm = lab["vm"]
    wait_active(vm, "fwcluster-health")
    st = json.loads(vm.check("fwctl upgrade --status --json"))
    assert st["booted"] == "A" and st["primary"] == "A" and st["compatible"] == "fwcluster-amd64"
    a = next(s for s in st["slots"] if s["bootname"] == "A")
    assert a["boot_status"] == "good" and a["version"], st
    assert st["signing"] == "development"
    assert "DEVELOPMENT-SIGNED" in vm.check("fwctl upgrade --status")
    assert vm.check("cat /etc/rauc/keyring.pem").startswith("-----BEGIN CERTIFICATE-----")

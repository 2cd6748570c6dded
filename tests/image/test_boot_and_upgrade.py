"""The real thing: boot the built image under qemu (BIOS, then UEFI), check
the appliance, upgrade it A -> B, and watch a broken image fall back.

One VM is carried through the module's tests in order (each boot costs a
minute or more without KVM). Guest networking is qemu user-mode with
restrict=on: nothing leaves the VM.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fwcluster.core import slots as ab
from image.build import sha256_file
from image.qemu import VM, kvm_works
from image.seed import seed_config, write_vm_config

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.image

ROOT_PASSWORD = "image-test-root-1"  # seeded in /config/root-password
NEW_ROOT_PASSWORD = "image-test-root-2"  # set in the guest with fwcluster-passwd
BOOT_TIMEOUT = 420  # seconds to a login prompt; TCG on a busy 2-core host is slow
HEALTH_TIMEOUT = 120


def debugfs(fs: Path, *requests: str) -> None:
    for r in requests:
        subprocess.run(["debugfs", "-w", "-R", r, str(fs)], check=True, capture_output=True)


def derive_image(base: Path, out: Path, edits: list[tuple[str, str, int]], work: Path) -> None:
    """A copy of base whose slot-A file system has files replaced (path, text, mode)."""
    shutil.copy(base, out)
    with open(base, "rb") as f:
        part = ab.find_partition(ab.parse_gpt(f.read(34 * 512)), "fwroot-a")
    fs = work / "slot.ext4"
    subprocess.run(["dd", f"if={base}", f"of={fs}", "bs=1M", f"skip={part.offset >> 20}",
                    f"count={part.size >> 20}", "status=none"], check=True)
    for i, (path, text, mode) in enumerate(edits):
        src = work / f"edit{i}"
        src.write_text(text)
        src.chmod(mode)
        debugfs(fs, f"rm {path}", f"write {src} {path}", f"sif {path} mode 0{0o100000 | mode:o}")
    subprocess.run(["dd", f"if={fs}", f"of={out}", "bs=1M", f"seek={part.offset >> 20}",
                    "conv=notrunc,sparse", "status=none"], check=True)
    fs.unlink()
    # Nothing after slot A is read by an upgrade: cut it off, so the guest
    # (slow without KVM) hashes half as much. The checksum covers this file.
    with open(out, "r+b") as f:
        f.truncate(part.offset + part.size)
    out.with_suffix(".sha256").write_text(f"{sha256_file(out)}  {out.name}\n")


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
    share = work / "share"
    share.mkdir()
    release = "VERSION=0.1.0-second\nBUILD_ID=test2\nDEBIAN=trixie\n"
    derive_image(built_image, share / "second.img",
                 [("/usr/lib/fwcluster/release", release, 0o644)], work)
    derive_image(built_image, share / "broken.img",
                 [("/usr/lib/fwcluster/release", "VERSION=0.1.0-broken\nBUILD_ID=test3\n", 0o644),
                  ("/usr/bin/fwcluster-syncd", "#!/bin/sh\necho broken on purpose >&2\nexit 1\n", 0o755)],
                 work)
    kvm = kvm_works(built_image, ROOT / "build" / "stamps" / "qemu-accel")
    state = {"work": work, "disk": disk, "share": share, "kvm": kvm, "vm": None,
             "password": ROOT_PASSWORD}
    vm = VM(disk, work / "console.log", kvm=kvm, share=share).start()
    state["vm"] = vm
    state["boot_seconds"] = vm.login(BOOT_TIMEOUT, password=ROOT_PASSWORD)
    yield state
    state["vm"].stop()
    for p in (disk, share / "second.img", share / "broken.img"):
        p.unlink(missing_ok=True)
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
    assert st["running"] == "a" and st["good_slot"] == "a" and st["trial_slot"] is None


def test_upgrade_to_second_image_then_boot_it_under_uefi(lab):
    vm = lab["vm"]
    vm.check("mkdir -p /run/upg && mount -t 9p -o trans=virtio,ro upgrade /run/upg")
    out = vm.check("fwctl upgrade /run/upg/second.img", timeout=900)
    assert "slot b now holds 0.1.0-second+test2" in out
    st = json.loads(vm.check("fwctl upgrade --status --json"))
    assert st["trial_slot"] == "b" and st["good_slot"] == "a"
    vm.send("poweroff\n")
    vm.proc.wait(180)
    vm.stop()
    # Same disk, now with UEFI firmware: both boot paths are exercised.
    vm = VM(lab["disk"], lab["work"] / "console.log", kvm=lab["kvm"], uefi=True,
            share=lab["share"]).start()
    lab["vm"] = vm
    vm.wait_for(rb"trial boot of slot b", BOOT_TIMEOUT)
    vm.login(BOOT_TIMEOUT, password=lab["password"])
    assert "fwcluster.slot=b" in vm.check("cat /proc/cmdline")
    assert "VERSION=0.1.0-second" in vm.check("cat /usr/lib/fwcluster/release")
    wait_active(vm, "fwcluster-health")
    st = json.loads(vm.check("fwctl upgrade --status --json"))
    assert st["running"] == "b" and st["good_slot"] == "b" and st["trial_slot"] is None


def test_broken_image_falls_back(lab):
    vm = lab["vm"]
    vm.check("mkdir -p /run/upg && mount -t 9p -o trans=virtio,ro upgrade /run/upg")
    out = vm.check("fwctl upgrade /run/upg/broken.img", timeout=900)
    assert "slot a now holds 0.1.0-broken+test3" in out
    mark = vm.mark()
    vm.send("reboot\n")
    vm.wait_for(rb"trial boot of slot a", BOOT_TIMEOUT, mark)
    # The trial slot's health check fails and reboots; GRUB then boots b.
    vm.wait_for(rb"NOT healthy", BOOT_TIMEOUT + HEALTH_TIMEOUT, mark)
    vm.login(BOOT_TIMEOUT, since=vm.wait_for(rb"Booting .fwcluster slot B", BOOT_TIMEOUT, mark).end(),
             password=lab["password"])
    assert "fwcluster.slot=b" in vm.check("cat /proc/cmdline")
    st = json.loads(vm.check("fwctl upgrade --status --json"))
    assert st["running"] == "b" and st["good_slot"] == "b" and st["trial_slot"] is None
    assert vm.check("systemctl is-active fwcluster-carpd fwcluster-syncd").split() == ["active", "active"]

"""Signed updates on the two-VM cluster (after test_vm_cluster.py, same lab):

1. fwctl upgrade refuses, with one line and nothing written, an unsigned
   bundle, one signed by another key, a tampered one, one for another
   system and a truncated one; and a bundle on a MASTER not in maintenance;
2. a bundle whose health check fails (syncd exits) falls back (on the
   backup, fw2: folded in here from tests/image, no boot of its own);
3. a rolling upgrade while 200 sessions flow: fw2 (backup) upgraded and
   rebooted into the new slot, fw1 into maintenance (hand-over), upgraded,
   rebooted, maintenance off: no session lost.

Bundles come from the image's own root slot (one ext4 cut out of the image,
bundled again with another version string: no second image build), signed
with the build's development key unless a test says otherwise. They reach
the members through the lab's 9p share (tag "upgrade").
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fwcluster.core import slots as ab
from image import base, build, bundle, profile
from tests.image.conftest import ROOT
from tests.vm.lab import ROOT_PASSWORD, SYNC_HOLD
from tests.vm.test_vm_cluster import SESSIONS, in_sync, wait_roles

pytestmark = pytest.mark.image

MOUNT = "/run/upg"
COMPAT = "fwcluster-amd64"
INSTALL_TIMEOUT = 1200  # TCG: RAUC hashes the bundle and copies ~440 MiB


def debugfs(fs: Path, *requests: str) -> None:
    for r in requests:
        subprocess.run(["debugfs", "-w", "-R", r, str(fs)], check=True, capture_output=True)


def root_slot(image: Path, out: Path) -> Path:
    with open(image, "rb") as f:
        part = ab.find_partition(ab.parse_gpt(f.read(34 * 512)), "fwroot-a")
    subprocess.run(["dd", f"if={image}", f"of={out}", "bs=1M", f"skip={part.offset >> 20}",
                    f"count={part.size >> 20}", "conv=sparse", "status=none"], check=True)
    return out


@pytest.fixture(scope="module")
def bundles(vmlab):
    """name -> file name in the share."""
    share, work = vmlab.share, ROOT / "build" / "vm-bundles"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    prof = profile.load(ROOT / "image/profiles/default.toml")
    tools = build.cache_dir() / "roots" / f"tools-{base.root_key('tools', prof, base.TOOL_PACKAGES, False)}"
    dev = bundle.dev_signing(ROOT / "build")
    other = bundle.dev_signing(work / "other")
    root = root_slot(vmlab.image, work / "root.ext4")
    made = {}

    def make(name, root_fs, version, signing=dev, compat=COMPAT):
        t = time.monotonic()
        bundle.make_bundle(tools, root_fs, share / f"{name}.raucb", compat, version, "vmtest",
                           signing, work)
        made[name] = f"{name}.raucb"
        return time.monotonic() - t

    seconds = make("second", root, "0.2.0-second")
    make("other-key", root, "0.2.0-otherkey", signing=other)
    make("other-system", root, "0.2.0-othersys", compat="someone-else-arm64")
    data = (share / "second.raucb").read_bytes()
    sig = int.from_bytes(data[-8:], "big")
    (share / "unsigned.raucb").write_bytes(data[:len(data) - 8 - sig] + bytes(8))
    tampered = bytearray(data)
    tampered[len(data) // 3] ^= 0x01  # inside the squashfs payload
    (share / "tampered.raucb").write_bytes(bytes(tampered))
    (share / "truncated.raucb").write_bytes(data[:len(data) // 2])
    made.update(unsigned="unsigned.raucb", tampered="tampered.raucb", truncated="truncated.raucb")
    broken = work / "broken.ext4"
    shutil.copy(root, broken)
    script = work / "syncd"
    script.write_text("#!/bin/sh\necho broken on purpose >&2\nexit 1\n")
    script.chmod(0o755)
    debugfs(broken, "rm /usr/bin/fwcluster-syncd", f"write {script} /usr/bin/fwcluster-syncd",
            "sif /usr/bin/fwcluster-syncd mode 0100755")
    make("broken", broken, "0.2.0-broken")
    vmlab.state.setdefault("figures", {})["bundle_bytes"] = (share / "second.raucb").stat().st_size
    # RAUC checks a payload only on a file it has exclusive access to (a
    # block device's file system), not on 9p: the bundles go to the guests
    # as a USB stick would, an ext4 image in the share, loop-mounted read-only.
    stick = work / "stick"
    stick.mkdir()
    for f in list(share.glob("*.raucb")):
        f.chmod(0o644)
        f.rename(stick / f.name)
    size = sum(f.stat().st_size for f in stick.iterdir()) * 11 // 10 + (16 << 20)
    (share / "stick.ext4").unlink(missing_ok=True)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(stick), str(share / "stick.ext4"),
                    f"{size >> 10}k"], check=True)
    shutil.rmtree(stick)
    figures = vmlab.state.setdefault("figures", {})
    figures["bundle_build_s"] = round(seconds, 1)
    yield made
    (share / "stick.ext4").unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)


def mount_share(vm) -> None:
    vm.check(f"mountpoint -q {MOUNT} || (mkdir -p /run/share {MOUNT} && "
             f"mount -t 9p -o trans=virtio,ro upgrade /run/share && "
             f"mount -o ro,loop /run/share/stick.ext4 {MOUNT})")


def inactive_digest(vm) -> str:
    """The first 64 MiB of the slot not running (RAUC writes from its start)."""
    st = json.loads(vm.check("fwctl upgrade --status --json", timeout=60))
    dev = next(s["device"] for s in st["slots"] if s["bootname"] != st["booted"])
    return vm.check(f"head -c 64M {dev} | sha256sum", timeout=300).split()[0]


REFUSED = {
    "unsigned": "it is not signed",
    "other-key": "its signature does not verify",
    "tampered": "its content was changed after signing",
    "other-system": "it is made for another system",
    "truncated": "it is truncated or not a RAUC bundle",
}


def test_bad_bundles_refused_with_one_line_and_nothing_written(vmlab, bundles):
    vm = vmlab.vm("fw2")  # the backup: no maintenance needed
    mount_share(vm)
    before = inactive_digest(vm)
    messages = {}
    for name, want in REFUSED.items():
        rc, out = vm.run(f"fwctl upgrade {MOUNT}/{bundles[name]} 2>&1 >/dev/null", timeout=600)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        messages[name] = lines[-1] if lines else ""
        assert rc == 2, (name, rc, out)
        assert len(lines) == 1 and lines[0].startswith("error: upgrade: ") and want in lines[0], (name, out)
        assert "nothing was written" in lines[0]
    vmlab.state.setdefault("figures", {})["refusals"] = messages
    print("\n" + "\n".join(f"{k}: {v}" for k, v in messages.items()))
    assert inactive_digest(vm) == before


def test_master_refuses_without_maintenance(vmlab, bundles):
    vm = vmlab.vm("fw1")
    wait_roles(vmlab, "fw1")
    mount_share(vm)
    rc, out = vm.run(f"fwctl upgrade {MOUNT}/{bundles['second']} 2>&1", timeout=120)
    assert rc == 1 and "fwctl maintenance on" in out and "MASTER of vip" in out, out
    assert len(out.strip().splitlines()) == 1, out
    vmlab.state.setdefault("figures", {}).setdefault("refusals", {})["master"] = out.strip()


def install(vmlab, member: str, name: str, bundles) -> dict:
    vm = vmlab.vm(member)
    mount_share(vm)
    t = time.monotonic()
    out = vm.check(f"fwctl upgrade {MOUNT}/{bundles[name]} --json", timeout=INSTALL_TIMEOUT)
    r = json.loads(out[out.index("{"):])
    vmlab.state.setdefault("figures", {}).setdefault("install_s", {})[f"{member}:{name}"] = \
        round(time.monotonic() - t, 1)
    return r


def reboot_into(vm, slot: str) -> None:
    """Reboot the guest (same qemu) and log in to the boot of `slot`."""
    mark = vm.mark()
    vm.send("reboot\n")
    since = vm.wait_for(rb"booting slot " + slot.encode(), 600, mark).end()
    vm.login(600, since=since, password=ROOT_PASSWORD)


def wait_health(vm) -> None:
    vm.check("timeout 300 sh -c 'until systemctl is-active -q fwcluster-health; do sleep 2; done'",
             timeout=330)


def status(vm) -> dict:
    return json.loads(vm.check("fwctl upgrade --status --json", timeout=60))


def test_broken_bundle_falls_back(vmlab, bundles):
    """Folded in from tests/image: the new slot's syncd fails, its health
    check marks it bad and reboots, GRUB boots the old slot again."""
    r = install(vmlab, "fw2", "broken", bundles)
    vm = vmlab.vm("fw2")
    mark = vm.mark()
    vm.send("reboot\n")
    vm.wait_for(rb"booting slot " + r["installed_slot"].encode(), 600, mark)
    vm.wait_for(rb"NOT healthy", 900, mark)
    back = ab.other_slot(r["installed_slot"])
    since = vm.wait_for(rb"booting slot " + back.encode(), 600, mark).end()
    vm.login(600, since=since, password=ROOT_PASSWORD)
    wait_health(vm)
    st = status(vm)
    assert st["booted"] == back, st
    bad = next(s for s in st["slots"] if s["bootname"] == r["installed_slot"])
    assert bad["boot_status"] == "bad", st


def test_rolling_upgrade_loses_no_session(vmlab, bundles, sessions):
    lab = vmlab
    wait_roles(lab, "fw1")
    lab.wait("fw2 in sync", lambda: in_sync(lab, "fw2"), 120, interval=2)
    sessions.report()
    # 1. the backup: install, reboot into the new slot
    for member in ("fw2", "fw1"):
        if member == "fw1":  # 2. the master: hand over first
            rc, out = lab.fwctl("fw1", "maintenance", "on", timeout=60)
            assert rc == 0, out
            wait_roles(lab, "fw2")
        r = install(lab, member, "second", bundles)
        vm = lab.vm(member)
        reboot_into(vm, r["installed_slot"])
        wait_health(vm)
        st = status(vm)
        assert st["booted"] == r["installed_slot"] and "0.2.0-second" in json.dumps(st), st
        lab.wait(f"{member} in sync again", lambda m=member: in_sync(lab, m), SYNC_HOLD + 120,
                 interval=2)
    rc, out = lab.fwctl("fw1", "maintenance", "off", timeout=60)
    assert rc == 0, out
    wait_roles(lab, "fw1", timeout=SYNC_HOLD + 120)
    time.sleep(5)
    rep = sessions.report()
    lab.state.setdefault("figures", {})["rolling"] = {"kept": rep["open"], "of": SESSIONS,
                                                      "gap_s": rep["max_gap_s"]}
    print(f"\nrolling upgrade: sessions kept {rep['open']}/{SESSIONS}, gap {rep['max_gap_s']:.2f} s")
    assert rep["failed"] == {} and rep["open"] == SESSIONS, rep

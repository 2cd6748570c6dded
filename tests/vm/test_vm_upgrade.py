"""Signed updates and the cross-version rolling upgrade on the two-VM
cluster (`make test-upgrade`; `make test` leaves this module out). Both
members boot from this tree's build capped to the previous release's
protocol versions (`make image PROTOCOLS=previous`, version `+previous`);
the bundle they are upgraded to is this tree's own build. One boot of the
pair serves every test, in file order:

1. fwctl upgrade refuses, with one line and nothing written, an unsigned
   bundle, one signed by another key, a tampered one, one for another
   system and a truncated one; and a bundle on a MASTER not in maintenance;
2. a bundle whose health check fails (syncd exits) falls back (on the
   backup, fw2);
3. the rolling upgrade of docs/upgrade.md while 200 sessions flow: fw2
   (backup) upgraded and rebooted into the new slot (mixed: the old
   protocol versions are negotiated), fw1 into maintenance (hand-over),
   upgraded, rebooted, maintenance off (both new: the new versions); no
   session lost;
4. rollback: `fwctl upgrade --rollback` on fw2 (backup), reboot into the
   previous build (mixed again), no session lost, both slots good.

The bundles other than the new build's own are made from its root slot (cut
out of its image, bundled again), signed with the build's development key
unless a test says otherwise. They reach the members through the lab's 9p
share (tag "upgrade"). Each step's time is printed and kept in the figures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fwcluster.core import slots as ab
from fwcluster.core import versions
from image import base, build, bundle, profile
from tests.image.conftest import ROOT, cached_build
from tests.vm.conftest import booted_lab, lab_sessions, skip_unless_possible
from tests.vm.lab import MEMBERS, ROOT_PASSWORD, SYNC_HOLD
from tests.vm.test_vm_cluster import SESSIONS, in_sync, wait_roles

pytestmark = [pytest.mark.image, pytest.mark.upgrade]

MOUNT = "/run/upg"
COMPAT = "fwcluster-amd64"
INSTALL_TIMEOUT = 1200  # TCG: RAUC hashes the bundle and copies ~440 MiB


@pytest.fixture(scope="module")
def images() -> dict[str, Path]:
    """The previous protocols' image (the members boot it) and this tree's."""
    skip_unless_possible()
    return {"previous": cached_build("previous"), "current": cached_build()}


@pytest.fixture(scope="module")
def vmlab(images):
    """Both members booted from the previous protocols' build (overrides the
    session's lab of test_vm_cluster.py: this module needs its own)."""
    with booted_lab(images["previous"], "vm-upgrade") as lab:
        lab.state["steps"] = {}
        yield lab
        print(f"\nupgrade steps (s): {lab.state['steps']}")


@pytest.fixture(scope="module")
def sessions(vmlab):
    # the rolling upgrade and the rollback took 27 min on a loaded 2-core
    # machine: the 20 min default ended the sessions mid-rollback
    return lab_sessions(vmlab, duration=3600)


class Step:
    """Times one step of the procedure, prints it and keeps it in the figures."""

    def __init__(self, lab, name: str):
        self.lab, self.name = lab, name

    def __enter__(self):
        self.t = time.monotonic()
        return self

    def __exit__(self, *exc):
        took = round(time.monotonic() - self.t, 1)
        self.lab.state["steps"][self.name] = took
        print(f"\n[{took:7.1f} s] {self.name}", flush=True)


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
def bundles(vmlab, images):
    """name -> file name on the stick; "current" is this tree's own bundle."""
    share, work = vmlab.share, ROOT / "build" / "vm-bundles"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    prof = profile.load(ROOT / "image/profiles/default.toml")
    tools = build.cache_dir() / "roots" / f"tools-{base.root_key('tools', prof, base.TOOL_PACKAGES, False)}"
    dev = bundle.dev_signing(ROOT / "build")
    other = bundle.dev_signing(work / "other")
    root = root_slot(images["current"], work / "root.ext4")
    made = {}

    def make(name, root_fs, version, signing=dev, compat=COMPAT):
        bundle.make_bundle(tools, root_fs, share / f"{name}.raucb", compat, version, "vmtest",
                           signing, work)
        made[name] = f"{name}.raucb"

    t = time.monotonic()
    shutil.copy(images["current"].with_suffix(".raucb"), share / "current.raucb")
    made["current"] = "current.raucb"
    # Refused before a byte of the payload is used: the new build's bundle
    # signed again by another key, and a small payload for another system
    # (a whole root would cost minutes of mksquashfs each).
    p = bundle.rauc(tools, work, "resign", "--no-verify", f"--cert={other.cert}",
                    f"--key={other.key}", f"--keyring={other.keyring}", str(share / "current.raucb"),
                    str(share / "other-key.raucb"))
    assert p.returncode == 0, p.stdout + p.stderr
    made["other-key"] = "other-key.raucb"
    small = work / "small"
    small.mkdir()
    (small / "noise").write_bytes(os.urandom(1 << 20))  # squashfs wants more than a block
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(small), str(work / "small.ext4"), "4M"],
                   check=True)
    make("other-system", work / "small.ext4", "0.2.0-othersys", compat="someone-else-arm64")
    data = (share / "current.raucb").read_bytes()
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
    vmlab.state.setdefault("figures", {})["bundle_bytes"] = (share / "current.raucb").stat().st_size
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
    vmlab.state["steps"]["bundles and stick"] = round(time.monotonic() - t, 1)
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
    figures = vmlab.state.setdefault("figures", {})
    figures["boot_s"] = {m: round(t, 1) for m, t in vmlab.boots.items()}
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
    rc, out = vm.run(f"fwctl upgrade {MOUNT}/{bundles['current']} 2>&1", timeout=120)
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


def release_of(image: Path) -> str:
    """The version a build names its image with (fwcluster-VERSION-amd64.img)."""
    return image.name.removeprefix("fwcluster-").removesuffix("-amd64.img")


# This tree negotiates (a range of sync versions): then the sync version in
# use must follow the phase, and both members on the new build must say
# "compatible". While one runs the previous build, neither hears the other's
# release (the old wire does not carry it): "unknown" with the old version in
# use. Before the per-peer negotiation is on main, old and new speak the
# same versions and report none: never "INCOMPATIBLE" is all there is to check.
NEGOTIATES = versions.SPEAKS["sync"][0] != versions.SPEAKS["sync"][1]


def versions_seen(lab, releases: dict[str, str]) -> dict:
    """What each member says (fwctl status --json "versions", fwctl sync
    --json "peers") of its release and, per peer, the peer's release,
    whether they can work together and the sync version in use
    (sync_version); checked against the phase: `releases` is the build
    each member runs."""
    both_new = "previous" not in "".join(releases.values())
    want = versions.SPEAKS["sync"][1] if both_new else versions.speaks("sync", "previous")[1]
    seen = {}
    for m in MEMBERS:
        rc, st = lab.fwctl(m, "status")
        _, sy = lab.fwctl(m, "sync")
        assert isinstance(st, dict) and isinstance(sy, dict), (st, sy)
        v = st["versions"]
        assert v["version"] == releases[m], (m, v)
        (other,) = set(MEMBERS) - {m}
        peers = {}
        for name, p in v["peers"].items():
            sp = (sy.get("peers") or {}).get(name) or {}
            peers[name] = {"release": p["version"], "compatible": p["compatible"],
                           "sync": sp.get("sync_version"), "detail": p["detail"]}
            assert p["compatible"] != "INCOMPATIBLE", (m, name, p)
            if NEGOTIATES:
                assert sp.get("sync_version") == want, (m, name, p, sp)
                assert p["compatible"] == "compatible" if both_new else \
                    p["compatible"] in ("compatible", versions.UNKNOWN), (m, name, p)
            if p["version"] != versions.UNKNOWN or (NEGOTIATES and both_new):
                assert p["version"] == releases[other], (m, name, p)
        seen[m] = {"release": v["version"], "protocols": v["protocols"], "peers": peers}
    return seen


class Gaps:
    """Sessions through the steps: the longest gaps over every report."""

    def __init__(self, sessions):
        self.sessions, self.all, self.one = sessions, 0.0, 0.0
        sessions.report()  # a fresh window

    def take(self) -> dict:
        r = self.sessions.report()
        self.all, self.one = max(self.all, r["max_gap_s"]), max(self.one, r["max_session_gap_s"])
        return r

    def none_lost(self, lab, what: str) -> None:
        """After TCP's retransmits have had a moment: every session open,
        the gaps printed and kept in the figures as `what`."""
        time.sleep(5)
        rep = self.take()
        lab.state.setdefault("figures", {})[what] = {
            "kept": rep["open"], "of": SESSIONS, "gap_s": self.all, "session_gap_s": self.one}
        print(f"\n{what}: sessions kept {rep['open']}/{SESSIONS}, longest gap of all sessions "
              f"{self.all:.2f} s, of one session {self.one:.2f} s")
        assert rep["failed"] == {} and rep["open"] == SESSIONS, rep


def upgrade_member(lab, member: str, name: str, bundles, want: str) -> None:
    """docs/upgrade.md, one member: install, reboot into the new slot,
    healthy, running `want`, in sync again."""
    with Step(lab, f"{member}: fwctl upgrade ({name})"):
        r = install(lab, member, name, bundles)
    vm = lab.vm(member)
    with Step(lab, f"{member}: reboot into slot {r['installed_slot']}, healthy"):
        reboot_into(vm, r["installed_slot"])
        wait_health(vm)
    st = status(vm)
    booted = next(s for s in st["slots"] if s["bootname"] == st["booted"])
    assert st["booted"] == r["installed_slot"] and booted["version"] == want, st
    assert "good" in booted["state"], st
    with Step(lab, f"{member}: in sync again"):
        lab.wait(f"{member} in sync again", lambda: in_sync(lab, member), SYNC_HOLD + 120, interval=2)


def test_rolling_upgrade_across_protocol_versions_loses_no_session(vmlab, images, bundles, sessions):
    """Both members on the previous protocols' build; the backup first, then
    the master after a hand-over (maintenance), as docs/upgrade.md says."""
    lab = vmlab
    old, new = release_of(images["previous"]), release_of(images["current"])
    seen = lab.state["versions"] = {}
    with Step(lab, "before: fw1 master, fw2 in sync, replies on every session"):
        wait_roles(lab, "fw1")
        lab.wait("fw2 in sync", lambda: in_sync(lab, "fw2"), 120, interval=2)
        lab.wait("replies on every session", lambda: (lambda r: r["open"] == SESSIONS and
                 r["oldest_reply_s"] < 1.0)(sessions.report()), 30)
    seen["both previous"] = versions_seen(lab, {"fw1": old, "fw2": old})
    gaps = Gaps(sessions)
    upgrade_member(lab, "fw2", "current", bundles, new)
    seen["fw2 upgraded (mixed)"] = versions_seen(lab, {"fw1": old, "fw2": new})
    gaps.take()
    with Step(lab, "fw1: maintenance on, fw2 master of every vip"):
        rc, out = lab.fwctl("fw1", "maintenance", "on", timeout=60)
        assert rc == 0, out
        wait_roles(lab, "fw2")
    upgrade_member(lab, "fw1", "current", bundles, new)
    with Step(lab, "fw1: maintenance off, master of every vip again"):
        rc, out = lab.fwctl("fw1", "maintenance", "off", timeout=60)
        assert rc == 0, out
        wait_roles(lab, "fw1", timeout=SYNC_HOLD + 120)
    seen["both upgraded"] = versions_seen(lab, {"fw1": new, "fw2": new})
    print(f"\nrolling upgrade {old} -> {new}; versions seen:\n" + json.dumps(seen, indent=1))
    gaps.none_lost(lab, "rolling")


def test_rollback_boots_the_previous_build_again_and_loses_no_session(vmlab, images, sessions):
    """After the upgrade is marked good: fwctl upgrade --rollback on the
    backup (fw2), reboot: it runs the previous build (the cluster is mixed
    again), no session lost, and both its slots are good."""
    lab = vmlab
    old, new = release_of(images["previous"]), release_of(images["current"])
    vm = lab.vm("fw2")
    wait_roles(lab, "fw1")
    before = status(vm)
    assert all("good" in s["state"] for s in before["slots"]), before
    gaps = Gaps(sessions)
    with Step(lab, "fw2: fwctl upgrade --rollback"):
        rc, r = lab.fwctl("fw2", "upgrade", "--rollback", timeout=120)
    assert rc == 0 and r["running"] == before["booted"] and r["next_boot"] != r["running"], r
    with Step(lab, f"fw2: reboot into slot {r['next_boot']}, healthy, in sync"):
        reboot_into(vm, r["next_boot"])
        wait_health(vm)
        lab.wait("fw2 in sync again", lambda: in_sync(lab, "fw2"), SYNC_HOLD + 120, interval=2)
    st = status(vm)
    assert st["booted"] == r["next_boot"], st
    assert [s["boot_status"] for s in st["slots"]] == ["good", "good"], st
    seen = versions_seen(lab, {"fw1": new, "fw2": old})
    lab.state.setdefault("versions", {})["fw2 rolled back (mixed)"] = seen
    wait_roles(lab, "fw1")
    print(f"\nfw2 rolled back to {old}; slots {st['slots']}; versions seen:\n"
          + json.dumps(seen, indent=1))
    # what each member's carpd did meanwhile (a claim by the rolled-back
    # member shows as a gap of about its master-down; fw1's syncd tells
    # its carpd what fw2 speaks, which avoids it when fw2's syncd is up
    # before fw2's master-down runs out: not always under TCG)
    for m in sorted(lab.vms):
        rc, out = lab.vm(m).run("journalctl -b -o short-precise -u fwcluster-carpd --no-pager"
                                " | grep -e '->' -e demotion -e 'speaks hardened' | tail -20")
        print(f"{m} carpd role changes since boot (rc {rc}):\n{out}")
    gaps.none_lost(lab, "rollback")

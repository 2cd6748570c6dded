"""fwctl upgrade IMAGE.img[.xz] | --status | --boot-check

Writes the root slot of a new image into the inactive slot of this
appliance and arms a one-shot trial boot of it (fwcluster.core.slots has the
rules; this is the I/O). /config and the running slot are never written.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from fwcluster.core import slots as ab
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, emit

CHUNK = 4 << 20
RUN_DIR = Path("/run/fwcluster")
GRUBENV_PATH = "grub/grubenv"  # on the ESP
RELEASE_FILE = "usr/lib/fwcluster/release"
CONFIG_FILE = Path("/etc/fwcluster/cluster.toml")  # -> /config/cluster.toml
DAEMONS = ("fwcluster-carpd.service", "fwcluster-syncd.service")


def register(sub) -> None:
    p = sub.add_parser("upgrade", help="write a new image to the other root slot and boot it on trial",
                       description="Verify IMAGE against its .sha256 file, write its root file system "
                       "to the inactive slot and boot that slot once on trial; if it does not come up "
                       "healthy (carpd and syncd running), the next boot returns to the current slot.")
    p.add_argument("image", nargs="?", help="fwcluster-VERSION-amd64.img or .img.xz")
    p.add_argument("--sha256", metavar="FILE",
                   help="checksum file (default: IMAGE's name with .sha256 instead of .img[.xz])")
    p.add_argument("--status", action="store_true", help="show both slots")
    p.add_argument("--reboot", action="store_true", help="reboot into the new slot when written")
    p.add_argument("--boot-check", action="store_true",
                   help="(run at boot by fwcluster-health.service) commit or roll back a trial boot")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="--boot-check: seconds to wait for the daemons (default 60)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        if args.boot_check:
            return boot_check(args)
        if args.status:
            return status(args)
        if not args.image:
            print("error: upgrade: give IMAGE.img[.xz], or --status", file=sys.stderr)
            return EXIT_USAGE
        return do_upgrade(args)
    except ab.UpgradeError as e:
        print(f"error: upgrade: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except FileNotFoundError as e:
        print(f"error: upgrade: {e.filename}: no such file", file=sys.stderr)
        return EXIT_USAGE
    except UnicodeDecodeError:
        print("error: upgrade: the checksum file is not text", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"error: upgrade: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_PROBLEM


# --- the disk we booted from -----------------------------------------------

class BootDisk:
    """The disk holding the running root slot, and its named partitions."""

    def __init__(self, cmdline: str | None = None):
        cmdline = cmdline if cmdline is not None else Path("/proc/cmdline").read_text()
        self.slot = ab.booted_slot(cmdline)
        root = next((w.split("=", 2)[2] for w in cmdline.split() if w.startswith("root=PARTUUID=")), None)
        if self.slot is None or root is None:
            raise ab.UpgradeError("this system was not booted from an fwcluster A/B image "
                                  "(no fwcluster.slot= / root=PARTUUID= on the kernel command line)")
        part = Path(os.path.realpath(f"/dev/disk/by-partuuid/{root.lower()}")).name
        sys_part = Path("/sys/class/block") / part
        if not (sys_part / "partition").exists():
            raise ab.UpgradeError(f"root device {part} is not a partition")
        self.disk = Path(os.path.realpath(sys_part)).parent.name
        with open(f"/dev/{self.disk}", "rb") as f:
            self.partitions = ab.parse_gpt(f.read(34 * 512))

    def device(self, name: str) -> str:
        number = ab.find_partition(self.partitions, name).number
        for child in Path(f"/sys/class/block/{self.disk}").iterdir():
            pf = child / "partition"
            if pf.exists() and pf.read_text().strip() == str(number):
                return f"/dev/{child.name}"
        raise ab.UpgradeError(f"no device node for partition {number} of {self.disk}")


@contextmanager
def mounted(device: str, where: Path, readonly: bool, fstype: str | None = None):
    where.mkdir(parents=True, exist_ok=True)
    argv = ["mount", "-o", "ro" if readonly else "rw,sync"]
    if fstype:
        argv += ["-t", fstype]
    subprocess.run(argv + [device, str(where)], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False, capture_output=True)


class Grubenv:
    """grubenv on the ESP, rewritten in place (same 1024 bytes, same
    clusters: GRUB's save_env relies on that)."""

    def __init__(self, disk: BootDisk):
        self.device = disk.device(ab.ESP_PARTLABEL)

    def read(self) -> dict[str, str]:
        with mounted(self.device, RUN_DIR / "esp", True, "vfat") as m:
            return ab.parse_grubenv((m / GRUBENV_PATH).read_bytes())

    def write(self, env: dict[str, str]) -> None:
        data = ab.render_grubenv(env)
        with mounted(self.device, RUN_DIR / "esp", False, "vfat") as m:
            with open(m / GRUBENV_PATH, "r+b") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())


# --- fwctl upgrade IMAGE ----------------------------------------------------

def checksum_file_for(image: Path) -> Path:
    name = image.name
    for suffix in (".img.xz", ".img"):
        if name.endswith(suffix):
            return image.with_name(name[: -len(suffix)] + ".sha256")
    return image.with_name(name + ".sha256")


def verify(image: Path, sums: Path) -> str:
    want = ab.expected_sha256(sums.read_text(), image.name)
    h = hashlib.sha256()
    with open(image, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if h.hexdigest() != want:
        raise ab.UpgradeError(f"{image.name}: sha256 mismatch (file {h.hexdigest()[:16]}…, "
                              f"{sums.name} says {want[:16]}…): not writing it")
    return want


def open_image(image: Path):
    return lzma.open(image, "rb") if image.name.endswith(".xz") else open(image, "rb")


def read_exact(stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = stream.read(min(CHUNK, n - len(buf)))
        except EOFError:  # an .xz cut short (its checksum file may match the cut file)
            raise ab.UpgradeError("image is truncated (compressed stream ends early)") from None
        except lzma.LZMAError as e:
            raise ab.UpgradeError(f"image is not a valid .xz stream: {e}") from None
        if not chunk:
            raise ab.UpgradeError("image is truncated")
        buf += chunk
    return bytes(buf)


def slot_partition(head: bytes):
    """The image's slot partition, refused if it is empty or overlaps the
    partition table (a write would then be 0 bytes, or the table)."""
    part = ab.find_partition(ab.parse_gpt(head), ab.SLOT_PARTLABEL["a"])
    if part.last_lba < part.first_lba or part.size <= 0:
        raise ab.UpgradeError(f"image's slot partition {part.name!r} is empty")
    if part.offset < len(head):
        raise ab.UpgradeError(f"image's slot partition {part.name!r} starts at sector "
                              f"{part.first_lba}, inside the partition table")
    return part


def check_image(image: Path) -> None:
    """Read the whole slot once before anything is written: a truncated or
    corrupt image is refused while the target slot is still intact."""
    with open_image(image) as src:
        part = slot_partition(read_exact(src, 34 * 512))
        left = part.offset + part.size - 34 * 512
        while left > 0:
            left -= len(read_exact(src, min(CHUNK, left)))


def write_slot(image: Path, target_device: str, progress=None) -> int:
    """Copy the image's slot-A file system to target_device; returns bytes written.
    Works on a stream, so an .img.xz is never unpacked to disk."""
    with open_image(image) as src:
        head = read_exact(src, 34 * 512)
        part = slot_partition(head)
        fd = os.open(target_device, os.O_WRONLY)
        try:
            room = os.lseek(fd, 0, os.SEEK_END)
            if part.size > room:
                raise ab.UpgradeError(f"image root slot ({part.size} bytes) is larger than "
                                      f"{target_device} ({room} bytes)")
            os.lseek(fd, 0, os.SEEK_SET)
            pos = len(head)
            while pos < part.offset:  # skip to the slot
                pos += len(read_exact(src, min(CHUNK, part.offset - pos)))
            done = 0
            while done < part.size:
                chunk = read_exact(src, min(CHUNK, part.size - done))
                os.write(fd, chunk)
                done += len(chunk)
                if progress:
                    progress(done, part.size)
            os.fsync(fd)
        finally:
            os.close(fd)
    return done


def slot_release(device: str) -> dict[str, str]:
    with mounted(device, RUN_DIR / "newslot", True, "ext4") as m:
        text = (m / RELEASE_FILE).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def version_string(release: dict[str, str]) -> str:
    v = release.get("VERSION", "unknown")
    return f"{v}+{release['BUILD_ID']}" if release.get("BUILD_ID") else v


def do_upgrade(args) -> int:
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(0, "", str(image))
    sums = Path(args.sha256) if args.sha256 else checksum_file_for(image)
    if not sums.is_file():
        print(f"error: upgrade: checksum file {sums} not found (give --sha256 FILE)", file=sys.stderr)
        return EXIT_USAGE
    disk = BootDisk()
    env_store = Grubenv(disk)
    env = env_store.read()
    target = ab.other(disk.slot)
    device = disk.device(ab.SLOT_PARTLABEL[target])
    print(f"verifying {image.name} against {sums.name} ...", flush=True)
    verify(image, sums)
    print(f"checking {image.name} ...", flush=True)
    check_image(image)
    # Mark the target empty first: a write cut short must never be booted.
    env_store.write(ab.env_before_write(env, disk.slot))
    print(f"writing slot {target} ({device}) ...", flush=True)
    last = [0.0]

    def progress(done, total):
        now = time.monotonic()
        if now - last[0] >= 5 or done == total:
            last[0] = now
            print(f"  {done * 100 // total}% ({done >> 20} of {total >> 20} MiB)", flush=True)

    write_slot(image, device, progress)
    version = version_string(slot_release(device))
    _, new_env = ab.plan_upgrade(env_store.read(), disk.slot, version)
    env_store.write(new_env)
    result = {"written_slot": target, "device": device, "version": version, "trial": True}
    emit(args, result, lambda r: print(
        f"slot {target} now holds {version}; it boots once on trial at the next reboot.\n"
        f"If it does not come up healthy, the following boot returns to slot {disk.slot}."))
    if args.reboot:
        subprocess.run(["systemctl", "reboot"], check=False)
    return EXIT_OK


# --- fwctl upgrade --status ---------------------------------------------------

def status(args) -> int:
    disk = BootDisk()
    env = Grubenv(disk).read()
    data = {"running": disk.slot, "good_slot": env.get("good_slot", "a"),
            "trial_slot": env.get("trial_slot", "") or None, "slots": []}
    for s in ab.SLOTS:
        state = []
        if s == disk.slot:
            state.append("running")
        if s == data["good_slot"]:
            state.append("default")
        if s == data["trial_slot"]:
            state.append("trial at next boot")
        data["slots"].append({"slot": s, "device": disk.device(ab.SLOT_PARTLABEL[s]),
                              "version": env.get(f"{s}_version", "") or None, "state": state})

    def human(d):
        print(f"{'SLOT':5} {'DEVICE':12} {'VERSION':40} STATE")
        for s in d["slots"]:
            print(f"{s['slot'].upper():5} {s['device']:12} {s['version'] or '(empty)':40} "
                  f"{', '.join(s['state'])}")
    emit(args, data, human)
    return EXIT_OK


# --- fwctl upgrade --boot-check ---------------------------------------------

def daemons_active() -> bool:
    p = subprocess.run(["systemctl", "is-active", "--quiet", *DAEMONS], check=False)
    return p.returncode == 0


def daemons_answer() -> bool:
    """Both daemons answer on their control sockets: running, not just started."""
    from fwcluster import configfile, ctlsock
    from fwcluster.core import config
    try:
        run_dir = configfile.load(CONFIG_FILE).run_dir
    except config.ConfigError:
        return False
    for daemon in ("carpd", "syncd"):
        try:
            ctlsock.request(ctlsock.socket_path(run_dir, daemon), {"cmd": "status"}, timeout=3)
        except (ctlsock.ControlError, ValueError):
            return False
    return True


def restarts() -> int:
    """How often systemd has restarted the daemons in this boot."""
    p = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", *DAEMONS],
                       capture_output=True, text=True, check=False)
    return sum(int(x) for x in p.stdout.split() if x.isdigit())


def wait_healthy(timeout: float, max_restarts: int = 3) -> bool:
    """Both daemons active and answering, three checks in a row (a daemon
    that crashes at start-up flaps between activating and active). A daemon
    that keeps crashing fails the check early."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        if restarts() >= max_restarts:
            return False
        streak = streak + 1 if daemons_active() and daemons_answer() else 0
        if streak >= 3:
            return True
        time.sleep(1)
    return False


def boot_check(args) -> int:
    disk = BootDisk()
    store = Grubenv(disk)
    env = store.read()
    if CONFIG_FILE.exists():
        healthy = wait_healthy(args.timeout)
        why = "carpd and syncd running" if healthy else "carpd/syncd not running"
    else:
        # Not configured yet: reaching this point (multi-user) is all we can ask.
        healthy, why = True, "not configured, system up"
    verdict = ab.health_verdict(env, disk.slot, healthy)
    if verdict.env is not None:
        store.write(verdict.env)
    print(f"fwcluster: {'ready' if healthy else 'NOT healthy'}: {verdict.message} ({why})", flush=True)
    if verdict.action == "reboot":
        subprocess.run(["systemctl", "reboot"], check=False)
    return EXIT_OK if healthy else EXIT_PROBLEM

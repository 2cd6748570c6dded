"""profile -> build/<name>-<version>-<arch>.img (+ .img.xz, .sha256, .manifest).

Stages (one progress line each): rootfs (mmdebstrap + customize hook),
manifest, filesystems (mkfs.ext4 -d, mkfs.vfat + mtools: no loop devices,
no mounts), disk (sfdisk on a sparse file, partitions copied in, GRUB for
BIOS and UEFI), compress, checksum.

Downloaded .debs and apt lists are kept in build/cache/apt and handed to
mmdebstrap, so a rebuild downloads nothing new.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fwcluster import __version__ as FWCLUSTER_VERSION
from fwcluster.core.slots import initial_env, render_grubenv
from image import boot, manifest
from image.plan import MIB, Plan, make_plan, sfdisk_script
from image.profile import Profile

SRC = Path(__file__).resolve().parent.parent


class BuildError(Exception):
    pass


@dataclass
class Result:
    image: Path
    image_xz: Path | None
    sha256: Path
    manifest: Path
    plan: Plan
    version: str
    build_id: str
    root_slot_blocks: int = 0
    root_slot_free_blocks: int = 0
    stage_seconds: dict | None = None

    @property
    def root_free_fraction(self) -> float:
        return self.root_slot_free_blocks / self.root_slot_blocks if self.root_slot_blocks else 0.0


class Progress:
    """One line per stage: `[3/7] filesystems ... 4.1 s`."""

    def __init__(self, stages: list[str], out=sys.stderr):
        self.stages, self.out, self.times = stages, out, {}

    def run(self, name: str, fn, *a, **kw):
        n = self.stages.index(name) + 1
        print(f"[{n}/{len(self.stages)}] {name} ...", file=self.out, flush=True)
        t = time.monotonic()
        value = fn(*a, **kw)
        self.times[name] = round(time.monotonic() - t, 1)
        print(f"[{n}/{len(self.stages)}] {name} done in {self.times[name]} s", file=self.out, flush=True)
        return value


def run(argv, log: Path | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a tool; on failure raise BuildError with the end of its output."""
    if log is None:
        p = subprocess.run(argv, capture_output=True, text=True, **kw)
        out = p.stdout + p.stderr
    else:
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(map(str, argv))}\n")
            f.flush()
            p = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, text=True, **kw)
        out = log.read_text()[-3000:]
    if p.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise BuildError(f"{Path(str(argv[0])).name} failed (exit {p.returncode}):\n{tail}")
    return p


def build_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        rev = subprocess.run(["git", "-C", str(SRC), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return f"{stamp}-{rev}" if rev else stamp


def mmdebstrap_argv(profile: Profile, rootfs: Path, cache: Path, customize: list[str]) -> list[str]:
    archives, lists = cache / "archives", cache / "lists"
    argv = ["mmdebstrap", "--variant=apt", "--mode=root", f"--arch={profile.architecture}",
            f"--include={','.join(profile.packages)}"]
    for path in profile.exclude_paths:
        argv.append(f"--dpkgopt=path-exclude={path}")
    for path in profile.keep_paths:  # after the excludes: dpkg applies them in order
        argv.append(f"--dpkgopt=path-include={path}")
    argv += [
        # Keep the essential .debs in the archive dir so they can be cached too.
        "--skip=essential/unlink",
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives \"$1\"/var/lib/apt/lists",
        f"--setup-hook=sync-in {archives} /var/cache/apt/archives",
        f"--setup-hook=sync-in {lists} /var/lib/apt/lists",
        f"--customize-hook=sync-out /var/cache/apt/archives {archives}",
        f"--customize-hook=sync-out /var/lib/apt/lists {lists}",
        "--customize-hook=" + shlex.join(customize) + " \"$1\"",
        profile.release, str(rootfs), profile.mirror,
    ]
    return argv


def fetch_wheels(pins: tuple[str, ...], cache: Path, log: Path) -> list[Path]:
    """Pure-Python wheels from PyPI with pip, kept in the cache dir."""
    wheels = cache.parent / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = []
    for pin in pins:
        name, version = pin.split("==")
        stem = f"{name.replace('-', '_')}-{version}-"
        have = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem.lower())]
        if not have:
            run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                 "--python-version", "3.13", "--platform", "any", "-d", str(wheels), pin], log=log)
            have = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem.lower())]
        if not have or not have[0].name.endswith("-py3-none-any.whl"):
            raise BuildError(f"python.wheels: {pin}: no pure-Python wheel found")
        found.append(have[0])
    return found


def stage_rootfs(profile: Profile, work: Path, cache: Path, version: str, bid: str, log: Path) -> Path:
    rootfs = work / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    for d in ("archives", "lists"):
        (cache / d).mkdir(parents=True, exist_ok=True)
        # apt's own lock/partial entries must not be cached
        for junk in ("lock", "partial"):
            p = cache / d / junk
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    overlays = []
    for ov in profile.overlays:
        p = Path(ov) if Path(ov).is_absolute() else SRC / ov
        if not p.is_dir():
            raise BuildError(f"overlay directory {ov} does not exist")
        overlays += ["--overlay", str(p)]
    for w in fetch_wheels(profile.wheels, cache, log):
        overlays += ["--wheel", str(w)]
    customize = ["env", f"PYTHONPATH={SRC}", sys.executable, "-m", "image.customize", *overlays,
                 "--version", version, "--build-id", bid, "--release", profile.release,
                 "--hostname", profile.hostname, "--serial-console", profile.serial_console]
    run(mmdebstrap_argv(profile, rootfs, cache, customize), log=log)
    return rootfs


def stage_manifest(rootfs: Path, profile: Profile, version: str, bid: str, plan: Plan) -> str:
    q = run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f",
             manifest.DPKG_QUERY_FORMAT])
    pkgs = manifest.parse_dpkg_query(q.stdout)
    header = {"fwcluster": version, "build": bid, "debian": profile.release,
              "architecture": profile.architecture, "profile": Path(profile.path).name,
              "packages": str(len(pkgs)), "disk": plan.disk_uuid}
    for p in plan.partitions:
        header[f"partition {p.number}"] = f"{p.name} {p.size_bytes // MIB} MiB {p.uuid}"
    text = manifest.render(pkgs, header)
    (rootfs / "usr/lib/fwcluster/manifest").write_text(text)
    return text


def ext4_free(fs_image: Path) -> tuple[int, int]:
    out = run(["dumpe2fs", "-h", str(fs_image)]).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]), int(fields["Free blocks"])


def stage_filesystems(rootfs: Path, work: Path, plan: Plan, profile: Profile,
                      slot_version: str, config_dir: Path | None) -> dict[str, Path]:
    slot = plan.slot("a")
    root_img = work / "root.ext4"
    # Read-only root: no journal, no reserved blocks.
    mkfs_ext4(root_img, slot.size_bytes, rootfs, "fwroot", ["-m", "0", "-O", "^has_journal"])
    cfg_img = work / "config.ext4"
    empty = work / "config-empty"
    empty.mkdir(exist_ok=True)
    mkfs_ext4(cfg_img, plan.by_name("fwconfig").size_bytes, config_dir or empty, "fwconfig", [])
    esp_img = work / "esp.vfat"
    make_esp(esp_img, plan, profile, slot_version, work)
    return {"fwroot-a": root_img, "fwconfig": cfg_img, "fwesp": esp_img}


def mkfs_ext4(path: Path, size: int, content: Path, label: str, extra: list[str]) -> None:
    if path.exists():
        path.unlink()
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(content), "-E", "root_owner=0:0",
         *extra, str(path), f"{size // 1024}k"])


def make_esp(path: Path, plan: Plan, profile: Profile, slot_version: str, work: Path) -> None:
    if path.exists():
        path.unlink()
    core, efi = boot.build_loaders(work)
    (work / "grub.cfg").write_text(boot.grub_cfg(plan, profile.serial_console))
    (work / "grubenv").write_bytes(render_grubenv(initial_env(slot_version)))
    size_kib = plan.by_name("fwesp").size_bytes // 1024
    run(["mkfs.vfat", "-C", "-n", "FWESP", str(path), str(size_kib)])
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    run(["mmd", "-i", str(path), "::/EFI", "::/EFI/BOOT", "::" + boot.GRUB_DIR], env=env)
    run(["mcopy", "-i", str(path), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    run(["mcopy", "-i", str(path), str(work / "grub.cfg"), str(work / "grubenv"),
         "::" + boot.GRUB_DIR + "/"], env=env)


def sparse_copy(src: Path, dst_file, offset: int, limit: int) -> None:
    """Copy src into dst_file at offset, leaving all-zero MiB blocks as holes."""
    size = src.stat().st_size
    if size > limit:
        raise BuildError(f"{src.name} ({size} bytes) does not fit its partition ({limit} bytes)")
    zero = bytes(MIB)
    with open(src, "rb") as f:
        pos = 0
        while chunk := f.read(MIB):
            if chunk != zero[:len(chunk)]:
                dst_file.seek(offset + pos)
                dst_file.write(chunk)
            pos += len(chunk)


def stage_disk(image: Path, plan: Plan, parts: dict[str, Path], work: Path) -> None:
    if image.exists():
        image.unlink()
    with open(image, "wb") as f:
        f.truncate(plan.size_bytes)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)],
        input=sfdisk_script(plan))
    with open(image, "r+b") as f:
        for name, src in parts.items():
            p = plan.by_name(name)
            sparse_copy(src, f, p.offset, p.size_bytes)
    boot.install_bios(image, plan, work / "core.img")


def stage_compress(image: Path, level: int) -> Path:
    xz = image.with_name(image.name + ".xz")
    with open(xz, "wb") as out:
        subprocess.run(["xz", "-T0", f"-{level}", "-c", str(image)], stdout=out, check=True)
    return xz


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def stage_checksum(files: list[Path], out: Path) -> None:
    out.write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in files))


def build(profile: Profile, out_dir: Path, *, cache: Path | None = None,
          work: Path | None = None, compress: bool = True, config_dir: Path | None = None,
          version: str | None = None, guid_seed: str | None = None) -> Result:
    out_dir.mkdir(parents=True, exist_ok=True)
    work = work or out_dir / "work"
    cache = cache or SRC / "build" / "cache" / "apt"
    work.mkdir(parents=True, exist_ok=True)
    version = version or FWCLUSTER_VERSION
    bid = build_id()
    base = f"{profile.name}-{version}-{profile.architecture}"
    image = out_dir / f"{base}.img"
    log = work / "build.log"
    log.write_text("")
    plan = make_plan(profile.size_mib, profile.bios_grub_mib, profile.esp_mib,
                     profile.config_mib, seed=guid_seed)
    stages = ["rootfs", "manifest", "filesystems", "disk"] + \
        (["compress"] if compress else []) + ["checksum"]
    pr = Progress(stages)
    print(f"building {image.name} from {profile.path} (Debian {profile.release}, "
          f"log {log})", file=sys.stderr, flush=True)
    rootfs = pr.run("rootfs", stage_rootfs, profile, work, cache, version, bid, log)
    text = pr.run("manifest", stage_manifest, rootfs, profile, version, bid, plan)
    parts = pr.run("filesystems", stage_filesystems, rootfs, work, plan, profile,
                   f"{version}+{bid}", config_dir)
    blocks, free = ext4_free(parts["fwroot-a"])
    pr.run("disk", stage_disk, image, plan, parts, work)
    xz = pr.run("compress", stage_compress, image, profile.compress_level) if compress else None
    sums = out_dir / f"{base}.sha256"
    pr.run("checksum", stage_checksum, [image] + ([xz] if xz else []), sums)
    man = out_dir / f"{base}.manifest"
    man.write_text(text.replace("# packages:",
                                f"# root-slot-free: {100 * free / blocks:.1f}%\n# packages:", 1))
    for p in parts.values():
        p.unlink()
    shutil.rmtree(rootfs)
    return Result(image, xz, sums, man, plan, version, bid, blocks, free, pr.times)

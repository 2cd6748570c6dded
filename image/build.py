"""profile -> build/<name>-<version>-<arch>.img (+ .img.xz, .raucb, .sha256, .manifest).

Stages (one progress line each): rootfs (the cached base root of
image/base.py copied, then image/customize.py adds overlays and fwcluster),
manifest, filesystems (the release's mke2fs -d, mkfs.vfat + mtools: no loop
devices, no mounts), disk (sfdisk on a sparse file, partitions copied in,
the release's GRUB for BIOS and UEFI), bundle (the root slot as a signed
RAUC bundle, image/bundle.py), compress, checksum.

Reproducible: times come from SOURCE_DATE_EPOCH (default: the last commit's
time), GUIDs and UUIDs from the profile, version and build id, mtimes are
clamped. The version is git describe's (fwcluster/version.py: a tag
vX.Y.Z builds X.Y.Z); an uncommitted change to the image's inputs adds
".dirty" to it.

Downloaded .debs and apt lists are kept in $FWCLUSTER_CACHE/apt (cache_dir()) and handed to
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
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fwcluster import version as fwversion
from fwcluster.core import versions
from fwcluster.core.slots import initial_env, render_grubenv
from image import base, boot, bundle, manifest
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
    bundle: Path | None = None
    signing: str = "development"

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


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(SRC), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# What goes into the image: a change here (not yet committed) marks the version.
IMAGE_INPUTS = ("image", "overlays", "fwcluster", "syncd")


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time (reproducible builds)."""
    value = os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct")
    if not value.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH: {value!r} is not a number of seconds "
                         "(and the source tree has no git commit to take it from)")
    return int(value)


def tree_dirty() -> bool:
    return bool(git("status", "--porcelain", "--untracked-files=normal", "--", *IMAGE_INPUTS))


def build_id(epoch: int) -> str:
    """`<SOURCE_DATE_EPOCH as UTC>-<commit>`: the same for every build of a commit."""
    stamp = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    rev = git("rev-parse", "--short=12", "HEAD")
    return f"{stamp}-{rev}" if rev else stamp


def _pure_python3(wheel: str) -> bool:
    """A wheel's tags (python-abi-platform, the last three fields of its
    name) say it runs anywhere on Python 3: py3 or py2.py3, none, any."""
    python, abi, platform = wheel[:-len(".whl")].split("-")[-3:]
    return "py3" in python.split(".") and abi == "none" and platform == "any"


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
        if not have or not _pure_python3(have[0].name):
            raise BuildError(f"python.wheels: {pin}: no pure-Python wheel found")
        found.append(have[0])
    return found


def stage_rootfs(profile: Profile, work: Path, cache: Path, version: str, bid: str, log: Path,
                 epoch: int, signing: bundle.Signing, protocols: str = "current") -> tuple[Path, Path]:
    """(appliance root, tools root): the cached base copied and customized."""
    roots = cache.parent / "roots"
    base_root = base.cached_root("base", profile, profile.packages, roots, cache, run, log,
                                 filtered=True)
    tools = base.cached_root("tools", profile, base.TOOL_PACKAGES, roots, cache, run, log,
                             filtered=False)
    rootfs = work / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir()
    run(["cp", "-a", "--reflink=auto", f"{base_root}/.", str(rootfs)])
    (rootfs / ".complete").unlink()
    overlays = []
    for ov in profile.overlays:
        p = Path(ov) if Path(ov).is_absolute() else SRC / ov
        if not p.is_dir():
            raise BuildError(f"overlay directory {ov} does not exist")
        overlays += ["--overlay", str(p)]
    for w in fetch_wheels(profile.wheels, cache, log):
        overlays += ["--wheel", str(w)]
    run([sys.executable, "-m", "image.customize", str(rootfs), *overlays,
         "--version", version, "--build-id", bid, "--release", profile.release,
         "--hostname", profile.hostname, "--serial-console", profile.serial_console,
         "--epoch", str(epoch), "--protocols", protocols],
        log=log, env=dict(os.environ, PYTHONPATH=str(SRC)))
    bundle.install_trust(rootfs, signing, bundle.compatible(profile.name, profile.architecture))
    with open(rootfs / "usr/lib/fwcluster/release", "a") as f:
        f.write(f"SIGNING={signing.kind}\n")
    return rootfs, tools


GRUB_PACKAGES = ("grub-pc-bin", "grub-efi-amd64-bin")


def stage_manifest(rootfs: Path, tools: Path, profile: Profile, version: str, bid: str,
                   plan: Plan, signing: bundle.Signing) -> str:
    q = run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f",
             manifest.DPKG_QUERY_FORMAT])
    pkgs = manifest.parse_dpkg_query(q.stdout)
    header = {"fwcluster": version, "build": bid, "debian": profile.release,
              "architecture": profile.architecture, "profile": Path(profile.path).name,
              "packages": str(len(pkgs)), "disk": plan.disk_uuid,
              "compatible": bundle.compatible(profile.name, profile.architecture),
              "signing": signing.kind + (" (bundles signed with build/rauc-dev's key: "
                                         "NOT FOR PRODUCTION)" if signing.development else ""),
              "keyring": signing.keyring.name}
    # The boot loader is not a package of the root: it comes from the tools root.
    for name in GRUB_PACKAGES + ("rauc",):
        header[name] = base.package_version(tools, name)
    for p in plan.partitions:
        header[f"partition {p.number}"] = f"{p.name} {p.size_bytes // MIB} MiB {p.uuid}"
    text = manifest.render(pkgs, header)
    (rootfs / "usr/lib/fwcluster/manifest").write_text(text)
    return text


def ext4_free(fs_image: Path) -> tuple[int, int]:
    out = run(["dumpe2fs", "-h", str(fs_image)]).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]), int(fields["Free blocks"])


@dataclass(frozen=True)
class Repro:
    """What makes two builds of one tree the same bytes: a time and a seed."""
    epoch: int
    seed: str

    def uuid(self, what: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fwcluster:{self.seed}:{what}"))

    @property
    def env(self) -> dict:
        return dict(os.environ, SOURCE_DATE_EPOCH=str(self.epoch), E2FSPROGS_FAKE_TIME=str(self.epoch))


def stage_filesystems(rootfs: Path, tools: Path, work: Path, plan: Plan, profile: Profile,
                      config_dir: Path | None, repro: Repro) -> dict[str, Path]:
    slot = plan.slot("a")
    root_img = work / "root.ext4"
    base.clamp_mtimes(rootfs, repro.epoch)
    # Read-only root: no journal, no reserved blocks.
    mkfs_ext4(tools, root_img, slot.size_bytes, rootfs, "fwroot", ["-m", "0", "-O", "^has_journal"],
              repro)
    cfg_img = work / "config.ext4"
    empty = work / "config-empty"
    empty.mkdir(exist_ok=True)
    cfg = config_dir or empty
    base.clamp_mtimes(cfg, repro.epoch)
    mkfs_ext4(tools, cfg_img, plan.by_name("fwconfig").size_bytes, cfg, "fwconfig", [], repro)
    esp_img = work / "esp.vfat"
    make_esp(tools, esp_img, plan, profile, work, repro)
    return {"fwroot-a": root_img, "fwconfig": cfg_img, "fwesp": esp_img}


def mkfs_ext4(tools: Path, path: Path, size: int, content: Path, label: str, extra: list[str],
              repro: Repro) -> None:
    """The release's mke2fs (SOURCE_DATE_EPOCH for its times, sorted -d),
    with the file-system UUID and directory hash seed from the seed."""
    if path.exists():
        path.unlink()
    env = dict(repro.env, MKE2FS_CONFIG=str(tools / "etc/mke2fs.conf"))
    run(base.release_tool(tools, "mke2fs", "-t", "ext4", "-q", "-F", "-L", label,
                          "-U", repro.uuid(f"fs:{label}"), "-d", str(content),
                          "-E", f"root_owner=0:0,hash_seed={repro.uuid(f'hash:{label}')}",
                          *extra, str(path), f"{size // 1024}k"), env=env)


def make_esp(tools: Path, path: Path, plan: Plan, profile: Profile, work: Path,
             repro: Repro) -> None:
    if path.exists():
        path.unlink()
    core, efi = boot.build_loaders(tools, work)
    (work / "grub.cfg").write_text(boot.grub_cfg(plan, profile.serial_console))
    (work / "grubenv").write_bytes(render_grubenv(initial_env()))
    for f in (efi, work / "grub.cfg", work / "grubenv"):
        os.utime(f, (repro.epoch, repro.epoch))
    size_kib = plan.by_name("fwesp").size_bytes // 1024
    volid = repro.uuid("fs:fwesp").replace("-", "")[:8]
    run(["mkfs.vfat", "--invariant", "-i", volid, "-C", "-n", "FWESP", str(path), str(size_kib)],
        env=repro.env)
    env = dict(repro.env, MTOOLS_SKIP_CHECK="1")
    run(["mmd", "-i", str(path), "::/EFI", "::/EFI/BOOT", "::" + boot.GRUB_DIR], env=env)
    run(["mcopy", "-m", "-i", str(path), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    run(["mcopy", "-m", "-i", str(path), str(work / "grub.cfg"), str(work / "grubenv"),
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


def stage_disk(image: Path, plan: Plan, parts: dict[str, Path], work: Path, tools: Path) -> None:
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
    boot.install_bios(image, plan, work / "core.img", boot.boot_img(tools))


def stage_compress(image: Path, level: int) -> Path:
    xz = image.with_name(image.name + ".xz")
    # A fixed block size: the same .xz whatever the number of threads.
    with open(xz, "wb") as out:
        subprocess.run(["xz", "-T0", "--block-size=16MiB", f"-{level}", "-c", str(image)],
                       stdout=out, check=True)
    return xz


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def stage_checksum(files: list[Path], out: Path) -> None:
    out.write_text("".join(f"{sha256_file(p)}  {p.name}\n" for p in files))


def capped_version(version: str, protocols: str) -> str:
    """The version of a build capped to older protocol versions: a local
    version segment names the cap (0.2.0 -> 0.2.0+previous, 0.0.0+gabc ->
    0.0.0+gabc.previous), so its image, bundle and cache entry are never
    taken for the uncapped build of the same tree, nor for a release."""
    try:
        versions.speaks("sync", protocols)
    except versions.VersionError as e:
        raise BuildError(str(e)) from None
    if protocols == "current":
        return version
    return version + ("." if "+" in version else "+") + protocols


def cache_dir() -> Path:
    """Where downloaded .debs, wheels and the cached base roots live:
    $FWCLUSTER_CACHE (the Makefile sets /var/cache/fwcluster, so every clone
    on a machine shares them), else build/cache in the tree."""
    return Path(os.environ.get("FWCLUSTER_CACHE") or SRC / "build" / "cache")


def build(profile: Profile, out_dir: Path, *, cache: Path | None = None,
          work: Path | None = None, compress: bool = True, config_dir: Path | None = None,
          version: str | None = None, guid_seed: str | None = None,
          signing: bundle.Signing | None = None, protocols: str = "current") -> Result:
    """guid_seed: what GUIDs and UUIDs derive from (default: profile, version
    and build id, so the same commit gives the same image). protocols: the
    protocol cap written into the image (fwcluster/version.py protocol_cap;
    "previous" speaks only the predecessor's versions, for the upgrade test)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = work or out_dir / "work"
    cache = cache or cache_dir() / "apt"
    work.mkdir(parents=True, exist_ok=True)
    epoch = source_date_epoch()
    version = version or fwversion.from_git(SRC, dirty=tree_dirty())
    if not version:
        raise BuildError("the version comes from git describe: build from a git checkout "
                         "(or give the version)")
    version = capped_version(version, protocols)
    bid = build_id(epoch)
    repro = Repro(epoch, guid_seed or f"{profile.name}:{version}+{bid}")
    stem = f"{profile.name}-{version}-{profile.architecture}"
    image = out_dir / f"{stem}.img"
    log = work / "build.log"
    log.write_text("")
    plan = make_plan(profile.size_mib, profile.bios_grub_mib, profile.esp_mib,
                     profile.config_mib, seed=repro.seed)
    stages = ["rootfs", "manifest", "filesystems", "disk", "bundle"] + \
        (["compress"] if compress else []) + ["checksum"]
    pr = Progress(stages)
    try:
        signing = signing or bundle.signing_from_env(SRC / "build")
    except bundle.SigningError as e:
        raise BuildError(str(e)) from None
    print(f"building {image.name} from {profile.path} (Debian {profile.release}, "
          f"build {bid}, log {log})", file=sys.stderr, flush=True)
    if signing.development:
        print(f"WARNING: DEVELOPMENT-SIGNED: no FWCLUSTER_SIGNING_KEY/FWCLUSTER_SIGNING_CERT given; "
              f"the image trusts and the bundle is signed by {signing.cert} "
              "(see docs/upgrade.md for a production key)", file=sys.stderr, flush=True)
    rootfs, tools = pr.run("rootfs", stage_rootfs, profile, work, cache, version, bid, log, epoch,
                           signing, protocols)
    text = pr.run("manifest", stage_manifest, rootfs, tools, profile, version, bid, plan, signing)
    parts = pr.run("filesystems", stage_filesystems, rootfs, tools, work, plan, profile,
                   config_dir, repro)
    blocks, free = ext4_free(parts["fwroot-a"])
    pr.run("disk", stage_disk, image, plan, parts, work, tools)
    raucb = out_dir / f"{stem}.raucb"
    try:
        pr.run("bundle", bundle.make_bundle, tools, parts["fwroot-a"], raucb,
               bundle.compatible(profile.name, profile.architecture), version, bid,
               signing, work)
    except bundle.SigningError as e:
        raise BuildError(str(e)) from None
    xz = pr.run("compress", stage_compress, image, profile.compress_level) if compress else None
    sums = out_dir / f"{stem}.sha256"
    pr.run("checksum", stage_checksum, [image] + ([xz] if xz else []) + [raucb], sums)
    man = out_dir / f"{stem}.manifest"
    man.write_text(text.replace("# packages:",
                                f"# root-slot-free: {100 * free / blocks:.1f}%\n# packages:", 1))
    for p in parts.values():
        p.unlink()
    shutil.rmtree(rootfs)
    return Result(image, xz, sums, man, plan, version, bid, blocks, free, pr.times, raucb,
                  signing.kind)

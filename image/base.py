"""Cached Debian roots: the appliance's base rootfs and the release's tools.

Both are mmdebstrap runs of the profile's suite, kept in $FWCLUSTER_CACHE/roots/
under a key of everything that decides their content (suite, architecture,
mirror, package list, dpkg path filters, BUILDER_VERSION), so a change to
fwcluster's code or overlays reuses them and the build only adds our files.

- base:  the profile's packages, before overlays and fwcluster are added;
- tools: GRUB (BIOS and EFI), e2fsprogs, RAUC and squashfs-tools of the
  image's own release, so the boot loader, the file systems and the update
  bundle are made by the release's tools, not the build host's (Debian 12
  has GRUB 2.06, mke2fs 1.47.0 and RAUC 1.8).

Files made while a root is built (ldconfig cache, initrd, .pyc, ...) get
BASE_EPOCH as their mtime, so a base rebuilt another day is the same.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import time
from pathlib import Path

from image.profile import Profile

# Bump when what goes into a cached root changes without its key changing.
BUILDER_VERSION = "3"
BASE_EPOCH = 1735689600  # 2025-01-01T00:00:00Z
TOOL_PACKAGES = ("grub-common", "grub-pc-bin", "grub-efi-amd64-bin", "e2fsprogs", "rauc",
                 "squashfs-tools")
# Build-time leftovers that differ from run to run and are no use on the appliance.
JUNK = ("var/log/apt", "var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log",
        "var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin", "var/cache/ldconfig/aux-cache",
        "var/lib/dbus/machine-id", "var/lib/systemd/random-seed", "etc/machine-id")


def root_key(kind: str, profile: Profile, packages: tuple[str, ...], filtered: bool) -> str:
    """Cache key of a root (pure)."""
    spec = {"builder": BUILDER_VERSION, "kind": kind, "release": profile.release,
            "architecture": profile.architecture, "mirror": profile.mirror,
            "packages": sorted(packages)}
    if filtered:
        spec["exclude"], spec["keep"] = list(profile.exclude_paths), list(profile.keep_paths)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def mmdebstrap_argv(profile: Profile, rootfs: Path, apt_cache: Path, packages: tuple[str, ...],
                    filtered: bool = True) -> list[str]:
    archives, lists = apt_cache / "archives", apt_cache / "lists"
    argv = ["mmdebstrap", "--variant=apt", "--mode=root", f"--arch={profile.architecture}",
            f"--include={','.join(packages)}"]
    if filtered:
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
        profile.release, str(rootfs), profile.mirror,
    ]
    return argv


def _prepare_apt_cache(apt_cache: Path) -> None:
    for d in ("archives", "lists"):
        (apt_cache / d).mkdir(parents=True, exist_ok=True)
        # apt's own lock/partial entries must not be cached
        for junk in ("lock", "partial"):
            p = apt_cache / d / junk
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def settle(root: Path, since: float, epoch: int) -> None:
    """Drop build leftovers; whatever was written after `since` gets `epoch`."""
    for rel in JUNK:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / d).glob("*"):
            if p.is_file() and not p.is_symlink():
                p.unlink()
    clamp_mtimes(root, epoch, newer_than=since)


def clamp_mtimes(root: Path, epoch: int, newer_than: float | None = None) -> None:
    """mtime of every entry newer than `newer_than` (default: newer than
    epoch) set to epoch, and atime to mtime (reads by the build move atime);
    symlinks themselves, not their targets."""
    limit = epoch if newer_than is None else newer_than
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + [""]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            mtime = epoch if st.st_mtime > limit else st.st_mtime_ns // 10**9
            if st.st_mtime_ns != mtime * 10**9 or st.st_atime_ns != mtime * 10**9:
                os.utime(p, (mtime, mtime), follow_symlinks=False)


def cached_root(kind: str, profile: Profile, packages: tuple[str, ...], cache: Path,
                apt_cache: Path, run, log: Path, filtered: bool) -> Path:
    """The root for (kind, profile, packages), made by mmdebstrap if not cached.
    `run` is build.run (argv, log=...)."""
    key = root_key(kind, profile, packages, filtered)
    final = cache / f"{kind}-{key}"
    if (final / ".complete").exists():
        with open(log, "a") as f:
            f.write(f"{kind} root: cached {final}\n")
        return final
    for old in cache.glob(f"{kind}-*"):  # one per kind: a base is ~600 MB
        shutil.rmtree(old)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{kind}-{key}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    _prepare_apt_cache(apt_cache)
    since = time.time() - 1
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(BASE_EPOCH))
    run(mmdebstrap_argv(profile, tmp, apt_cache, packages, filtered), log=log, env=env)
    settle(tmp, since, BASE_EPOCH)
    (tmp / ".complete").write_text(shlex.join(packages) + "\n")
    tmp.rename(final)
    return final


def release_tool(tools: Path, program: str, *args: str) -> list[str]:
    """argv running `program` of the tools root with its own loader and
    libraries (no chroot: it sees the host's paths)."""
    libdirs = [tools / "usr/lib/x86_64-linux-gnu", tools / "lib/x86_64-linux-gnu"]
    loader = next(d / "ld-linux-x86-64.so.2" for d in libdirs if (d / "ld-linux-x86-64.so.2").exists())
    exe = next(tools / d / program for d in ("usr/bin", "usr/sbin", "bin", "sbin")
               if (tools / d / program).exists())
    return [str(loader), "--library-path", ":".join(map(str, libdirs)), str(exe), *args]


def package_version(root: Path, package: str) -> str:
    """Version of an installed package, from the root's dpkg status file."""
    status = (root / "var/lib/dpkg/status").read_text()
    for stanza in status.split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in stanza.splitlines() if ": " in ln and not ln[0].isspace())
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields["Version"]
    raise KeyError(package)

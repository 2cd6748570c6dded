"""Turn a copy of the cached base root into the appliance root
(`python -m image.customize ROOT --overlay DIR ... --version V ...`).

Overlays are copied file by file (regular files only; the structural links
to /config are made here, where they can be read in one place). Then the
fwcluster packages are installed, units enabled, and the read-only-root
layout (fstab, tmpfs, links to /config) put in place. Everything written
here gets the build's SOURCE_DATE_EPOCH as mtime (before compileall, so the
.pyc files record it), so two builds of one tree give the same root.

Only product code goes in: the fwcluster and syncd packages without tests,
lab or bench tooling (those live under tests/ and bench/, outside them).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from image.base import clamp_mtimes

SRC = Path(__file__).resolve().parent.parent
PY_PACKAGES = ("fwcluster", "syncd")
DIST = "usr/lib/python3/dist-packages"
LAUNCHERS = {"fwcluster-carpd": "fwcluster.carpd", "fwcluster-syncd": "syncd",
             "fwctl": "fwcluster.fwctl"}
# Files that belong on /config, reached through /etc/fwcluster.
CONFIG_LINKS = {"etc/fwcluster/cluster.toml": "/config/cluster.toml",
                "etc/fwcluster/secret": "/config/secret",
                "etc/fwcluster/node": "/config/node",
                "var/lib/fwcluster": "/config/state",
                "etc/systemd/network": "/config/network",
                "etc/resolv.conf": "/config/resolv.conf"}
ALWAYS_ENABLED = ("systemd-networkd.service", "nftables.service")


def fstab(serial_console: str) -> str:
    del serial_console
    return """\
# fwcluster appliance: root is read-only (kernel "ro", not listed here);
# everything that changes at run time is on tmpfs, /config is the only
# persistent writable file system.
PARTLABEL=fwconfig  /config         ext4   defaults,noatime,nodev,nosuid,commit=30  0 2
# the ESP (grubenv) is mounted on first use and let go when idle, so it
# is rarely mounted when the power goes (RAUC's GRUB backend writes there)
PARTLABEL=fwesp     /boot/efi       vfat   umask=0077,shortname=mixed,flush,nofail,x-systemd.automount,x-systemd.idle-timeout=20  0 0
tmpfs               /tmp            tmpfs  mode=1777,nosuid,nodev,size=64M          0 0
tmpfs               /var/tmp        tmpfs  mode=1777,nosuid,nodev,size=16M          0 0
tmpfs               /var/log        tmpfs  mode=0755,nosuid,nodev,size=32M          0 0
tmpfs               /var/cache      tmpfs  mode=0755,nosuid,nodev,size=16M          0 0
tmpfs               /var/lib/systemd tmpfs mode=0755,nosuid,nodev,size=8M           0 0
"""


def copy_overlay(src: Path, root: Path) -> list[str]:
    """Copy an overlay tree's files into root; returns the paths written."""
    if not src.is_dir():
        raise SystemExit(f"error: overlay {src}: not a directory")
    written = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(dirpath).relative_to(src)
        for name in sorted(filenames):
            s = Path(dirpath) / name
            if s.is_symlink() or not s.is_file():
                raise SystemExit(f"error: overlay {s}: only regular files are allowed")
            d = root / rel / name
            d.parent.mkdir(parents=True, exist_ok=True)
            if d.is_symlink() or d.exists():
                d.unlink()
            shutil.copy(s, d)  # not copy2: the checkout's mtimes are not the build's
            mode = 0o644 if not os.access(s, os.X_OK) else 0o755
            if "secret" in name:
                mode = 0o600
            os.chmod(d, mode)
            os.chown(d, 0, 0)
            written.append(str(rel / name))
    return written


def install_wheel(root: Path, wheel: Path) -> list[str]:
    """Unpack a pure-Python wheel into dist-packages (what pip would do for
    a py3-none-any wheel, minus scripts); returns its top-level names."""
    import zipfile
    dist = root / DIST
    with zipfile.ZipFile(wheel) as z:
        tops = sorted({n.split("/", 1)[0] for n in z.namelist()})
        for t in tops:
            shutil.rmtree(dist / t, ignore_errors=True)
        z.extractall(dist)
    return tops


# Never product code, should any appear inside the packages.
NOT_PRODUCT = ("__pycache__", "*.pyc", "test_*.py", "conftest.py")


def install_python(root: Path, wheels: list[Path], epoch: int, since: float,
                   version_module: str) -> None:
    """version_module: fwcluster/_version.py, the version fwcluster/version.py
    reads on the appliance (it has no git)."""
    dist = root / DIST
    dist.mkdir(parents=True, exist_ok=True)
    extra = []
    for w in wheels:
        extra += [t for t in install_wheel(root, w) if not t.endswith(".dist-info")]
    for pkg in PY_PACKAGES:
        dst = dist / pkg
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(SRC / pkg, dst, ignore=shutil.ignore_patterns(*NOT_PRODUCT, "_version.py"),
                        copy_function=shutil.copy)
    (dist / "fwcluster/_version.py").write_text(version_module)
    for name, module in LAUNCHERS.items():
        p = root / "usr/bin" / name
        p.write_text(f"#!/bin/sh\nexec /usr/bin/python3 -m {module} \"$@\"\n")
        p.chmod(0o755)
    # Compile now: the root is read-only at run time. The sources' mtimes
    # (recorded in the .pyc) and the hash seed (frozenset order) are fixed first.
    clamp_mtimes(root, epoch, newer_than=since)
    chroot(root, "python3", "-m", "compileall", "-q",
           *(f"/{DIST}/{p}" for p in PY_PACKAGES + tuple(extra)))


def chroot(root: Path, *argv: str) -> None:
    subprocess.run(["chroot", str(root), *argv], check=True, env=dict(os.environ, PYTHONHASHSEED="0"))


def relink(root: Path, rel: str, target: str) -> None:
    p = root / rel
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)


def layout(root: Path, hostname: str, serial_console: str) -> None:
    (root / "config").mkdir(exist_ok=True)
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    for rel, target in CONFIG_LINKS.items():
        relink(root, rel, target)
    # openssh-server's postinst made host keys: they would be the same on
    # every card. Each member makes its own on /config (usr/lib/fwcluster/ssh-keys).
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/fstab").write_text(fstab(serial_console))
    (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n"
                                    "::1 localhost ip6-localhost ip6-loopback\n")
    # Empty machine-id: systemd makes a transient one on the read-only root.
    (root / "etc/machine-id").write_text("")
    # Root ships locked ("*": no password matches). At boot, config-setup
    # sets root's password from /config/root-password, or leaves it empty
    # while the member is unconfigured (first setup on the console); see
    # "Console access" in docs/install.md.
    chroot(root, "usermod", "-p", "*", "root")


COMPLETION = "usr/share/bash-completion/completions/fwctl"


def install_completion(root: Path) -> None:
    """fwctl's bash completion, printed by the installed fwctl itself, so it
    always matches the commands in the image."""
    p = subprocess.run(["chroot", str(root), "/usr/bin/fwctl", "completion", "bash"],
                       capture_output=True, text=True)
    if p.returncode != 0 or "complete " not in p.stdout:
        raise SystemExit(f"error: fwctl completion bash failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    dst = root / COMPLETION
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(p.stdout)
    dst.chmod(0o644)


def enable_units(root: Path, overlay_files: list[str]) -> list[str]:
    units = list(ALWAYS_ENABLED)
    for rel in overlay_files:
        p = root / rel
        if rel.startswith(("etc/systemd/system/", "usr/lib/systemd/system/")) and \
                p.suffix in (".service", ".timer") and "[Install]" in p.read_text():
            units.append(p.name)
    chroot(root, "systemctl", "enable", "--quiet", *units)
    # fwcluster-health marks slots good (only when carpd and syncd run), not RAUC's own unit
    if (root / "usr/lib/systemd/system/rauc-mark-good.service").exists():
        chroot(root, "systemctl", "mask", "--quiet", "rauc-mark-good.service")
    return units


def version_module(version: str, build_id: str, protocols: str = "current") -> str:
    """protocols: the build's protocol cap (fwcluster/version.py protocol_cap)."""
    return (f"# fwcluster: written by image/customize.py at build time\n"
            f"VERSION = {version!r}\nBUILD_ID = {build_id!r}\nPROTOCOLS = {protocols!r}\n")


def _os_release_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip('"')
    return fields


def os_release(debian: str, version: str, build_id: str) -> str:
    """/usr/lib/os-release of the appliance: fwcluster, its release and
    build (os-release(5): VERSION_ID, IMAGE_ID, IMAGE_VERSION, BUILD_ID),
    like Debian (ID_LIKE), whose own release stays in DEBIAN_VERSION_ID."""
    d = _os_release_fields(debian)
    based = f"Debian {d.get('VERSION_ID', '')} {d.get('VERSION_CODENAME', '')}".strip()
    fields = {"PRETTY_NAME": f"fwcluster {version} ({based})", "NAME": "fwcluster",
              "ID": "fwcluster", "ID_LIKE": "debian", "VERSION_ID": version,
              "VERSION": f"{version} ({based})", "VERSION_CODENAME": d.get("VERSION_CODENAME", ""),
              "IMAGE_ID": "fwcluster", "IMAGE_VERSION": version, "BUILD_ID": build_id,
              "DEBIAN_VERSION_ID": d.get("VERSION_ID", "")}
    return "".join(f'{k}="{v}"\n' for k, v in fields.items() if v)


def write_release(root: Path, version: str, build_id: str, release: str) -> None:
    d = root / "usr/lib/fwcluster"
    d.mkdir(parents=True, exist_ok=True)
    (d / "release").write_text(f"VERSION={version}\nBUILD_ID={build_id}\nDEBIAN={release}\n")
    # /etc/os-release links here in Debian
    osr = root / "usr/lib/os-release"
    debian = osr.read_text() if osr.exists() else ""
    osr.unlink(missing_ok=True)
    osr.write_text(os_release(debian, version, build_id))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="image.customize")
    ap.add_argument("root", type=Path)
    ap.add_argument("--overlay", action="append", default=[], type=Path)
    ap.add_argument("--wheel", action="append", default=[], type=Path)
    ap.add_argument("--version", required=True)
    ap.add_argument("--build-id", required=True)
    ap.add_argument("--release", required=True)
    ap.add_argument("--hostname", required=True)
    ap.add_argument("--serial-console", default="")
    ap.add_argument("--epoch", type=int, required=True, help="SOURCE_DATE_EPOCH of the build")
    ap.add_argument("--protocols", default="current", help="protocol cap (fwcluster.core.versions.CAPS)")
    args = ap.parse_args(argv)
    os.environ["SOURCE_DATE_EPOCH"] = str(args.epoch)
    since = time.time() - 1
    root = args.root
    written = []
    for ov in args.overlay:
        written += copy_overlay(ov, root)
    install_python(root, args.wheel, args.epoch, since,
                   version_module(args.version, args.build_id, args.protocols))
    install_completion(root)
    layout(root, args.hostname, args.serial_console)
    units = enable_units(root, written)
    write_release(root, args.version, args.build_id, args.release)
    clamp_mtimes(root, args.epoch, newer_than=since)
    print(f"  overlays: {len(written)} files; units enabled: {', '.join(units)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

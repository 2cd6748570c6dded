"""Write a /config file system from a directory into an existing image
(pre-seed a card before flashing; the boot tests use it too)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from fwcluster.core.slots import CONFIG_PARTLABEL, find_partition, parse_gpt


def seed_config(image: Path, directory: Path) -> None:
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    with open(image, "rb") as f:
        part = find_partition(parse_gpt(f.read(34 * 512)), CONFIG_PARTLABEL)
    with tempfile.TemporaryDirectory(prefix="fwseed-") as tmp:
        fs = Path(tmp) / "config.ext4"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "fwconfig", "-d", str(directory),
                        "-E", "root_owner=0:0", str(fs), f"{part.size // 1024}k"],
                       check=True, capture_output=True)
        with open(fs, "rb") as src, open(image, "r+b") as dst:
            dst.seek(part.offset)
            while chunk := src.read(1 << 20):
                dst.write(chunk)


PASSWD_TOOL = Path(__file__).resolve().parent.parent / "overlays/base/usr/sbin/fwcluster-passwd"


def root_password_hash(password: str) -> str:
    """The hash for /config/root-password, made by the appliance's own tool."""
    p = subprocess.run([sys.executable, str(PASSWD_TOOL), "--stdin", "--print"],
                       input=password + "\n", capture_output=True, text=True)
    if p.returncode != 0:
        raise ValueError(p.stderr.strip())
    return p.stdout.strip()


VM_NICS = (("52:54:00:00:00:10", "lan0", "192.0.2.11/24"),
           ("52:54:00:00:00:11", "sync0", "203.0.113.1/24"))


def write_vm_config(d: Path, root_password: str | None = None) -> None:
    """A /config for member fw1 of a two-member cluster, for a qemu guest
    with the NICs of image.qemu.VM (MACs in VM_NICS; .link files name them
    lan0 and sync0). Documentation addresses only. Without root_password
    root cannot log in (a configured member needs /config/root-password)."""
    (d / "network").mkdir(parents=True)
    if root_password is not None:
        (d / "root-password").write_text(root_password_hash(root_password) + "\n")
        (d / "root-password").chmod(0o600)
    (d / "cluster.toml").write_text(
        '[cluster]\nname = "imgtest"\nsecret_file = "/etc/fwcluster/secret"\n\n'
        '[sync]\ninterface = "sync0"\n\n'
        '[[member]]\nname = "fw1"\nsync_address = "203.0.113.1"\n\n'
        '[[member]]\nname = "fw2"\nsync_address = "203.0.113.2"\nadvskew = 100\n\n'
        '[[vip]]\nvhid = 1\ninterface = "lan0"\naddress = "192.0.2.1/24"\n')
    (d / "node").write_text("fw1\n")
    (d / "hostname").write_text("fw1\n")
    secret = d / "secret"
    secret.write_text("image-test-passphrase\n")
    secret.chmod(0o600)
    for mac, name, addr in VM_NICS:
        (d / "network" / f"10-{name}.link").write_text(
            f"[Match]\nMACAddress={mac}\n\n[Link]\nName={name}\n")
        (d / "network" / f"20-{name}.network").write_text(
            f"[Match]\nName={name}\n\n[Network]\nAddress={addr}\nLinkLocalAddressing=no\n")

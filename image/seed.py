"""Write a /config file system from a directory into an existing image
(pre-seed a card before flashing; the boot tests and the VM lab use it too).
The image may be raw or a qcow2 overlay (written through qemu-io, so the
backing image stays untouched)."""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fwcluster.core.slots import CONFIG_PARTLABEL, UpgradeError, find_partition, parse_gpt
from image.qemu import disk_format


def _qemu(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0 or "error" in p.stdout.lower():
        raise ValueError(f"{argv[0]} failed: {(p.stderr or p.stdout).strip()[-300:]}")


AUTHORIZED_KEYS = "ssh/authorized_keys"


def public_key_line(line: str) -> bool:
    """True if an authorized_keys line holds a public key: "[options] TYPE
    BASE64 [comment]" where BASE64 decodes to a blob that names TYPE."""
    words = line.split()
    for i, word in enumerate(words[:-1]):
        try:
            blob = base64.b64decode(words[i + 1], validate=True)
        except ValueError:
            continue
        n = int.from_bytes(blob[:4], "big")
        if len(blob) > 4 + n and blob[4:4 + n] == word.encode():
            return True
    return False


def authorized_keys_text(files: list[Path]) -> str:
    """The public keys of files, for /config/ssh/authorized_keys; a line that
    is not one (e.g. a private key given by mistake) is an error."""
    out = []
    for f in files:
        try:
            lines = f.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{f}: cannot read: {e}") from None
        keys = []
        for n, ln in enumerate(lines, 1):
            ln = ln.strip()
            if not ln or ln.startswith("#"):
                continue
            if not public_key_line(ln):
                raise ValueError(f"{f}: line {n}: not an ssh public key (give the .pub file)")
            keys.append(ln)
        if not keys:
            raise ValueError(f"{f}: no ssh public key in it")
        out += keys
    return "".join(k + "\n" for k in out)


def with_authorized_keys(directory: Path, text: str, tmp: Path) -> Path:
    """A copy of directory whose ssh/authorized_keys also holds text's keys."""
    staged = tmp / "config"
    shutil.copytree(directory, staged, symlinks=True)
    ssh = staged / "ssh"
    ssh.mkdir(exist_ok=True)
    ssh.chmod(0o700)  # sshd's StrictModes; the appliance sets these modes at boot too
    ak = staged / AUTHORIZED_KEYS
    old = ak.read_text() if ak.exists() else ""
    ak.write_text(old + ("\n" if old and not old.endswith("\n") else "") + text)
    ak.chmod(0o600)
    return staged


def seed_config(image: Path, directory: Path, authorized_keys: list[Path] = ()) -> None:
    """Replace image's /config with directory's files (plus the public keys of
    authorized_keys in ssh/authorized_keys, if any)."""
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    keys = authorized_keys_text(list(authorized_keys)) if authorized_keys else ""
    fmt = disk_format(image)
    with tempfile.TemporaryDirectory(prefix="fwseed-") as tmp:
        if keys:
            directory = with_authorized_keys(directory, keys, Path(tmp))
        if fmt == "qcow2":
            head = Path(tmp) / "head"
            _qemu(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=34",
                   f"if={image}", f"of={head}"])
            gpt = head.read_bytes()
        else:
            with open(image, "rb") as f:
                gpt = f.read(34 * 512)
        try:
            part = find_partition(parse_gpt(gpt), CONFIG_PARTLABEL)
        except UpgradeError as e:
            raise ValueError(f"{image}: {e}") from None
        fs = Path(tmp) / "config.ext4"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "fwconfig", "-d", str(directory),
                        "-E", "root_owner=0:0", str(fs), f"{part.size // 1024}k"],
                       check=True, capture_output=True)
        if fmt == "qcow2":
            _qemu(["qemu-io", "-f", "qcow2", "-c",
                   f"write -s {fs} {part.offset} {fs.stat().st_size}", str(image)])
            return
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

IMAGE_TEST_CLUSTER = (
    '[cluster]\nname = "imgtest"\nsecret_file = "/etc/fwcluster/secret"\n\n'
    '[sync]\ninterface = "sync0"\n\n'
    '[[member]]\nname = "fw1"\nsync_address = "203.0.113.1"\n\n'
    '[[member]]\nname = "fw2"\nsync_address = "203.0.113.2"\nadvskew = 100\n\n'
    '[[vip]]\nvhid = 1\ninterface = "lan0"\naddress = "192.0.2.1/24"\n')


def write_member_config(d: Path, node: str, cluster_toml: str, nics, secret: str,
                        root_password: str | None = None) -> None:
    """A /config directory for member `node`: cluster.toml, node, hostname,
    secret, root-password (if given) and per NIC (MAC, name, address) a
    .link file naming it and a .network file addressing it."""
    (d / "network").mkdir(parents=True)
    if root_password is not None:
        (d / "root-password").write_text(root_password_hash(root_password) + "\n")
        (d / "root-password").chmod(0o600)
    (d / "cluster.toml").write_text(cluster_toml)
    (d / "node").write_text(node + "\n")
    (d / "hostname").write_text(node + "\n")
    (d / "secret").write_text(secret + "\n")
    (d / "secret").chmod(0o600)
    for mac, name, addr in nics:
        (d / "network" / f"10-{name}.link").write_text(
            f"[Match]\nMACAddress={mac}\n\n[Link]\nName={name}\n")
        (d / "network" / f"20-{name}.network").write_text(
            f"[Match]\nName={name}\n\n[Network]\nAddress={addr}\n"
            # An IPv6 link-local address on every member interface: the
            # kernel sends no neighbour solicitation for forwarded IPv6
            # traffic without one (a new master could not reach the
            # server), and IPv6 CARP adverts and RAs are sent from it.
            f"LinkLocalAddressing=ipv6\n")


def write_vm_config(d: Path, root_password: str | None = None) -> None:
    """A /config for member fw1 of a two-member cluster, for a qemu guest
    with the NICs of image.qemu.VM (MACs in VM_NICS; .link files name them
    lan0 and sync0). Documentation addresses only. Without root_password
    root cannot log in (a configured member needs /config/root-password)."""
    # As strong as fwctl secret generate's (zxcvbn: a phrase of common words
    # is refused, and the daemons would not start).
    write_member_config(d, "fw1", IMAGE_TEST_CLUSTER, VM_NICS, "image-test-Qz7vK2mX9pL4wR",
                        root_password)

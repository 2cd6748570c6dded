"""Write a /config file system from a directory into an existing image
(pre-seed a card before flashing; the boot tests use it too)."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from fwcluster.upgrade import CONFIG_PARTLABEL, find_partition, parse_gpt


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

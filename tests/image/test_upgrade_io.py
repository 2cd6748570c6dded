"""fwctl upgrade's image side on the host: checksum, streaming the root slot
out of .img and .img.xz files into a target (a file standing in for the
inactive partition). The guest side is in test_boot_and_upgrade.py."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from fwcluster.core import slots as ab
from fwcluster.fwctl import upgrade as cli

MIB = 1 << 20


@pytest.fixture
def small_image(tmp_path) -> tuple[Path, bytes]:
    """An 8 MiB GPT disk whose fwroot-a (sectors 2048.., 4 MiB) holds random bytes."""
    img = tmp_path / "fw-9.9-amd64.img"
    with open(img, "wb") as f:
        f.truncate(8 * MIB)
    script = ("label: gpt\nunit: sectors\nfirst-lba: 2048\n"
              "start=2048, size=8192, name=\"fwroot-a\"\n"
              "start=10240, size=4096, name=\"fwroot-b\"\n")
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(img)],
                   input=script, text=True, check=True)
    payload = os.urandom(4 * MIB)
    with open(img, "r+b") as f:
        f.seek(MIB)
        f.write(payload)
    return img, payload


def write_sums(*files: Path) -> Path:
    base = files[0].name.split(".img")[0]
    sums = files[0].with_name(base + ".sha256")
    sums.write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files))
    return sums


def test_checksum_file_is_found_next_to_the_image(small_image):
    img, _ = small_image
    assert cli.checksum_file_for(img).name == "fw-9.9-amd64.sha256"
    assert cli.checksum_file_for(img.with_name(img.name + ".xz")).name == "fw-9.9-amd64.sha256"


def test_verify_accepts_good_and_refuses_changed_image(small_image):
    img, _ = small_image
    sums = write_sums(img)
    assert cli.verify(img, sums) == hashlib.sha256(img.read_bytes()).hexdigest()
    with open(img, "r+b") as f:
        f.seek(5 * MIB)
        f.write(b"tampered")
    with pytest.raises(ab.UpgradeError, match="sha256 mismatch"):
        cli.verify(img, sums)


@pytest.mark.parametrize("compressed", [False, True])
def test_write_slot_streams_slot_a_into_target(small_image, tmp_path, compressed):
    img, payload = small_image
    if compressed:
        subprocess.run(["xz", "-T0", "-1", "-k", str(img)], check=True)
        img = img.with_name(img.name + ".xz")
    target = tmp_path / "slot-b"
    target.write_bytes(b"\xff" * (5 * MIB))  # old contents, larger than the slot
    seen = []
    n = cli.write_slot(img, str(target), lambda done, total: seen.append((done, total)))
    assert n == len(payload)
    data = target.read_bytes()
    assert data[:len(payload)] == payload
    assert seen[-1] == (len(payload), len(payload))


def test_write_slot_refuses_small_target_and_truncated_image(small_image, tmp_path):
    img, _ = small_image
    small = tmp_path / "small"
    small.write_bytes(bytes(MIB))
    with pytest.raises(ab.UpgradeError, match="larger than"):
        cli.write_slot(img, str(small))
    cut = tmp_path / "cut.img"
    cut.write_bytes(img.read_bytes()[:3 * MIB])
    target = tmp_path / "t"
    target.write_bytes(bytes(5 * MIB))
    with pytest.raises(ab.UpgradeError, match="truncated"):
        cli.write_slot(cut, str(target))


def test_boot_disk_refuses_a_non_ab_system():
    with pytest.raises(ab.UpgradeError, match="not booted from an fwcluster A/B image"):
        cli.BootDisk("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro")


def fwctl(*argv: str) -> subprocess.CompletedProcess:
    import sys
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "fwcluster.fwctl", *argv], capture_output=True,
                          text=True, cwd=root, timeout=60)


def test_fwctl_upgrade_usage_errors(tmp_path):
    p = fwctl("upgrade")
    assert p.returncode == 2 and "give IMAGE.img[.xz], or --status" in p.stderr
    p = fwctl("upgrade", str(tmp_path / "nope.img"))
    assert p.returncode == 2 and "nope.img: no such file" in p.stderr
    # This host was not booted from an appliance image: one clear line, exit 1.
    p = fwctl("upgrade", "--status")
    assert p.returncode == 1 and p.stderr.startswith("error: upgrade: this system was not booted")

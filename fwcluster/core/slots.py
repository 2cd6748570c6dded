"""A/B root slots: the pure logic of upgrades and boot fallback.

The disk (see image/plan.py) has two root slots, fwroot-a and fwroot-b. GRUB
reads its environment block (grubenv on the EFI system partition):

    good_slot   the slot that last came up healthy; booted by default
    trial_slot  a slot to boot once; GRUB clears it *before* booting it, so
                if that boot never reports healthy, the next boot is good_slot
    a_version, b_version   what each slot holds (shown by `fwctl upgrade --status`)

After an upgrade wrote the inactive slot, trial_slot names it. The health
check on the trial boot promotes it to good_slot when carpd and syncd run;
otherwise it reboots, and GRUB falls back to good_slot.

This module has no I/O beyond what its callers hand it (bytes and strings);
fwcluster/fwctl/upgrade.py does the I/O (its --boot-check is the health check
that fwcluster-health.service runs).
"""
from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass

GRUBENV_SIZE = 1024
GRUBENV_HEADER = b"# GRUB Environment Block\n"
SLOTS = ("a", "b")
SLOT_PARTLABEL = {"a": "fwroot-a", "b": "fwroot-b"}
ESP_PARTLABEL = "fwesp"
CONFIG_PARTLABEL = "fwconfig"
_VALUE = re.compile(r"^[A-Za-z0-9._+:~-]*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UpgradeError(Exception):
    pass


# --- grubenv ----------------------------------------------------------------

def parse_grubenv(data: bytes) -> dict[str, str]:
    if len(data) != GRUBENV_SIZE or not data.startswith(GRUBENV_HEADER):
        raise UpgradeError(f"not a GRUB environment block ({len(data)} bytes)")
    env = {}
    for line in data[len(GRUBENV_HEADER):].split(b"\n"):
        if not line or line.startswith(b"#"):
            continue
        name, sep, value = line.decode("utf-8", "replace").partition("=")
        if sep:
            env[name] = value.replace("\\\\", "\\")
    return env


def render_grubenv(env: dict[str, str]) -> bytes:
    body = GRUBENV_HEADER
    for name, value in env.items():
        if not _NAME.match(name) or not _VALUE.match(value):
            raise UpgradeError(f"grubenv: refusing {name}={value!r} (plain names and values only)")
        body += f"{name}={value}\n".encode()
    if len(body) > GRUBENV_SIZE:
        raise UpgradeError("grubenv: variables do not fit in 1024 bytes")
    return body + b"#" * (GRUBENV_SIZE - len(body))


def initial_env(version: str) -> dict[str, str]:
    """The environment of a freshly flashed image: slot A good, B empty."""
    return {"good_slot": "a", "trial_slot": "", "a_version": version, "b_version": ""}


# --- slot decisions ---------------------------------------------------------

def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def booted_slot(cmdline: str) -> str | None:
    """The slot the running kernel was started from (fwcluster.slot=X)."""
    for word in cmdline.split():
        if word.startswith("fwcluster.slot="):
            slot = word.split("=", 1)[1]
            return slot if slot in SLOTS else None
    return None


def plan_upgrade(env: dict[str, str], running: str, version: str) -> tuple[str, dict[str, str]]:
    """(slot to write, env to save after writing it). The target is always the
    slot we are not running from, so a failed write can never hurt the
    running system."""
    if running not in SLOTS:
        raise UpgradeError(f"cannot tell which slot is running ({running!r})")
    target = other(running)
    new = dict(env)
    new["trial_slot"] = target
    new[f"{target}_version"] = version
    # The running slot is the fallback: it is good, or we would not be here.
    new["good_slot"] = running
    return target, new


def env_before_write(env: dict[str, str], running: str) -> dict[str, str]:
    """While the target slot is being overwritten it holds nothing bootable."""
    target = other(running)
    new = dict(env)
    new[f"{target}_version"] = ""
    if new.get("trial_slot") == target:
        new["trial_slot"] = ""
    new["good_slot"] = running
    return new


@dataclass(frozen=True)
class HealthVerdict:
    action: str  # "commit" | "ok" | "reboot" | "degraded"
    env: dict[str, str] | None  # env to save, or None to leave it
    message: str


def health_verdict(env: dict[str, str], running: str, healthy: bool) -> HealthVerdict:
    """What the boot health check does once it knows whether the daemons run."""
    good = env.get("good_slot", "a")
    trial = running != good
    if healthy and trial:
        new = dict(env)
        new["good_slot"] = running
        new["trial_slot"] = ""
        return HealthVerdict("commit", new, f"slot {running} is healthy: it is now the default")
    if healthy:
        return HealthVerdict("ok", None, f"slot {running} is healthy")
    if trial:
        return HealthVerdict("reboot", None,
                             f"trial slot {running} is not healthy: rebooting into slot {good}")
    return HealthVerdict("degraded", None, f"slot {running} (default) is not healthy")


# --- GPT --------------------------------------------------------------------

@dataclass(frozen=True)
class GptPartition:
    number: int
    name: str
    type_guid: str
    uuid: str
    first_lba: int
    last_lba: int

    @property
    def offset(self) -> int:
        return self.first_lba * 512

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * 512


def parse_gpt(head: bytes, sector: int = 512) -> list[GptPartition]:
    """Partitions from the first sectors of a disk (MBR + GPT header + entries;
    34 sectors are enough for the usual 128 entries)."""
    hdr = head[sector:2 * sector]
    if len(hdr) < 92 or hdr[:8] != b"EFI PART":
        raise UpgradeError("no GPT partition table found")
    entries_lba, count, entry_size = struct.unpack_from("<QII", hdr, 72)
    if entry_size < 128 or count > 1024:
        raise UpgradeError("GPT header is malformed")
    parts = []
    for i in range(count):
        off = entries_lba * sector + i * entry_size
        e = head[off:off + 128]
        if len(e) < 128:
            raise UpgradeError("GPT partition entries are truncated")
        if e[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(GptPartition(i + 1, name, str(uuid.UUID(bytes_le=e[:16])),
                                  str(uuid.UUID(bytes_le=e[16:32])), first, last))
    return parts


def find_partition(parts: list[GptPartition], name: str) -> GptPartition:
    for p in parts:
        if p.name == name:
            return p
    raise UpgradeError(f"no partition named {name!r} (found: {', '.join(p.name for p in parts)})")


# --- checksums --------------------------------------------------------------

def expected_sha256(sums_text: str, filename: str) -> str:
    """The digest for filename from a sha256sum-style file."""
    for line in sums_text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[1].lstrip("*").rsplit("/", 1)[-1] == filename:
            digest = parts[0].lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise UpgradeError(f"malformed sha256 for {filename}: {parts[0]!r}")
            return digest
    raise UpgradeError(f"checksum file has no line for {filename}")

"""Partition plan: profile sizes -> GPT layout of the disk image (pure).

    p1 bios     BIOS boot partition (GRUB core.img for legacy boot)
    p2 fwesp    EFI system partition: GRUB for UEFI, grub.cfg, grubenv
    p3 fwroot-a root slot A (ext4, mounted read-only)
    p4 fwroot-b root slot B (same size; written by `fwctl upgrade`)
    p5 fwconfig persistent /config (ext4)

Partitions are aligned to 1 MiB. The partition names are the contract with
the appliance: fstab, grub.cfg and fwcluster.core.slots find the parts by them.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

SECTOR = 512
MIB = 1024 * 1024
MIB_SECTORS = MIB // SECTOR

TYPE_BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
TYPE_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
# Plain "Linux filesystem data" for slots and /config, not the discoverable
# root type: systemd's gpt-auto generator must not guess mounts for us.
TYPE_LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"

NAME_BIOS, NAME_ESP, NAME_CONFIG = "bios", "fwesp", "fwconfig"
SLOT_NAMES = {"a": "fwroot-a", "b": "fwroot-b"}


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    type_guid: str
    start: int  # sectors
    size: int  # sectors
    uuid: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR


@dataclass(frozen=True)
class Plan:
    disk_uuid: str
    total_sectors: int
    partitions: tuple[Partition, ...]

    def by_name(self, name: str) -> Partition:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError(name)

    def slot(self, letter: str) -> Partition:
        return self.by_name(SLOT_NAMES[letter])

    @property
    def size_bytes(self) -> int:
        return self.total_sectors * SECTOR


def make_plan(size_mib: int, bios_grub_mib: int, esp_mib: int, config_mib: int,
              seed: str | None = None) -> Plan:
    """Lay out the disk. seed makes the GUIDs reproducible (same seed, same
    GUIDs); None gives fresh random ones."""
    def guid(what: str) -> str:
        if seed is None:
            return str(uuid.uuid4())
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fwcluster:{seed}:{what}"))

    # 1 MiB before the first partition (protective MBR, GPT) and 1 MiB after
    # the last (backup GPT), both more than the 34/33 sectors GPT needs.
    slot_mib = (size_mib - 2 - bios_grub_mib - esp_mib - config_mib) // 2
    if slot_mib < 128:
        raise ValueError(f"image of {size_mib} MiB leaves {slot_mib} MiB per root slot (need >= 128)")
    # /config takes what rounding the slots down left over.
    config_mib = size_mib - 2 - bios_grub_mib - esp_mib - 2 * slot_mib
    parts = []
    start_mib = 1
    for number, (name, type_guid, mib) in enumerate((
            (NAME_BIOS, TYPE_BIOS_BOOT, bios_grub_mib),
            (NAME_ESP, TYPE_ESP, esp_mib),
            (SLOT_NAMES["a"], TYPE_LINUX, slot_mib),
            (SLOT_NAMES["b"], TYPE_LINUX, slot_mib),
            (NAME_CONFIG, TYPE_LINUX, config_mib)), start=1):
        parts.append(Partition(number, name, type_guid, start_mib * MIB_SECTORS,
                               mib * MIB_SECTORS, guid(name)))
        start_mib += mib
    total_mib = start_mib + 1
    if total_mib > size_mib:
        raise ValueError(f"layout needs {total_mib} MiB, more than image size {size_mib} MiB")
    return Plan(guid("disk"), size_mib * MIB_SECTORS, tuple(parts))


def sfdisk_script(plan: Plan) -> str:
    """Input for `sfdisk IMAGE` that writes exactly this plan."""
    lines = ["label: gpt", f"label-id: {plan.disk_uuid}", "unit: sectors",
             f"first-lba: {MIB_SECTORS}", ""]
    for p in plan.partitions:
        lines.append(f"start={p.start}, size={p.size}, type={p.type_guid}, "
                     f"uuid={p.uuid}, name=\"{p.name}\"")
    return "\n".join(lines) + "\n"

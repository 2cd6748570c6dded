"""GRUB for BIOS and UEFI without a loop device or grub-install, made by the
grub-mkimage and modules of the image's own release (image.base's tools root).

Both platforms run the same grub.cfg and grubenv from /grub on the EFI
system partition. UEFI: grub-mkimage builds /EFI/BOOT/BOOTX64.EFI (the
removable-media path, so no NVRAM entry is needed). BIOS: grub-mkimage
builds core.img, which goes into the BIOS boot partition; boot.img goes
into the MBR. What grub-bios-setup would patch is patched here: the LBA of
core.img in boot.img, and the block list in core.img's first sector.
"""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from fwcluster.core.slots import BOOTNAMES
from fwcluster.core.slots import grub_cfg as slots_grub_cfg
from image.base import release_tool
from image.plan import SECTOR, Plan

GRUB_DIR = "/grub"  # on the ESP
# Everything grub.cfg needs, built in: no module directories on the ESP.
COMMON_MODULES = ["part_gpt", "fat", "ext2", "normal", "configfile", "linux", "loadenv",
                  "regexp", "test", "echo", "sleep", "search", "serial", "terminal",
                  "halt", "reboot", "gzio", "xzio", "boot", "minicmd"]
BIOS_MODULES = ["biosdisk"]
EFI_MODULES = ["efi_gop", "efi_uga", "video", "video_fb"]

# boot.img offsets (GRUB's include/grub/i386/pc/boot.h)
KERNEL_SECTOR_OFFSET = 0x5C
DRIVE_CHECK_OFFSET = 0x66
MBR_CODE_END = 0x1B8  # keep the disk signature and the partition table
BLOCKLIST_SIZE = 12  # at the end of core.img's first sector: u64 start, u16 len, u16 seg


def grub_cfg(plan: Plan, serial_console: str, timeout: int = 1) -> str:
    """grub.cfg for the plan's slots (the rules: fwcluster.core.slots.grub_cfg)."""
    parts = {name: (plan.slot(name.lower()).number, plan.slot(name.lower()).uuid) for name in BOOTNAMES}
    return slots_grub_cfg(parts, serial_console, timeout)


def patch_boot_img(boot_img: bytes, mbr: bytes, core_lba: int) -> bytes:
    """The MBR to write: boot.img's code pointing at core.img, with the
    existing (protective) MBR's signature and partition table kept."""
    if len(boot_img) != SECTOR or len(mbr) != SECTOR:
        raise ValueError("boot.img and the MBR must be one sector each")
    code = bytearray(boot_img[:MBR_CODE_END])
    struct.pack_into("<Q", code, KERNEL_SECTOR_OFFSET, core_lba)
    # Hard-disk boot: trust only drive numbers with the 0x80 bit (as grub-bios-setup).
    code[DRIVE_CHECK_OFFSET:DRIVE_CHECK_OFFSET + 2] = b"\x90\x90"
    return bytes(code) + mbr[MBR_CODE_END:]


def patch_core_img(core: bytes, core_lba: int, room_sectors: int) -> bytes:
    """core.img with its first sector's block list naming the rest of it."""
    sectors = -(-len(core) // SECTOR)
    if sectors > room_sectors:
        raise ValueError(f"core.img needs {sectors} sectors, the BIOS boot partition has {room_sectors}")
    core = bytearray(core + b"\0" * (sectors * SECTOR - len(core)))
    off = SECTOR - BLOCKLIST_SIZE
    _, _, segment = struct.unpack_from("<QHH", core, off)
    struct.pack_into("<QHH", core, off, core_lba + 1, sectors - 1, segment)
    return bytes(core)


def mkimage(tools: Path, fmt: str, prefix: str, modules: list[str], out: Path) -> None:
    """The release's grub-mkimage with the release's modules (not the host's)."""
    subprocess.run(release_tool(tools, "grub-mkimage", "-d", str(tools / "usr/lib/grub" / fmt),
                                "-O", fmt, "-p", prefix, "-o", str(out), *modules),
                   check=True, capture_output=True)


def build_loaders(tools: Path, workdir: Path) -> tuple[Path, Path]:
    """(core.img for BIOS, BOOTX64.EFI) built from the tools root's GRUB."""
    core = workdir / "core.img"
    efi = workdir / "BOOTX64.EFI"
    esp_number = 2  # image.plan puts the ESP second
    # "(,gptN)": the partition on the disk GRUB was loaded from.
    mkimage(tools, "i386-pc", f"(,gpt{esp_number}){GRUB_DIR}", COMMON_MODULES + BIOS_MODULES, core)
    # No device: the device the EFI binary was loaded from (the ESP).
    mkimage(tools, "x86_64-efi", GRUB_DIR, COMMON_MODULES + EFI_MODULES, efi)
    return core, efi


def boot_img(tools: Path) -> Path:
    return tools / "usr/lib/grub/i386-pc/boot.img"


def install_bios(disk: Path, plan: Plan, core_img: Path, boot_img: Path) -> None:
    bios = plan.by_name("bios")
    core = patch_core_img(core_img.read_bytes(), bios.start, bios.size)
    with open(disk, "r+b") as f:
        mbr = f.read(SECTOR)
        f.seek(0)
        f.write(patch_boot_img(boot_img.read_bytes(), mbr, bios.start))
        f.seek(bios.offset)
        f.write(core)

"""A/B root slots under RAUC: the pure rules of updates and boot fallback.

The disk (see image/plan.py) has two root slots, fwroot-a and fwroot-b,
which RAUC knows as rootfs.0 (bootname A) and rootfs.1 (bootname B). GRUB
reads its environment block (grubenv on the EFI system partition) in the
scheme of RAUC's GRUB backend (image/boot.py has the grub.cfg):

    ORDER       bootnames by priority ("A B"); an install puts its slot first
    A_OK, B_OK  1: the slot may be booted (an install sets it, mark-bad clears it)
    A_TRY, B_TRY  1: GRUB has booted it and it has not been marked good since;
                GRUB skips such a slot, so an unconfirmed boot is tried once

The health check on every boot (fwctl upgrade --boot-check) marks the
running slot good through RAUC when carpd and syncd run; a slot on trial
(installed, never yet healthy) that is not healthy is marked bad and the
member reboots into the other slot.

Images before RAUC (0.1) used good_slot/trial_slot instead; migrate_env()
turns such an environment into this scheme on the first boot of the new
image. This module has no I/O: fwcluster/fwctl/upgrade.py does it.
"""
from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass

GRUBENV_SIZE = 1024
GRUBENV_HEADER = b"# GRUB Environment Block\n"
BOOTNAMES = ("A", "B")
SLOT_PARTLABEL = {"A": "fwroot-a", "B": "fwroot-b"}
RAUC_SLOT = {"A": "rootfs.0", "B": "rootfs.1"}
ESP_PARTLABEL = "fwesp"
CONFIG_PARTLABEL = "fwconfig"
FLASHED = "as flashed"  # the version shown for a slot RAUC never installed (no bundle record)
_VALUE = re.compile(r"^[A-Za-z0-9._+:~ -]*$")
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


def initial_env() -> dict[str, str]:
    """The environment of a freshly flashed image: A bootable, B empty."""
    return {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}


def is_rauc_env(env: dict[str, str]) -> bool:
    return bool(env.get("ORDER"))


def migrate_env(env: dict[str, str], booted: str) -> dict[str, str]:
    """A 0.1 environment (good_slot/trial_slot) in RAUC's scheme, written on
    the first boot of a RAUC image, which the 0.1 grub.cfg started as a
    one-shot trial. The booted slot is on trial (TRY=1: GRUB would not pick
    it again unless it is marked good); the old good slot stays bootable, so
    mark-bad (or no mark at all) falls back to it. The old variables stay for
    the old image's own health check, should it run again."""
    if booted not in BOOTNAMES:
        raise UpgradeError(f"cannot tell which slot is running ({booted!r})")
    other = other_slot(booted)
    old_good = (env.get("good_slot") or "a").upper()
    new = {k: v for k, v in env.items() if k not in ("ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY")}
    new["trial_slot"] = ""
    new.update({"ORDER": f"{booted} {other}", f"{booted}_OK": "1", f"{booted}_TRY": "1",
                f"{other}_OK": "1" if old_good == other else "0", f"{other}_TRY": "0"})
    return new


# --- slot decisions ---------------------------------------------------------

def other_slot(bootname: str) -> str:
    return "B" if bootname == "A" else "A"


def booted_slot(cmdline: str) -> str | None:
    """The bootname the running kernel was started from: rauc.slot=X, or
    fwcluster.slot=x of a 0.1 grub.cfg."""
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key in ("rauc.slot", "fwcluster.slot") and value.upper() in BOOTNAMES:
            return value.upper()
    return None


def commit_mark(bootname: str, installed: str | None) -> str:
    """What the health check records for a slot it found healthy: the slot
    and when RAUC installed it (none for the slot the card was flashed with)."""
    return f"{bootname} {installed or '-'}"


def on_trial(bootname: str, installed: str | None, committed: str) -> bool:
    """A slot is on trial from its install until a boot of it is healthy."""
    return commit_mark(bootname, installed) != committed.strip()


@dataclass(frozen=True)
class HealthVerdict:
    action: str  # "commit" | "ok" | "fallback" | "degraded"
    mark: str  # what to tell RAUC about the running slot: "good" | "bad"
    message: str


def health_verdict(booted: str, healthy: bool, trial: bool, other_good: bool) -> HealthVerdict:
    """What the boot health check does once it knows whether the daemons run.
    GRUB has set the booted slot's TRY flag: only mark-good lets it boot again
    by default, so a committed slot that is unhealthy is still marked good
    (falling back to an older version would not fix a configuration problem,
    and two unhealthy slots would take turns for ever)."""
    other = other_slot(booted)
    if healthy:
        if trial:
            return HealthVerdict("commit", "good", f"slot {booted} is healthy: it is now the default")
        return HealthVerdict("ok", "good", f"slot {booted} is healthy")
    if trial and other_good:
        return HealthVerdict("fallback", "bad",
                             f"trial slot {booted} is not healthy: rebooting into slot {other}")
    return HealthVerdict("degraded", "good", f"slot {booted} is not healthy; "
                         f"{'no good slot to fall back to' if trial else 'it stays the default'}")


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


# --- grub.cfg -----------------------------------------------------------------

def grub_cfg(parts: dict[str, tuple[int, str]], serial_console: str, timeout: int = 1) -> str:
    """grub.cfg for slots {bootname: (GPT partition number, PARTUUID)}: pick
    the slot in RAUC's GRUB scheme, the first of ORDER that is OK and not
    already tried; booting it sets its TRY flag, which only `rauc status
    mark-good` clears. If every slot is used up, the first OK one of ORDER
    boots anyway (a member that boots nothing cannot be repaired from its
    console). The image builder and the 0.1 -> RAUC migration both write it."""
    console = f"console=tty0 console={serial_console}" if serial_console else "console=tty0"
    lines = ["# fwcluster boot: generated by fwcluster.core.slots, do not edit.",
             "# A/B slots driven by RAUC: ORDER, A_OK/A_TRY, B_OK/B_TRY in grubenv."]
    if serial_console:
        tty, speed = serial_console.split(",")
        lines += [f"serial --unit={tty.removeprefix('ttyS')} --speed={speed}",
                  "terminal_input serial console", "terminal_output serial console"]

    def pick(cond: str, indent: str) -> list[str]:
        return [f"{indent}for s in $ORDER; do", f"{indent}  if [ -z \"$slot\" ]; then"] + [
            f"{indent}    if [ \"$s\" = {n} -a \"${n}_OK\" = 1{cond.format(n=n)} ]; then set slot={n}; fi"
            for n in BOOTNAMES] + [f"{indent}  fi", f"{indent}done"]

    lines += [
        # $root is the ESP here; the slots are on the same disk.
        "regexp --set=1:bootdisk '^(.*),[a-z]*[0-9]+$' \"$root\"",
        *(f"set {k}=\"{v}\"" for k, v in initial_env().items()),
        "load_env",
        "set slot=",
        *pick(" -a \"${n}_TRY\" != 1", ""),
        "if [ -z \"$slot\" ]; then",
        "  echo \"fwcluster: no untried slot left: booting the first good one of $ORDER\"",
        *pick("", "  "),
        "fi",
        "if [ -z \"$slot\" ]; then set slot=A; fi",
        "if [ \"$slot\" = A ]; then set A_TRY=1; else set B_TRY=1; fi",
        "save_env A_TRY B_TRY",
        "echo \"fwcluster: booting slot $slot (order $ORDER)\"",
        "set default=\"$slot\"",
        f"set timeout={timeout}",
        "",
    ]
    for name in BOOTNAMES:
        number, partuuid = parts[name]
        lines += [f"menuentry 'fwcluster slot {name}' --id {name} {{",
                  f"  set root=($bootdisk,gpt{number})",
                  f"  linux /vmlinuz root=PARTUUID={partuuid} ro rauc.slot={name} "
                  f"fwcluster.slot={name.lower()} {console} panic=10 fsck.repair=yes quiet",
                  "  initrd /initrd.img",
                  "}"]
    return "\n".join(lines) + "\n"


# --- RAUC's answers -----------------------------------------------------------

_PROGRESS = re.compile(r"^\s*\d{1,3}% ")
# (what RAUC says, what the operator reads): bundles RAUC refuses before it
# writes anything, because it checks them when it opens them.
REFUSALS = (
    ("Signature size is 0", "it is not signed"),
    ("signature verification failed", "its signature does not verify against /etc/rauc/keyring.pem "
     "(signed by another key?)"),
    ("payload is corrupted", "its content was changed after signing (verity check failed)"),
    ("Verification of data area failed", "its content was changed after signing (verity check failed)"),
    ("Compatible mismatch", "it is made for another system (compatible string differs)"),
    ("exceeds bundle size", "it is truncated or not a RAUC bundle"),
    ("Invalid bundle format", "it is truncated or not a RAUC bundle"),
    ("too small", "it is truncated or not a RAUC bundle"),
)


def progress_line(line: str) -> bool:
    """`rauc install` progress ("  40% Checking bundle")."""
    return bool(_PROGRESS.match(line))


def rauc_error_line(text: str) -> str:
    """The one line of RAUC's output that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("LastError:"):
            return ln.split(":", 1)[1].strip()
    for ln in reversed(lines):
        if not progress_line(ln) and not ln.startswith(("Installing `", "idle", "installing")):
            return re.sub(r"^rauc-Message: [\d:.]+: ", "", ln)
    return lines[-1] if lines else "no output"


def _refusal(text: str) -> str | None:
    for needle, reason in REFUSALS:
        if needle.lower() in text.lower():
            return reason
    return None


def is_refusal(text: str) -> bool:
    return _refusal(text) is not None


def install_failure(text: str) -> str:
    """One line for a failed `rauc install`."""
    raw = rauc_error_line(text)
    reason = _refusal(text)
    if reason:
        return f"refused: {reason}; nothing was written (rauc: {raw})"
    return f"installation failed (rauc: {raw})"


def cluster_blocker(carp: dict) -> str | None:
    """Why this member must not be upgraded now, from carpd's status: it
    carries traffic, as master of a vip or (active-active) as owner of hash
    buckets. The vips of an active-active cluster are held on every member,
    so their elections' master alone does not say who carries flows."""
    if carp.get("maintenance"):
        return None
    held = [str(v["vhid"]) for v in carp.get("vips", []) if v.get("state") == "MASTER"]
    owned = [str(b) for b in (carp.get("buckets") or {}).get("owned") or ()]
    what = ([f"MASTER of vip {', '.join(held)}"] if held else []) + \
        ([f"the owner of bucket {', '.join(owned)}"] if owned else [])
    if not what:
        return None
    return (f"this member is {' and '.join(what)}: run `fwctl maintenance on` first "
            "(the peers take its traffic over), then upgrade; or give --force")


def rollback_target(view: dict) -> str:
    """The slot `fwctl upgrade --rollback` makes the next boot (RAUC's
    mark-active of the other slot), from status_view(): the slot not
    running, if it holds a release RAUC still counts as good. Refused when
    the other slot is already the next boot (an install not booted yet, or
    a rollback already asked): a second call must not undo the first. The
    slot the card was flashed with has no bundle record (no version) but is
    good; a slot never written is not good (B_OK=0 at flashing, and RAUC
    marks a slot bad before it writes it)."""
    booted = view.get("booted")
    other = next((s for s in view["slots"] if s["bootname"] != booted), None)
    if other is None or (not other["version"] and other["boot_status"] != "good"):
        raise UpgradeError("the other slot holds no release: nothing to roll back to")
    if other["boot_status"] != "good":
        raise UpgradeError(f"slot {other['bootname']} ({other['version']}) is marked "
                           f"{other['boot_status'] or 'unknown'}, not good: it failed its boot check "
                           "or was never booted; not rolling back to it")
    if view.get("primary") == other["bootname"]:
        raise UpgradeError(f"slot {other['bootname']} ({other['version']}) is already the next boot")
    return other["bootname"]


def status_view(st: dict, release: dict[str, str]) -> dict:
    """`rauc status --output-format=json` (+ the running release) as fwctl shows it."""
    raw = st.get("slots") or []
    items = [kv for d in raw for kv in d.items()] if isinstance(raw, list) else list(raw.items())
    booted = st.get("booted")
    primary = next((s.get("bootname") for n, s in items if n == st.get("boot_primary")), None)
    slots = []
    for name, s in sorted(items, key=lambda kv: kv[1].get("bootname") or ""):
        if s.get("class") != "rootfs":
            continue
        ss = s.get("slot_status") or {}
        bundle = ss.get("bundle") or {}
        bootname = s.get("bootname")
        version = bundle.get("version")
        if not version and bootname == booted:
            version = release.get("VERSION")  # the slot the card was flashed with
        state = []
        if bootname == booted:
            state.append("running")
        if bootname == primary:
            state.append("next boot")
        state.append(s.get("boot_status") or "?")
        slots.append({"slot": name, "bootname": bootname, "device": s.get("device", ""),
                      "version": version, "boot_status": s.get("boot_status"),
                      "installed": (ss.get("installed") or {}).get("timestamp"), "state": state})
    return {"compatible": st.get("compatible"), "booted": booted, "primary": primary,
            "signing": release.get("SIGNING", "unknown"), "slots": slots}

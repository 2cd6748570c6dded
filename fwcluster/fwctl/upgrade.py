"""fwctl upgrade BUNDLE.raucb | --status | --rollback | --boot-check

A front-end to RAUC (`rauc install`, `rauc status`): RAUC checks the
bundle's signature against /etc/rauc/keyring.pem, its compatible string and
every block of its payload before it writes the inactive root slot, and
drives GRUB's A/B variables (fwcluster.core.slots has the rules; this is
the I/O). On a member that carries traffic (master of a vip, owner of
buckets in active-active) it refuses to install or roll back unless
maintenance is on. --rollback makes the other slot, the release before an
upgrade, the next boot again (`rauc status mark-active other`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fwcluster.core import slots as ab
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, emit

RELEASE_FILE = Path("/usr/lib/fwcluster/release")
CONFIG_FILE = Path("/etc/fwcluster/cluster.toml")  # -> /config/cluster.toml
KEYRING = Path("/etc/rauc/keyring.pem")
GRUB_DIR = Path("/boot/efi/grub")  # the ESP, automounted
COMMITTED = Path("/config/rauc/fwcluster-committed")
DAEMONS = ("fwcluster-carpd.service", "fwcluster-syncd.service")


def register(sub) -> None:
    p = sub.add_parser("upgrade", help="install a signed RAUC bundle into the other root slot",
                       description="Install BUNDLE (fwcluster-VERSION-amd64.raucb) with RAUC: its "
                       "signature, compatible string and payload are checked before the inactive "
                       "root slot is written; the next boot tries it, and if it does not come up "
                       "healthy (carpd and syncd running), the boot after returns to this slot.")
    p.add_argument("bundle", nargs="?", help="fwcluster-VERSION-amd64.raucb")
    p.add_argument("--status", action="store_true", help="show both slots and the keyring")
    p.add_argument("--rollback", action="store_true",
                   help="boot the other slot (the release before the upgrade) from the next reboot on")
    p.add_argument("--reboot", action="store_true",
                   help="reboot into the new slot when installed (or rolled back)")
    p.add_argument("--force", action="store_true",
                   help="install or roll back even though this member carries traffic and is "
                   "not in maintenance")
    p.add_argument("--boot-check", action="store_true",
                   help="(run at boot by fwcluster-health.service) mark this slot good or fall back")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="--boot-check: seconds to wait for the daemons (default 60)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        if args.boot_check:
            return boot_check(args)
        if args.status:
            return status(args)
        if args.rollback:
            return rollback(args)
        if not args.bundle:
            print("error: upgrade: give BUNDLE.raucb, --status or --rollback", file=sys.stderr)
            return EXIT_USAGE
        return do_upgrade(args)
    except ab.UpgradeError as e:
        print(f"error: upgrade: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except OSError as e:
        print(f"error: upgrade: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_PROBLEM


# --- RAUC -------------------------------------------------------------------

def rauc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["rauc", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ab.UpgradeError("rauc is not installed on this system (an image before 0.2?)") from None


def rauc_status() -> dict:
    p = rauc("status", "--detailed", "--output-format=json")
    if p.returncode != 0:
        raise ab.UpgradeError(f"rauc status failed: {ab.rauc_error_line(p.stdout + p.stderr)}")
    return json.loads(p.stdout)


def release(path: Path = RELEASE_FILE) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# --- fwctl upgrade BUNDLE -----------------------------------------------------

def cluster_blocker(force: bool) -> str | None:
    """Why installing now would hurt the cluster (None: go on). A member
    that is not configured, or whose carpd does not answer, carries nothing."""
    if force or not CONFIG_FILE.exists():
        return None
    from fwcluster import configfile
    from fwcluster.core import config
    from fwcluster.fwctl import DaemonError, ask
    try:
        carp = ask(configfile.load(CONFIG_FILE), "carpd", {"cmd": "status"})
    except (config.ConfigError, DaemonError):
        return None
    return ab.cluster_blocker(carp)


def precheck(bundle: Path) -> str | None:
    """RAUC's output when it refuses the bundle, None when it passes.
    `rauc install` checks a verity bundle's blocks only as it copies them,
    so a changed byte would be found with the slot half written. `rauc
    extract` checks the signature and then every block before unpacking;
    run without unsquashfs on PATH (the image has none), it stops right
    after that check and writes nothing."""
    target = Path("/run/fwcluster") / f"bundle-check-{os.getpid()}"
    try:
        p = subprocess.run(["/usr/bin/rauc", "extract", f"--keyring={KEYRING}", str(bundle.resolve()),
                            str(target)], capture_output=True, text=True, timeout=1800,
                           env=dict(os.environ, PATH="/nonexistent"))
    except FileNotFoundError:
        raise ab.UpgradeError("rauc is not installed on this system (an image before 0.2?)") from None
    text = p.stdout + p.stderr
    if "Verifying bundle payload" in text and "unsquashfs" in text and not ab.is_refusal(text):
        return None
    return text


def do_upgrade(args) -> int:
    bundle = Path(args.bundle)
    if not bundle.is_file():
        print(f"error: upgrade: {bundle}: no such file", file=sys.stderr)
        return EXIT_USAGE
    why = cluster_blocker(args.force)
    if why:
        print(f"error: upgrade: {why}", file=sys.stderr)
        return EXIT_PROBLEM
    started = time.monotonic()
    if not args.json:
        print(f"checking {bundle.name} (signature, every block of its payload) ...", flush=True)
    text = precheck(bundle)
    if text is not None:
        print(f"error: upgrade: {bundle.name}: {ab.install_failure(text)}", file=sys.stderr)
        return EXIT_USAGE if ab.is_refusal(text) else EXIT_PROBLEM
    if not args.json:
        print(f"installing {bundle.name} with RAUC ...", flush=True)
    proc = subprocess.Popen(["rauc", "install", str(bundle.resolve())], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if ab.progress_line(line) and not args.json:
            print(f"  {line.strip()}", flush=True)
    rc = proc.wait()
    text = "\n".join(lines)
    if rc != 0:
        print(f"error: upgrade: {bundle.name}: {ab.install_failure(text)}", file=sys.stderr)
        return EXIT_USAGE if ab.is_refusal(text) else EXIT_PROBLEM
    st = rauc_status()
    view = ab.status_view(st, release())
    target = view["primary"]
    slot = next(s for s in view["slots"] if s["bootname"] == target)
    result = {"installed_slot": target, "device": slot["device"], "version": slot["version"],
              "seconds": round(time.monotonic() - started, 1), "trial": True}
    emit(args, result, lambda r: print(
        f"slot {target} now holds {r['version']} (installed in {r['seconds']} s); it boots on "
        f"trial at the next reboot.\nIf it does not come up healthy, the following boot returns "
        f"to slot {ab.other_slot(target)}."))
    if args.reboot:
        subprocess.run(["systemctl", "reboot"], check=False)
    return EXIT_OK


# --- fwctl upgrade --rollback --------------------------------------------------

def rollback(args) -> int:
    why = cluster_blocker(args.force)
    if why:
        print(f"error: upgrade: {why}", file=sys.stderr)
        return EXIT_PROBLEM
    view = ab.status_view(rauc_status(), release())
    target = ab.rollback_target(view)
    p = rauc("status", "mark-active", "other")
    if p.returncode != 0:
        raise ab.UpgradeError(f"rauc status mark-active other failed: "
                              f"{ab.rauc_error_line(p.stdout + p.stderr)}")
    slot = next(s for s in view["slots"] if s["bootname"] == target)
    result = {"next_boot": target, "version": slot["version"] or ab.FLASHED,
              "running": view["booted"]}
    emit(args, result, lambda r: print(
        f"slot {target} ({r['version']}) boots at the next reboot; slot {r['running']} stays "
        f"installed (fwctl upgrade --rollback again returns to it)."))
    if args.reboot:
        subprocess.run(["systemctl", "reboot"], check=False)
    return EXIT_OK


# --- fwctl upgrade --status ---------------------------------------------------

def status(args) -> int:
    data = ab.status_view(rauc_status(), release())

    def human(d):
        if d["signing"] == "development":
            print("WARNING: this image is DEVELOPMENT-SIGNED: it accepts bundles signed with the "
                  "build's development key (docs/upgrade.md)")
        print(f"compatible {d['compatible']}  keyring {KEYRING}  signing {d['signing']}")
        print(f"{'SLOT':5} {'DEVICE':28} {'VERSION':42} STATE")
        for s in d["slots"]:
            print(f"{s['bootname']:5} {s['device']:28} {s['version'] or '(empty)':42} "
                  f"{', '.join(s['state'])}")
    emit(args, data, human)
    return EXIT_OK


# --- fwctl upgrade --boot-check ---------------------------------------------

def daemons_active() -> bool:
    p = subprocess.run(["systemctl", "is-active", "--quiet", *DAEMONS], check=False)
    return p.returncode == 0


def daemons_answer() -> bool:
    """Both daemons answer on their control sockets: running, not just started."""
    from fwcluster import configfile, ctlsock
    from fwcluster.core import config
    try:
        run_dir = configfile.load(CONFIG_FILE).run_dir
    except config.ConfigError:
        return False
    for daemon in ("carpd", "syncd"):
        try:
            ctlsock.request(ctlsock.socket_path(run_dir, daemon), {"cmd": "status"}, timeout=3)
        except (ctlsock.ControlError, ValueError):
            return False
    return True


def restarts() -> int:
    """How often systemd has restarted the daemons in this boot."""
    p = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", *DAEMONS],
                       capture_output=True, text=True, check=False)
    return sum(int(x) for x in p.stdout.split() if x.isdigit())


def wait_healthy(timeout: float, max_restarts: int = 3) -> bool:
    """Both daemons active and answering, three checks in a row (a daemon
    that crashes at start-up flaps between activating and active). A daemon
    that keeps crashing fails the check early."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        if restarts() >= max_restarts:
            return False
        streak = streak + 1 if daemons_active() and daemons_answer() else 0
        if streak >= 3:
            return True
        time.sleep(1)
    return False


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def migrate_from_01(booted: str, cmdline: str) -> bool:
    """First boot of this image on a member flashed with 0.1 (good_slot /
    trial_slot in grubenv, its own grub.cfg): put RAUC's variables in
    grubenv and this image's grub.cfg, for this disk's partitions, on the
    ESP. Returns whether it did."""
    env_file = GRUB_DIR / "grubenv"
    env = ab.parse_grubenv(env_file.read_bytes())
    if ab.is_rauc_env(env):
        return False
    parts = {}
    for name in ab.BOOTNAMES:
        dev = Path(os.path.realpath(f"/dev/disk/by-partlabel/{ab.SLOT_PARTLABEL[name]}")).name
        number = int(Path(f"/sys/class/block/{dev}/partition").read_text())
        p = subprocess.run(["blkid", "-s", "PARTUUID", "-o", "value", f"/dev/{dev}"],
                           capture_output=True, text=True, check=True)
        parts[name] = (number, p.stdout.strip())
    serial = next((w.split("=", 1)[1] for w in cmdline.split()
                   if w.startswith("console=ttyS")), "")
    # grubenv first: the 0.1 grub.cfg ignores RAUC's variables, the new one needs them
    write_atomic(env_file, ab.render_grubenv(ab.migrate_env(env, booted)))
    write_atomic(GRUB_DIR / "grub.cfg", ab.grub_cfg(parts, serial).encode())
    return True


def boot_check(args) -> int:
    cmdline = Path("/proc/cmdline").read_text()
    booted = ab.booted_slot(cmdline)
    if booted is None:
        raise ab.UpgradeError("this system was not booted from an fwcluster A/B image "
                              "(no rauc.slot= on the kernel command line)")
    if migrate_from_01(booted, cmdline):
        print(f"fwcluster: moved this member's boot to RAUC (grubenv, grub.cfg); slot {booted} "
              "is on trial", flush=True)
    if CONFIG_FILE.exists():
        healthy = wait_healthy(args.timeout)
        why = "carpd and syncd running" if healthy else "carpd/syncd not running"
    else:
        # Not configured yet: reaching this point (multi-user) is all we can ask.
        healthy, why = True, "not configured, system up"
    st = rauc_status()
    view = ab.status_view(st, release())
    me = next(s for s in view["slots"] if s["bootname"] == booted)
    other = next(s for s in view["slots"] if s["bootname"] != booted)
    committed = COMMITTED.read_text() if COMMITTED.exists() else ""
    trial = ab.on_trial(booted, me["installed"], committed)
    verdict = ab.health_verdict(booted, healthy, trial, other["boot_status"] == "good")
    p = rauc("status", f"mark-{verdict.mark}", "booted")
    if p.returncode != 0:
        print(f"fwcluster: rauc status mark-{verdict.mark} failed: "
              f"{ab.rauc_error_line(p.stdout + p.stderr)}", flush=True)
    elif verdict.mark == "good" and healthy:
        COMMITTED.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(COMMITTED, (ab.commit_mark(booted, me["installed"]) + "\n").encode())
    print(f"fwcluster: {'ready' if healthy else 'NOT healthy'}: {verdict.message} ({why})", flush=True)
    if verdict.action == "fallback":
        subprocess.run(["systemctl", "reboot"], check=False)
    return EXIT_OK if healthy else EXIT_PROBLEM

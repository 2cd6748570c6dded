"""Boot an appliance image under qemu and drive it over its serial console
(used by tests/image and bench/image).

KVM is used when it really runs a Linux kernel here (on some nested hosts
/dev/kvm exists but guests die with emulation failures); otherwise TCG.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from fwcluster.core.slots import find_partition, parse_gpt

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# "[   53.396461] fwctl[405]: ..." as journald forwards a unit's output to the console
CONSOLE_LOG_LINE = re.compile(r"^\[\s*\d+\.\d+\] [^\s:\[]+(\[\d+\])?: ")


# terminal control sequences (colours, cursor moves) in the console's output
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f]")


def without_console_log(text: str) -> str:
    return "\n".join(ln for ln in text.split("\n") if not CONSOLE_LOG_LINE.match(ln))


class VMError(Exception):
    pass


def disk_format(disk: Path) -> str:
    """"qcow2" (a copy-on-write overlay) or "raw", from the file's magic."""
    with open(disk, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def extract_kernel(image: Path, out_dir: Path) -> tuple[Path, Path]:
    """vmlinuz and initrd.img of slot A, read with debugfs (no mounting)."""
    with open(image, "rb") as f:
        part = find_partition(parse_gpt(f.read(34 * 512)), "fwroot-a")
    slot = out_dir / "slot-a.ext4"
    subprocess.run(["dd", f"if={image}", f"of={slot}", "bs=1M", f"skip={part.offset >> 20}",
                    f"count={part.size >> 20}", "status=none"], check=True)
    out = []
    for link in ("vmlinuz", "initrd.img"):
        target = subprocess.run(["debugfs", "-R", f"stat /{link}", str(slot)], capture_output=True,
                                text=True).stdout
        m = re.search(r'Fast link dest: "([^"]+)"', target)
        name = m.group(1) if m else link
        dst = out_dir / link
        subprocess.run(["debugfs", "-R", f"dump /{name} {dst}", str(slot)], check=True,
                       capture_output=True)
        out.append(dst)
    slot.unlink()
    return out[0], out[1]


def kvm_works(image: Path, cache: Path | None = None, timeout: float = 30.0) -> bool:
    """Boot slot A's kernel under KVM to its first user-space step."""
    if os.environ.get("FWCLUSTER_QEMU_ACCEL") in ("tcg", "kvm"):
        return os.environ["FWCLUSTER_QEMU_ACCEL"] == "kvm"
    if cache and cache.exists():
        return cache.read_text().strip() == "kvm"
    ok = False
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        with tempfile.TemporaryDirectory(prefix="fwkvm-") as tmp:
            kernel, initrd = extract_kernel(image, Path(tmp))
            argv = ["qemu-system-x86_64", "-accel", "kvm", "-m", "512", "-nographic", "-nodefaults",
                    "-serial", "stdio", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
                    "-append", "console=ttyS0 panic=-1 rdinit=/bin/true"]
            try:
                p = subprocess.run(argv, capture_output=True, timeout=timeout)
                out = p.stdout + p.stderr
            except subprocess.TimeoutExpired as e:
                out = (e.stdout or b"") + (e.stderr or b"")
            ok = b"Run /bin/true as init process" in out and b"emulation failure" not in out
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("kvm\n" if ok else "tcg\n")
    return ok


class VM:
    """One qemu guest on a serial console (stdin/stdout pipes)."""

    def __init__(self, disk: Path, log: Path, *, kvm: bool, uefi: bool = False,
                 share: Path | None = None, memory: int = 768, cpus: int = 2,
                 taps: list[tuple[str, str]] | None = None, netns: str | None = None):
        """taps: (MAC, tap device) per NIC instead of the two restricted
        user-mode NICs; netns: run qemu in that network namespace (where
        the tap devices are)."""
        self.disk, self.log_path, self.kvm, self.uefi = disk, log, kvm, uefi
        self.share, self.memory, self.cpus, self.taps, self.netns = share, memory, cpus, taps, netns
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.seq = 0
        self.tmp = tempfile.TemporaryDirectory(prefix="fwvm-")

    def argv(self) -> list[str]:
        fmt = disk_format(self.disk)
        a = (["ip", "netns", "exec", self.netns] if self.netns else []) + [
            "qemu-system-x86_64", "-accel", "kvm" if self.kvm else "tcg", "-m", str(self.memory),
            "-smp", str(self.cpus), "-nographic", "-nodefaults", "-serial", "stdio",
            "-drive", f"file={self.disk},format={fmt},if=virtio"]
        if self.taps:
            for i, (mac, tap) in enumerate(self.taps):
                a += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                      "-device", f"virtio-net-pci,netdev=n{i},mac={mac}"]
        else:
            # Two NICs: the cluster config in the tests names them lan0 and sync0.
            a += ["-netdev", "user,id=n0,restrict=on",
                  "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:10",
                  "-netdev", "user,id=n1,restrict=on",
                  "-device", "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:11"]
        if self.uefi:
            vars_fd = Path(self.tmp.name) / "vars.fd"
            shutil.copy(OVMF_VARS, vars_fd)
            a += ["-machine", "q35", "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                  "-drive", f"if=pflash,format=raw,file={vars_fd}"]
        if self.share:
            a += ["-virtfs", f"local,path={self.share},mount_tag=upgrade,security_model=none,readonly=on"]
        return a

    def start(self) -> "VM":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        threading.Thread(target=self._reader, daemon=True).start()
        return self

    def _reader(self) -> None:
        while True:
            data = self.proc.stdout.read1(65536)
            if not data:
                return
            with self.lock:
                self.buf += data
            self.log.write(data)
            self.log.flush()

    def mark(self) -> int:
        with self.lock:
            return len(self.buf)

    def wait_for(self, pattern: bytes, timeout: float, since: int = 0) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                m = rx.search(bytes(self.buf), since)
            if m:
                return m
            if self.proc.poll() is not None:
                raise VMError(f"qemu exited ({self.proc.returncode}) waiting for {pattern!r}")
            time.sleep(0.2)
        raise VMError(f"timed out after {timeout:.0f} s waiting for {pattern!r} (see {self.log_path}); "
                      f"the console's last lines: {self.console_tail()}")

    def console_tail(self, chars: int = 600) -> str:
        """The end of what the guest printed, on one line (a failure's
        summary line is often all a CI log keeps)."""
        with self.lock:
            text = bytes(self.buf[-4 * chars:]).decode("utf-8", "replace")
        # (_ESCAPES takes the carriage returns too: CRLF lines split on LF)
        lines = [ln.strip() for ln in _ESCAPES.sub("", text).splitlines() if ln.strip()]
        return " | ".join(lines)[-chars:] or "(nothing)"

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def login(self, timeout: float, since: int = 0, password: str | None = None) -> float:
        """Log in as root on the serial console (with password if asked for
        one); returns seconds since start."""
        self.wait_for(rb"login: ", timeout, since)
        at = time.monotonic() - self.started
        mark = self.mark()
        self.send("root\n")
        if self.wait_for(rb"# |Password: ", 60, mark).group(0) == b"Password: ":
            if password is None:
                raise VMError("root login asks for a password and none was given")
            mark = self.mark()
            self.send(password + "\n")
        if self.wait_for(rb"# |Login incorrect", 60, mark).group(0) != b"# ":
            raise VMError(f"root login refused (see {self.log_path})")
        self.send("stty -echo; export PS1='$ ' TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0\n")
        time.sleep(1)
        self.run("true", timeout=30)
        return at

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        self.seq += 1
        start, end = f"<<S{self.seq}>>", f"<<E{self.seq}"
        mark = self.mark()
        self.send(f"echo '{start}'; {command}; echo \"{end}:$?>>\"\n")
        m = self.wait_for(re.escape(end.encode()) + rb":(\d+)>>", timeout, mark)
        with self.lock:
            text = bytes(self.buf[mark:m.start()]).decode("utf-8", "replace")
        text = text.rsplit(start, 1)[-1].replace("\r", "")
        # Units with StandardOutput=journal+console (the boot health check,
        # the ruleset loader) may print on this same serial line while a
        # command runs; their lines are journald's console format.
        return int(m.group(1)), without_console_log(text).strip("\n")

    def check(self, command: str, timeout: float = 60) -> str:
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise VMError(f"`{command}` failed ({rc}): {out[-2000:]}")
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        self.tmp.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

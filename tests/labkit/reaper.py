"""What a lab leaves must go: its processes (by PID and process group) and
its namespaces, also when the test dies -- an atexit/SIGTERM safety net
tears down every live lab, and cleanup_stale() deletes the namespaces of
labs whose process was killed outright."""
from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.labkit.netns import LabError

_live: set = set()  # labs set up and not yet torn down
_reserved: set[str] = set()  # tags of labs made but not yet torn down
_live_lock = threading.Lock()
_net_installed = False


class TornDown:
    """A lab as a context manager: whatever setup() made is torn down on
    leaving, and also when setup() itself fails half-way."""

    def __enter__(self):
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


def free_tag(prefix: str) -> str:
    """"<prefix><pid>", or with a letter after the pid when a lab of this
    process already uses it (a test may run two labs at once)."""
    base = f"{prefix}{os.getpid()}"
    with _live_lock:
        used = {lab.tag for lab in _live} | _reserved
        for suffix in [""] + [chr(c) for c in range(ord("b"), ord("z") + 1)]:
            if base + suffix not in used:
                _reserved.add(base + suffix)
                return base + suffix
    raise LabError("too many labs at once in one process")


def register(lab) -> None:
    """lab (anything with .tag and .teardown()) is live: tear it down at exit."""
    with _live_lock:
        _live.add(lab)
    _install_safety_net()


def unregister(lab) -> None:
    with _live_lock:
        _live.discard(lab)
        _reserved.discard(lab.tag)


def signal_proc(p: subprocess.Popen, sig: int) -> None:
    """Signal a tracked process by its PID and, since it leads its own
    process group, whatever it forked (ucarp scripts, keepalived children)."""
    if p.returncode is not None and sig != signal.SIGKILL:
        return
    try:
        os.killpg(p.pid, sig)  # pgid == pid: start_new_session
    except (ProcessLookupError, PermissionError):
        pass
    if p.returncode is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass


def group_alive(pgid: int) -> bool:
    """Is any live (non-zombie) process still in process group pgid?"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str) -> list[str]:
    """Delete namespaces "<prefix><pid>-<role>" left by a lab whose process is
    gone (e.g. killed with SIGKILL). Only this prefix, only dead PIDs."""
    cp = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    removed = []
    pat = re.compile(rf"^{re.escape(prefix)}(\d+)[b-z]?-(client|server|mgmt|sw|fw\d+)$")
    for line in cp.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = pat.match(name)
        if m and not _pid_alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


def _teardown_all() -> None:
    with _live_lock:
        labs = list(_live)
    for lab in labs:
        lab.teardown()


def _install_safety_net() -> None:
    global _net_installed
    if _net_installed:
        return
    _net_installed = True
    atexit.register(_teardown_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                # SystemExit unwinds with-blocks and finally clauses; atexit covers the rest.
                signal.signal(sig, lambda s, f: sys.exit(128 + s))

"""Shared pieces of the state-sync lab tests (not a test module)."""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from tests.labkit import Lab, SERVER4

LOAD = str(Path(__file__).with_name("sync_load.py"))
TCP_PORT, UDP_PORT = 5001, 5002
PY = sys.executable
# The default CARP timing an operator gets (advbase 1; skews 0 and 100) and
# a sync hold, so that a returning member stays demoted until its bulk
# resync is done (ordered takeover) and only then preempts.
TIMING = {"advbase": 1, "carp": {"sync_hold": 20}}


def start_server(lab: Lab, duration: float = 400):
    """The echo server, listening when this returns (a client started at once
    must not meet a refused connection)."""
    proc = lab.popen("server", [PY, LOAD, "server", "--tcp", TCP_PORT, "--udp", UDP_PORT,
                                "--duration", duration])
    assert lab.wait_for(lambda: f":{TCP_PORT} " in lab.run("server", ["ss", "-ltn"]).stdout, 10), \
        "echo server not listening"
    return proc


class Load:
    """A client process in the lab's client namespace and its status file."""

    def __init__(self, lab: Lab, name: str, sessions: int, udp: bool = False,
                 duration: float = 120, rate: float = 600, target: str = SERVER4):
        self.lab, self.sessions = lab, sessions
        self.status_path = lab.dir / f"load-{name}.json"
        proto = ["--udp", UDP_PORT] if udp else ["--tcp", TCP_PORT]
        self.started = time.time()
        self.proc = lab.popen("client", [PY, LOAD, "client", "--target", target, *proto,
                                         "--sessions", sessions, "--duration", duration,
                                         "--rate", rate, "--status", self.status_path])

    def status(self) -> dict | None:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None

    def alive_since(self, t: float) -> int:
        """Sessions that got an echo after wall-clock time t."""
        st = self.status()
        if not st:
            return 0
        return sum(1 for x in st["last"] if x and x > t)

    def wait_alive_since(self, t: float, timeout: float) -> int:
        # The status file is rewritten every 0.25 s: wait for one written after t.
        self.lab.wait_for(lambda: self.alive_since(t) >= self.sessions, timeout, 0.25)
        return self.alive_since(t)

    def diagnose(self, t: float, members=("fw1", "fw2")) -> str:
        """Why sessions are not alive since t: their errors and conntrack entries."""
        st = self.status() or {}
        bad = [(p, e, l) for p, e, l in zip(st.get("ports", []), st.get("errors", []), st.get("last", []))
               if not l or l <= t]
        out = [f"{len(bad)} sessions without echo since {t:.3f}: {bad[:5]}"]
        for port, _e, _l in bad[:3]:
            for m in members:
                if port:
                    cp = self.lab.run(m, ["conntrack", "-L", "--sport", str(port)], check=False)
                    out.append(f"{m} sport {port}: {cp.stdout.strip()}")
        for m in members:
            out.append(f"{m} stats: " + self.lab.run(m, ["conntrack", "-S"], check=False).stdout.strip())
            cp = self.lab.run(m, ["conntrack", "-L", "-p", "tcp"], check=False)
            odd = [ln for ln in cp.stdout.splitlines() if "ESTABLISHED" not in ln and "TIME_WAIT" not in ln]
            out.append(f"{m} non-established tcp: {len(odd)} {odd[:3]}")
        for role in ("client", "server"):
            out.append(f"{role} neigh: " + self.lab.run(role, ["ip", "neigh"], check=False).stdout.strip())
        return "\n".join(out)

    def errors(self) -> list:
        st = self.status() or {}
        return [e for e in st.get("errors", []) if e]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()


def syncd_status(lab: Lab, member: str) -> dict:
    try:
        st = lab.control(member, {"cmd": "status"}, daemon="syncd", timeout=3)
    except Exception:
        return {}
    return st if st.get("ok") else {}


def ct_count(lab: Lab, member: str) -> int:
    """Entries in member's kernel table (conntrack -C in its namespace)."""
    out = lab.run(member, ["conntrack", "-C"], check=False).stdout.strip()
    return int(out or 0)


def in_sync(lab: Lab, members=None) -> bool:
    for m in members or lab.members:
        st = syncd_status(lab, m)
        if not st.get("in_sync"):
            return False
        for p in st.get("peers", {}).values():
            if p["state"] != "up" or p["unacked"]:
                return False
    return True


def running(lab: Lab, member: str, daemon: str) -> bool:
    p = lab.daemon(member, daemon)
    return p is not None and p.poll() is None


def start_member(lab: Lab, member: str, syncd: bool = True) -> None:
    if syncd and not running(lab, member, "syncd"):
        lab.start_syncd(member)
    if not running(lab, member, "carpd"):
        lab.start_carpd(member)


def logs(lab: Lab, *members) -> str:
    return "\n".join(f"--- {m} {d}:\n{lab.log_tail(m, d, 1500)}"
                     for m in members or lab.members for d in ("syncd", "carpd"))

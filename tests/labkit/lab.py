"""The lab proper: namespaces, bridges and links, cluster.toml, the shipped
ruleset on every member, daemons, and faults (node loss, cut links).

    client ── [lan bridge] ── lan0 fw1..fwN wan0 ── [wan bridge] ── server
                                   sync0
                                     └──── [sync bridge]

The bridges live in the "sw" namespace, so a test can cut one member's port
(split brain) without touching the member. Every member forwards with the
shipped ruleset (see ruleset.py) and nf_conntrack_tcp_loose=0: a TCP session
passes a member only if that member has its conntrack entry.

Namespaces are named "<prefix><pid>-<role>" and are deleted when the Lab is
left, even on an exception, and by the safety net of reaper.py. Every
process the lab starts is tracked and stopped by its PID (and its own
process group, which it leads) at teardown. Addresses come from the
documentation ranges only (addresses.py).

    with Lab(members=2) as lab:
        lab.start_carpd("fw1"); lab.start_carpd("fw2")
        lab.wait_for(lambda: lab.vip_state("fw1", 1) == "MASTER", 5)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from fwcluster.core.passphrase import UCARP_MAX
from fwcluster.fwctl.secret import make as make_passphrase
from tests.labkit import reaper, ruleset
from tests.labkit.addresses import (LAN4, LAN6, LAN_VIP4, LAN_VIP6, MEMBER_IFS, SEGMENTS,
                                    SERVER4, SERVER6, SYNC1_IF, SYNC1_SEGMENT, SYNC_PORT, WAN_VIP4, WAN_VIP6,
                                    default_vips, member_addr4, member_addr6)
from tests.labkit.netns import LabError, in_netns, ip_batch
from tests.labkit.prober import Prober

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
DEFAULT_SKEWS = (0, 100, 150, 200)
CONFIG_KEYS = {"advbase", "advskews", "vips", "carp", "balance", "metrics", "sync", "name",
               "firewall", "dhcp", "dhcp_ha", "tracks", "hooks", "groups"}

__all__ = ["Lab", "LabError", "PY", "REPO"]


# --- config file --------------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} to TOML")


def _toml_table(header: str, table: dict) -> str:
    lines = [header]
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"



class Lab(reaper.TornDown):
    """A namespace cluster of `members` (2..4) firewalls. See module doc."""

    def __init__(self, members: int = 2, prefix: str = "fwt", ipv6: bool = True,
                 snat: bool = False, clients: int = 1, sync_links: int = 1, **config_overrides):
        if not 2 <= members <= 4:
            raise ValueError("members must be 2..4")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise ValueError("prefix: 1-8 lowercase letters/digits, starting with a letter")
        unknown = set(config_overrides) - CONFIG_KEYS
        if unknown:
            raise TypeError(f"Lab: unknown {', '.join(sorted(unknown))}")
        self.n = members
        if sync_links not in (1, 2):
            raise ValueError("sync_links must be 1 or 2")
        # A second sync link: segment "sync1", member interface sync1
        # (addresses.py); [sync] interfaces names both, sync0 first.
        self.segments = SEGMENTS + ((SYNC1_SEGMENT,) if sync_links == 2 else ())
        self.member_ifs = MEMBER_IFS + ((SYNC1_IF,) if sync_links == 2 else ())
        self.sync_links = sync_links
        self.members = [f"fw{k}" for k in range(1, members + 1)]
        self.prefix = prefix
        self.ipv6 = ipv6
        self.snat = snat
        self.clients = clients
        self.tag = reaper.free_tag(prefix)
        self.roles = ["sw", "client", "server", *self.members]
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.config_path = self.dir / "cluster.toml"
        self.secret_path = self.dir / "secret"
        # The shipped template with the lab's site policy ([firewall] template
        # of cluster.toml unless a test names its own).
        self.template_path = self.dir / "ruleset.nft.j2"
        # ucarp takes at most 19 bytes of passphrase: as long as that, drawn
        # as `fwctl secret generate` draws (strong enough for either mode).
        self.secret = make_passphrase(UCARP_MAX)
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._daemons: dict[tuple[str, str], subprocess.Popen] = {}
        self._created: list[str] = []
        self._up = False
        self._config_overrides = config_overrides
        self.setup_seconds: float | None = None

    # --- names and paths ------------------------------------------------------
    def ns(self, role: str) -> str:
        if role not in self.roles:
            raise KeyError(f"no role {role!r} in this lab (roles: {', '.join(self.roles)})")
        return f"{self.tag}-{role}"

    def index(self, member: str) -> int:
        return self.members.index(member) + 1

    def run_dir(self, member: str) -> Path:
        return self.dir / member / "run"

    def state_dir(self, member: str) -> Path:
        return self.dir / member / "state"

    def log_path(self, member: str, daemon: str) -> Path:
        return self.dir / member / f"{daemon}.log"

    def addr4(self, member: str, seg: str = "lan") -> str:
        return member_addr4(self.index(member), seg)

    def addr6(self, member: str, seg: str = "lan") -> str:
        return member_addr6(self.index(member), seg)

    # --- lifecycle --------------------------------------------------------------
    def setup(self) -> None:
        t0 = time.monotonic()
        reaper.register(self)
        reaper.cleanup_stale(self.prefix)
        if not Path("/sys/module/nf_conntrack").exists() and shutil.which("modprobe"):
            subprocess.run(["modprobe", "-q", "nf_conntrack"], check=False)
        for m in self.members:
            self.run_dir(m).mkdir(parents=True, exist_ok=True)
            self.state_dir(m).mkdir(parents=True, exist_ok=True)
        self.secret_path.write_text(self.secret + "\n")
        os.chmod(self.secret_path, 0o600)
        ruleset.write_site_template(self.template_path, self.snat)
        self.write_config()

        self._up = True
        batch = []
        for role in self.roles:
            batch.append(f"netns add {self.ns(role)}")
            self._created.append(self.ns(role))
        ip_batch(None, batch)

        # Sysctls before links exist, so that the "default" values apply to
        # the interfaces created next: no DAD (addresses usable at once),
        # IPv6 addresses kept across link down/up (node loss and return).
        base = ["net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.keep_addr_on_down=1", "net.ipv6.conf.all.keep_addr_on_down=1",
                "net.ipv6.conf.default.accept_ra=0"]
        for role in self.roles:
            extra = []
            if role == "sw":
                extra = ["net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.all.disable_ipv6=1"]
            elif role.startswith("fw"):
                extra = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                         "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
            self._sysctl(role, base + extra if role != "sw" else extra)

        sw = []
        for seg in self.segments:
            # No STP, no forward delay, no multicast snooping: adverts and
            # ND reach every port from the first packet.
            sw.append(f"link add {seg} type bridge stp_state 0 forward_delay 0 mcast_snooping 0")
            sw.append(f"link set {seg} up")
        ports = [("client-lan", "client", "eth0", "lan"), ("server-wan", "server", "eth0", "wan")]
        for m in self.members:
            for seg, ifname in zip(self.segments, self.member_ifs):
                ports.append((f"{m}-{seg}", m, ifname, seg))
        for port, role, ifname, seg in ports:
            sw.append(f"link add {port} type veth peer name {ifname} netns {self.ns(role)}")
            sw.append(f"link set {port} master {seg} up")
        ip_batch(self.ns("sw"), sw)

        client = ["link set lo up", "link set eth0 up"]
        for i in range(self.clients):
            client.append(f"addr add {LAN4}.{100 + i}/24 dev eth0")
        client.append(f"route add default via {LAN_VIP4}")
        server = ["link set lo up", "link set eth0 up", f"addr add {SERVER4}/24 dev eth0"]
        if not self.snat:
            server.append(f"route add default via {WAN_VIP4}")
        if self.ipv6:
            for i in range(self.clients):
                client.append(f"addr add {LAN6}:{100 + i}/64 dev eth0 nodad")
            client.append(f"route add default via {LAN_VIP6}")
            server.append(f"addr add {SERVER6}/64 dev eth0 nodad")
            if not self.snat:
                server.append(f"route add default via {WAN_VIP6}")
        ip_batch(self.ns("client"), client)
        ip_batch(self.ns("server"), server)

        for m in self.members:
            k = self.index(m)
            cmds = ["link set lo up"]
            for seg, ifname in zip(self.segments, self.member_ifs):
                cmds.append(f"addr add {member_addr4(k, seg)}/{self._prefix(seg)} dev {ifname}")
                if self.ipv6 and not seg.startswith("sync"):
                    cmds.append(f"addr add {member_addr6(k, seg)}/64 dev {ifname} nodad")
                cmds.append(f"link set {ifname} up")
            ip_batch(self.ns(m), cmds)
        self.apply_rules()
        for m in self.members:
            # After the ruleset: its ct expressions made sure conntrack is
            # live in this namespace, so the sysctl exists.
            self._sysctl(m, ["net.netfilter.nf_conntrack_tcp_loose=0"])
        self.setup_seconds = time.monotonic() - t0

    def _prefix(self, seg: str) -> int:
        """Two sync links share the sync range, a half each."""
        return 25 if self.sync_links == 2 and seg.startswith("sync") else 24

    def teardown(self) -> None:
        """Stop every tracked process by PID, delete every namespace. Idempotent."""
        procs = list(self._procs)
        self._procs.clear()
        self._daemons.clear()
        for _, p in procs:
            reaper.signal_proc(p, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for _, p in procs:
            try:
                p.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, p in procs:
            reaper.signal_proc(p, signal.SIGKILL)  # also reaps leftovers in its group
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._created.clear()
        self._up = False
        reaper.unregister(self)
        if os.environ.get("FWLAB_KEEP_DIR"):
            return
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- config -----------------------------------------------------------------
    def write_config(self, **overrides) -> Path:
        """(Re)write cluster.toml. Overrides add to those given before (to the
        constructor or an earlier call): write_config(carp={...}) keeps an
        advbase=0 given at construction. Keys: advbase, advskews, vips, groups, carp, tracks, hooks,
        balance, metrics, sync, firewall, dhcp (list of [[dhcp]] tables), dhcp_ha, name. The
        running rulesets stay as
        they are until apply_rules(), as on an appliance."""
        unknown = set(overrides) - CONFIG_KEYS
        if unknown:
            raise TypeError(f"write_config: unknown {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(CONFIG_KEYS))})")
        self._config_overrides = {**self._config_overrides, **overrides}
        return self._write_config(**self._config_overrides)

    def _write_config(self, *, advbase: int | None = None, advskews: dict | None = None,
                      vips: list[dict] | None = None, carp: dict | None = None,
                      balance: dict | None = None, metrics: dict | None = None,
                      sync: dict | None = None, firewall: dict | None = None,
                      dhcp: list[dict] | None = None, dhcp_ha: dict | None = None,
                      tracks: list[dict] | None = None, hooks: dict | None = None,
                      groups: list[dict] | None = None, name: str = "lab") -> Path:
        """advbase applies to every default vip; advskews maps member ->
        advskew (default 0,100,150,200; with advbase 0 10,20,30,40 since a
        zero interval is invalid)."""
        if advbase is None:
            advbase = 1
        skews = {}
        for k, m in enumerate(self.members):
            skews[m] = (10 * (k + 1)) if advbase == 0 else DEFAULT_SKEWS[k]
        for m, s in (advskews or {}).items():
            if m not in self.members:
                raise KeyError(f"advskews: no member {m!r}")
            skews[m] = s
        if vips is None:
            vips = default_vips(self.ipv6, advbase)
        text = "# Generated by tests.labkit\n"
        text += _toml_table("[cluster]", {
            "name": name, "secret_file": str(self.secret_path),
            "run_dir": str(self.dir / "run"), "state_dir": str(self.dir / "state")})
        links = {"interface": "sync0"} if self.sync_links == 1 else {"interfaces": ["sync0", SYNC1_IF]}
        text += _toml_table("[sync]", {**links, "port": SYNC_PORT, **(sync or {})})
        # carpd alone (most CARP tests) must not wait out the default
        # sync_hold; the sync tests ask for their own.
        text += _toml_table("[carp]", {"sync_hold": 0, **(carp or {})})
        if balance:
            text += _toml_table("[balance]", balance)
        if metrics:
            text += _toml_table("[metrics]", metrics)
        text += _toml_table("[firewall]", {"template": str(self.template_path), **(firewall or {})})
        if hooks:
            text += _toml_table("[hooks]", hooks)
        for t in tracks or ():
            text += _toml_table("[[track]]", t)
        for k, m in enumerate(self.members, start=1):
            addrs = {"sync_address": member_addr4(k, "sync")}
            if self.sync_links == 2:
                addrs["sync_addresses"] = [member_addr4(k, s) for s in ("sync", SYNC1_SEGMENT)]
            text += _toml_table("[[member]]", {"name": m, **addrs, "advskew": skews[m]})
        for g in groups or ():
            text += _toml_table("[[group]]", g)
        for v in vips:
            text += _toml_table("[[vip]]", v)
        for d in dhcp or ():
            text += _toml_table("[[dhcp]]", d)
        if dhcp_ha:
            text += _toml_table("[dhcp_ha]", dhcp_ha)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)
        self.advskews = skews
        self.vips = vips
        return self.config_path

    def apply_rules(self, members: Iterable[str] | None = None) -> None:
        """Render [firewall] template of cluster.toml for each member and load
        it there (what `fwctl rules apply` does, without a process per member)."""
        for m in members or self.members:
            ruleset.apply(self.ns(m), self.config_path, m, self.run_dir(m))

    # --- running things in namespaces -------------------------------------------
    def run(self, role: str, argv: list[str], check: bool = True, timeout: float = 30,
            **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        cp = subprocess.run(["ip", "netns", "exec", self.ns(role), *map(str, argv)],
                            timeout=timeout, env=self._env(kw.pop("env", None)), **kw)
        if check and cp.returncode != 0:
            raise LabError(f"{role}: {' '.join(map(str, argv))} exited {cp.returncode}: "
                           f"{(cp.stderr or '').strip()[-500:]}")
        return cp

    def popen(self, role: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start a tracked process in role's namespace. It leads its own process
        group so that everything it forks goes down with it at teardown."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        log = None
        if "stdout" not in kw:
            log = kw["stdout"] = open(self.dir / f"{role}-{len(self._procs)}.log", "wb")
            kw.setdefault("stderr", subprocess.STDOUT)
        kw["start_new_session"] = True
        try:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *map(str, argv)],
                                 env=self._env(kw.pop("env", None)), **kw)
        finally:
            if log:
                log.close()  # the child has its own descriptor
        self._procs.append((role, p))
        return p

    def _env(self, extra: dict | None) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        if extra:
            env.update(extra)
        return env

    def _sysctl(self, role: str, settings: list[str]) -> None:
        if settings:
            self.run(role, ["sysctl", "-q", "-w", *settings])

    def sysctl(self, role: str, key: str) -> str:
        return self.run(role, ["sysctl", "-n", key]).stdout.strip()

    # --- daemons ------------------------------------------------------------------
    def _daemon_args(self, member: str) -> list[str]:
        return ["--config", str(self.config_path), "--node", member,
                "--run-dir", str(self.run_dir(member)), "--state-dir", str(self.state_dir(member))]

    def start_carpd(self, member: str, extra: Iterable[str] = (), wait: bool = True,
                    log_level: str = "info", env: dict | None = None,
                    tree: Path | None = None) -> subprocess.Popen:
        """Start carpd in member's namespace; with wait, return once it answers.
        env: variables to add (FWCLUSTER_PROTOCOLS=previous: a build capped to
        the previous release's protocol versions); tree: run the code of
        another checkout (an earlier release) instead of this one."""
        return self._start(member, "carpd", ["-m", "fwcluster.carpd", *self._daemon_args(member),
                                             "--log-level", log_level, *extra], wait, env, tree)

    def start_syncd(self, member: str, extra: Iterable[str] = (), wait: bool = True,
                    env: dict | None = None, tree: Path | None = None) -> subprocess.Popen:
        return self._start(member, "syncd", ["-m", "syncd", *self._daemon_args(member), *extra],
                           wait, env, tree)

    def _start(self, member: str, daemon: str, args: list[str], wait: bool,
               env: dict | None = None, tree: Path | None = None) -> subprocess.Popen:
        old = self._daemons.get((member, daemon))
        if old is not None and old.poll() is None:
            raise LabError(f"{daemon} already running on {member} (pid {old.pid})")
        sock = self.run_dir(member) / f"{daemon}.sock"
        try:
            sock.unlink()
        except FileNotFoundError:
            pass
        log = open(self.log_path(member, daemon), "ab")
        kw = {}
        if tree is not None:    # `-m` looks in the working directory first
            env, kw["cwd"] = {**(env or {}), "PYTHONPATH": str(tree)}, str(tree)
        p = self.popen(member, [PY, *args], stdout=log, stderr=subprocess.STDOUT, env=env, **kw)
        log.close()
        self._daemons[(member, daemon)] = p
        # Bounded, but generous: a Python daemon's start-up (imports) takes
        # seconds on a starved machine.
        if wait and not self.wait_for(lambda: p.poll() is not None or self._answers(sock), 30, 0.02):
            raise LabError(f"{daemon} on {member} did not answer on {sock} within 30 s; "
                           f"log: {self.log_tail(member, daemon)}")
        if p.poll() is not None:
            raise LabError(f"{daemon} on {member} exited {p.returncode}: {self.log_tail(member, daemon)}")
        return p

    def _answers(self, sock: Path) -> bool:
        from fwcluster import ctlsock
        try:
            return bool(ctlsock.request(str(sock), {"cmd": "status"}, timeout=1).get("ok"))
        except (ctlsock.ControlError, ValueError):
            return False

    def daemon(self, member: str, daemon: str = "carpd") -> subprocess.Popen | None:
        return self._daemons.get((member, daemon))

    def log_tail(self, member: str, daemon: str, chars: int = 2000) -> str:
        try:
            return self.log_path(member, daemon).read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop_daemon(self, member: str, daemon: str, sig: int = signal.SIGTERM,
                    timeout: float = 5) -> int | None:
        """Signal a daemon by PID and wait for it (SIGKILL after timeout)."""
        p = self._daemons.pop((member, daemon), None)
        if p is None:
            return None
        p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            reaper.signal_proc(p, signal.SIGKILL)
            return p.wait(5)

    def control(self, member: str, msg: dict, daemon: str = "carpd", timeout: float = 5) -> dict:
        """One request on a daemon's control socket."""
        from fwcluster import ctlsock
        return ctlsock.request(str(self.run_dir(member) / f"{daemon}.sock"), msg, timeout=timeout)

    def fwctl_raw(self, member: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return self.run(member, [PY, "-m", "fwcluster.fwctl", *self._daemon_args(member), *argv],
                        check=False, timeout=timeout)

    def fwctl(self, member: str, *argv: str) -> dict:
        cp = self.fwctl_raw(member, *argv, "--json")
        try:
            return json.loads(cp.stdout)
        except ValueError:
            raise LabError(f"fwctl {' '.join(argv)} on {member} exited {cp.returncode}, "
                           f"not JSON: {cp.stdout[-300:]!r} {cp.stderr[-500:]!r}") from None

    # --- CARP state helpers (via the control socket: quick, no fork) -------------
    def status(self, member: str) -> dict | None:
        try:
            st = self.control(member, {"cmd": "status"}, timeout=2)
        except Exception:
            return None
        return st if st.get("ok") else None

    def vip_state(self, member: str, vhid: int) -> str | None:
        st = self.status(member)
        for v in (st or {}).get("vips", []):
            if v.get("vhid") == vhid:
                return v.get("state")
        return None

    def states(self, vhid: int = 1, members: Iterable[str] | None = None) -> dict[str, str | None]:
        return {m: self.vip_state(m, vhid) for m in (members or self.members)}

    def masters(self, vhid: int = 1, members: Iterable[str] | None = None) -> list[str]:
        return [m for m, s in self.states(vhid, members).items() if s == "MASTER"]

    def has_addr(self, member: str, ifname: str, address: str) -> bool:
        out = self.run(member, ["ip", "-j", "addr", "show", "dev", ifname]).stdout
        for link in json.loads(out or "[]"):
            for a in link.get("addr_info", []):
                if a.get("local") == address:
                    return True
        return False

    # --- faults ---------------------------------------------------------------------
    def link_down(self, member: str, ifname: str) -> None:
        self.run(member, ["ip", "link", "set", ifname, "down"])

    def link_up(self, member: str, ifname: str) -> None:
        self.run(member, ["ip", "link", "set", ifname, "up"])

    def node_loss(self, member: str) -> float:
        """Power loss: every link of member down, then SIGKILL of everything
        the lab runs in its namespace (no goodbye adverts, no VIP release).
        Returns the time.monotonic() at which its links were down: from then
        on nothing of member reaches the network (the kill that follows can
        take a while on a busy machine; measure gaps from this time)."""
        ip_batch(self.ns(member), [f"link set {i} down" for i in self.member_ifs])
        t_down = time.monotonic()
        for role, p in self._procs:
            if role == member and p.poll() is None:
                reaper.signal_proc(p, signal.SIGKILL)
        for role, p in self._procs:
            if role == member:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
                # Forked children (keepalived's VRRP process) die a moment
                # later; a restart must not find them still running.
                self.wait_for(lambda: not reaper.group_alive(p.pid), 5, 0.005)
        for key in [k for k in self._daemons if k[0] == member]:
            del self._daemons[key]
        return t_down

    def node_return(self, member: str) -> None:
        """The member boots again: no VIPs left on its interfaces and no
        macvlans (a reboot clears them), links up. The caller restarts its daemons."""
        k = self.index(member)
        own = {member_addr4(k, s) for s in self.segments} | {member_addr6(k, s) for s in ("lan", "wan")}
        cmds = []
        for ifname in self.member_ifs:
            out = self.run(member, ["ip", "-j", "addr", "show", "dev", ifname]).stdout
            for link in json.loads(out or "[]"):
                for a in link.get("addr_info", []):
                    local = a.get("local", "")
                    if local in own or local.startswith("fe80:"):
                        continue
                    cmds.append(f"addr del {local}/{a['prefixlen']} dev {ifname}")
        # nor the macvlans of virtual-MAC vips: left up with the vip on,
        # one would answer for the vip's MAC before carpd runs again
        out = self.run(member, ["ip", "-j", "link", "show", "type", "macvlan"]).stdout
        cmds += [f"link del {link['ifname']}" for link in json.loads(out or "[]")]
        cmds += [f"link set {i} up" for i in self.member_ifs]
        ip_batch(self.ns(member), cmds)

    def cut(self, member: str, segment: str, carrier: bool = True) -> None:
        """Stop the "sw" bridge passing frames to and from member's port on a
        segment. carrier=True (default): the port is disabled, the member's
        link stays up and it hears nothing (a split brain, a switch fault);
        carrier=False: the port goes down and the member sees carrier loss
        (a pulled cable), which carpd treats as a link failure."""
        port = self._port(member, segment)
        if carrier:
            self.run("sw", ["bridge", "link", "set", "dev", port, "state", "0"])
        else:
            self.run("sw", ["ip", "link", "set", port, "down"])

    def heal(self, member: str, segment: str) -> None:
        """Undo cut(), whichever kind it was."""
        port = self._port(member, segment)
        self.run("sw", ["ip", "link", "set", port, "up"])
        self.run("sw", ["bridge", "link", "set", "dev", port, "state", "3"])

    def _port(self, member: str, segment: str) -> str:
        if segment not in self.segments:
            raise ValueError(f"segment must be one of {self.segments}")
        self.index(member)
        return f"{member}-{segment}"

    # --- sockets inside a namespace ------------------------------------------------
    def socket(self, role: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A socket that lives in role's namespace, made by a short-lived thread
        that enters it (setns moves only the calling thread; the socket keeps
        its namespace for life and can be used from any thread)."""
        return in_netns(self.ns(role), lambda: socket.socket(family, type, proto))

    def ping(self, role: str, target: str, timeout: float = 1.0) -> bool:
        """One ICMP echo from role to target: True if answered within timeout."""
        p = Prober(self, role, target, interval=timeout, duration=timeout, count=1).start()
        self.wait_for(lambda: bool(p.replies), timeout, 0.01)
        p.stop()
        return bool(p.replies)

    # --- waiting --------------------------------------------------------------------
    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
        """Poll predicate until true (True) or timeout seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

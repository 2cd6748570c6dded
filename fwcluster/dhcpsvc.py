"""Kea on a member: write its configuration, check it, ask it for status.

The configuration comes from fwcluster.core.dhcp; this shell only places
it. On the appliance (overlays/cluster, the kea-*.service drop-ins) Kea
runs as Debian's units with the files below; the lab passes a Paths of its
own. Kea's files hold the HA password, so they are written mode 0640 and
group _kea (the user Debian's units run Kea as) where that group exists.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

from fwcluster.core import dhcp as core

KEA_GROUP = "_kea"
CHECK_TIMEOUT = 20.0  # seconds for kea-dhcp4/6 -t (they load the hooks)
QUERY_TIMEOUT = 2.0
MAX_REPLY = 1 << 20


@dataclass(frozen=True)
class Paths:
    conf_dir: str  # the two JSON files
    lease_file: str  # memfile; its directory is /config/dhcp on the appliance
    control_socket: str  # kea-dhcp4's command socket
    log_output: str = "syslog"
    # kea-dhcp6's, used where some [[dhcp]] table has pools6
    lease_file6: str = ""
    control_socket6: str = ""

    @property
    def dhcp4(self) -> str:
        return os.path.join(self.conf_dir, "fwcluster-dhcp4.json")

    @property
    def dhcp6(self) -> str:
        return os.path.join(self.conf_dir, "fwcluster-dhcp6.json")

    @property
    def ctrl_agent(self) -> str:
        return os.path.join(self.conf_dir, "fwcluster-ctrl-agent.json")


# Kea 2.6.3 and later only take lease files under /var/lib/kea and sockets
# under /run/kea: the drop-ins bind /config/dhcp onto /var/lib/kea.
APPLIANCE = Paths(conf_dir="/run/kea", lease_file="/var/lib/kea/fwcluster-dhcp4.leases",
                  control_socket="/run/kea/fwcluster-dhcp4.sock",
                  lease_file6="/var/lib/kea/fwcluster-dhcp6.leases",
                  control_socket6="/run/kea/fwcluster-dhcp6.sock")
LEASE_DIR_ON_CONFIG = "/config/dhcp"
# The same files as fwctl sees them (the bind onto /var/lib/kea is Kea's alone).
LEASE_FILE_ON_CONFIG = os.path.join(LEASE_DIR_ON_CONFIG, os.path.basename(APPLIANCE.lease_file))
LEASE_FILE6_ON_CONFIG = os.path.join(LEASE_DIR_ON_CONFIG, os.path.basename(APPLIANCE.lease_file6))


def render(cfg, node: str, secret: bytes, paths: Paths = APPLIANCE) -> dict[str, str]:
    """{path: JSON text} of the Kea configurations for node: kea-dhcp4's,
    the control agent's and, where some table has pools6, kea-dhcp6's."""
    v6 = core.serves6(cfg)
    confs = {paths.dhcp4: core.dhcp4(cfg, node, secret=secret, lease_file=paths.lease_file,
                                     control_socket=paths.control_socket, log_output=paths.log_output)}
    if v6:
        confs[paths.dhcp6] = core.dhcp6(cfg, node, secret=secret, lease_file=paths.lease_file6,
                                        control_socket=paths.control_socket6,
                                        log_output=paths.log_output)
    confs[paths.ctrl_agent] = core.ctrl_agent(
        cfg, node, secret=secret, control_socket=paths.control_socket,
        control_socket6=paths.control_socket6 if v6 else None, log_output=paths.log_output)
    return {path: json.dumps(conf, indent=2) + "\n" for path, conf in confs.items()}


def _gid() -> int:
    try:
        return grp.getgrnam(KEA_GROUP).gr_gid
    except KeyError:
        return -1


def _conf_dir(directory: str) -> None:
    """Create Kea's directory as its units' RuntimeDirectory would: mode
    0750, owned by Kea's user. fwctl dhcp apply may run before the units
    create /run/kea, and Kea 2.6.3 refuses a socket directory of another
    mode (and its user must be able to create the sockets there)."""
    if os.path.isdir(directory):
        return
    os.makedirs(directory, mode=0o750)
    os.chmod(directory, 0o750)  # makedirs' mode is masked by the umask
    try:
        kea = pwd.getpwnam(KEA_GROUP)
    except KeyError:
        return
    os.chown(directory, kea.pw_uid, kea.pw_gid)


def write(files: dict[str, str]) -> list[str]:
    """Replace each file atomically (0640, group _kea); the paths changed."""
    changed = []
    gid = _gid()
    for path, text in files.items():
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except OSError:
            pass
        directory = os.path.dirname(path)
        _conf_dir(directory)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fwcluster-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o640)
            if gid >= 0:
                os.fchown(fd, -1, gid)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        changed.append(path)
    return changed


def check(cfg, node: str, secret: bytes) -> list[str]:
    """Kea's own check (`-t`) of the rendered configuration, where Kea is
    installed; the problems found (empty: fine or Kea not installed)."""
    problems = []
    files = render(cfg, node, secret, Paths(conf_dir="", lease_file="/var/lib/kea/check.leases",
                                            control_socket="/run/kea/check.sock", log_output="stderr",
                                            lease_file6="/var/lib/kea/check6.leases",
                                            control_socket6="/run/kea/check6.sock"))
    with tempfile.TemporaryDirectory(prefix="fwcluster-kea-") as tmp:
        for name, program in (("fwcluster-dhcp4.json", "kea-dhcp4"),
                              ("fwcluster-dhcp6.json", "kea-dhcp6"),
                              ("fwcluster-ctrl-agent.json", "kea-ctrl-agent")):
            exe = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
            if name not in files or not exe:
                continue
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(files[name])
            cp = subprocess.run([exe, "-t", path], capture_output=True, text=True,
                                timeout=CHECK_TIMEOUT)
            if cp.returncode != 0:
                problems.append(f"{program} -t: {_kea_error(cp.stdout + cp.stderr)}")
    return problems


def _kea_error(output: str) -> str:
    """The first ERROR/FATAL line of Kea's log output, without its prefix."""
    for line in output.splitlines():
        for tag in (" ERROR ", " FATAL "):
            if tag in line:
                return line.split("] ", 1)[-1].strip()
    return (output.strip().splitlines() or ["failed"])[-1]


def command(socket_path: str, cmd: str, arguments: dict | None = None,
            timeout: float = QUERY_TIMEOUT) -> dict:
    """One command over kea-dhcp4's control socket; its reply (a dict with
    "result", "text" and maybe "arguments"). OSError/ValueError on failure."""
    msg = {"command": cmd, **({"arguments": arguments} if arguments else {})}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(json.dumps(msg).encode())
        buf = b""
        while len(buf) < MAX_REPLY:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            try:
                reply = json.loads(buf)
                break
            except ValueError:
                continue
        else:
            raise ValueError("reply too large")
    reply = json.loads(buf)
    if isinstance(reply, list):
        reply = reply[0] if reply else {}
    if not isinstance(reply, dict):
        raise ValueError(f"unexpected reply {reply!r:.80}")
    return reply


def lease_file(path: str) -> dict:
    """Size of the lease file and the space left beside it (for Kea's user:
    statvfs's f_bavail), and the problem when that is nearly gone."""
    out = {"lease_file": path}
    try:
        out["lease_file_bytes"] = os.stat(path).st_size
    except OSError:
        pass
    try:
        st = os.statvfs(os.path.dirname(path))
    except OSError:
        return out
    out["lease_space_free"] = st.f_bavail * st.f_frsize
    problem = core.lease_space_problem(out["lease_space_free"])
    if problem:
        out["problem"] = problem
    return out


def _server_view(cfg, family: int, socket_path: str, lease_path: str) -> dict:
    """One Kea server's part of status(): running, its HA state and the
    partner's, lease counts per subnet, the lease file's room."""
    out = {"running": False, **lease_file(lease_path)}
    try:
        st = command(socket_path, "status-get")
        stats = command(socket_path, "statistic-get-all")
    except (OSError, ValueError) as e:
        out["error"] = f"kea-dhcp{family} does not answer on {socket_path}: {e}"
        return out
    out["running"] = True
    out.update({k: v for k, v in core.ha_summary(st.get("arguments") or {}).items() if v is not None})
    out["subnets"] = core.lease_counts(cfg, stats.get("arguments") or {}, family)
    return out


def status(cfg, node: str, socket_path: str = APPLIANCE.control_socket,
           lease_path: str = LEASE_FILE_ON_CONFIG, socket6_path: str = APPLIANCE.control_socket6,
           lease6_path: str = LEASE_FILE6_ON_CONFIG) -> dict:
    """This member's DHCP view: off, or Kea's HA state, the partner's as Kea
    last saw it, lease counts per subnet and the lease file's room
    (kea-dhcp4's at the top level, kea-dhcp6's under "v6" where it is
    configured). A Kea that does not answer is reported (running: false),
    never raised: it demotes nothing."""
    if not cfg.dhcp:
        return {"enabled": False}
    out = {"enabled": True, "node": node, "mode": cfg.dhcp_ha.mode,
           "role": core.ha_roles(cfg)[node], **_server_view(cfg, 4, socket_path, lease_path)}
    if core.serves6(cfg):
        out["v6"] = _server_view(cfg, 6, socket6_path, lease6_path)
    return out

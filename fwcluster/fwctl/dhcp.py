"""fwctl dhcp: the DHCP server (Kea) of this member.

  fwctl dhcp [status]   Kea's HA role and state here, the partner's state as
                        Kea last saw it, leases per interface, for DHCPv4 and
                        (where configured) DHCPv6 (--prom: as Prometheus
                        text, for a textfile collector)
  fwctl dhcp enabled    exit 0 when [[dhcp]] is configured (the Kea units'
                        ExecCondition: off until configured)
  fwctl dhcp enabled6   exit 0 when some [[dhcp]] has pools6 (kea-dhcp6's)
  fwctl dhcp render     write Kea's configuration files for this member
  fwctl dhcp apply      render, then start, reload or stop Kea to match
  fwctl dhcp textfile   the --prom text into [metrics] textfile_dir (a timer)

Exit 1 from status when Kea is configured but does not answer or is not in
a serving HA state; a Kea problem never demotes the member (docs/dhcp.md).
"""
from __future__ import annotations

import os
import pwd
import subprocess
import sys

from fwcluster import configfile, dhcpsvc, metrics
from fwcluster.args import load_from_args
from fwcluster.core import dhcp as dhcpcore
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, emit

# HA states in which this member's part of the service is working.
HEALTHY = ("hot-standby", "load-balancing", "partner-down", "backup")
UNITS = ("kea-ctrl-agent.service", "kea-dhcp4-server.service")
UNIT6 = "kea-dhcp6-server.service"


def register(sub) -> None:
    p = sub.add_parser("dhcp", help="the DHCP server (Kea): HA state, partner, leases")
    p.add_argument("action", nargs="?", default="status",
                   choices=["status", "enabled", "enabled6", "render", "apply", "textfile"], help="default: status")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--prom", action="store_true", help="status as Prometheus text")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg, node, _ = load_from_args(args)
    if args.action == "enabled":
        return EXIT_OK if cfg.dhcp else EXIT_PROBLEM
    if args.action == "enabled6":
        return EXIT_OK if dhcpcore.serves6(cfg) else EXIT_PROBLEM
    if args.action in ("render", "apply"):
        return _render(args, cfg, node)
    data = dhcpsvc.status(cfg, node)
    if args.action == "textfile":
        if cfg.metrics.textfile_dir and cfg.dhcp:
            metrics.write_textfile(metrics.textfile_dir(cfg.metrics.textfile_dir, node), "fwcluster-dhcp",
                                   metrics.render(metrics.dhcp_families(data, cfg.name)))
        return EXIT_OK
    if args.prom:
        sys.stdout.write(metrics.render(metrics.dhcp_families(data, cfg.name)))
    else:
        emit(args, data, human)
    return EXIT_OK if healthy(data) else EXIT_PROBLEM


def _server_healthy(d: dict) -> bool:
    return bool(d.get("running")) and d.get("state") in HEALTHY and not d.get("problem")


def healthy(d: dict) -> bool:
    """kea-dhcp4, and kea-dhcp6 where configured, answer in a serving state."""
    return not d.get("enabled") or (_server_healthy(d) and ("v6" not in d or _server_healthy(d["v6"])))


def _lease_dir() -> None:
    """/config/dhcp, Kea's lease directory (the units bind it onto
    /var/lib/kea), owned by the user Kea runs as."""
    os.makedirs(dhcpsvc.LEASE_DIR_ON_CONFIG, mode=0o750, exist_ok=True)
    try:
        kea = pwd.getpwnam(dhcpsvc.KEA_GROUP)
    except KeyError:
        return
    os.chown(dhcpsvc.LEASE_DIR_ON_CONFIG, kea.pw_uid, kea.pw_gid)


def _systemctl(*argv: str) -> int:
    return subprocess.run(["systemctl", *argv], check=False).returncode


def _render(args, cfg, node) -> int:
    result = {"enabled": bool(cfg.dhcp), "changed": []}
    if cfg.dhcp:
        result["changed"] = dhcpsvc.write(dhcpsvc.render(cfg, node, configfile.secret(cfg)))
        if os.path.isdir("/config"):
            _lease_dir()
    if args.action == "apply":
        units = UNITS + ((UNIT6,) if dhcpcore.serves6(cfg) else ())
        if not cfg.dhcp:
            result["systemctl"] = _systemctl("stop", *UNITS, UNIT6)
        else:
            if UNIT6 not in units:
                _systemctl("stop", UNIT6)  # pools6 gone: kea-dhcp6 off, DHCPv4 carries on
            verb = "reload-or-restart" if result["changed"] else "start"
            result["systemctl"] = _systemctl(verb, *units)
    emit(args, result, lambda r: print(
        ("DHCP off" if not r["enabled"] else
         f"Kea configuration: {', '.join(r['changed']) or 'unchanged'}")
        + (f" (systemctl exit {r['systemctl']})" if r.get("systemctl") else "")))
    return EXIT_OK if not result.get("systemctl") else EXIT_PROBLEM


def line(d: dict) -> str:
    """One line for fwctl status (kea-dhcp6's part after "v6:")."""
    if not d.get("enabled"):
        return "dhcp: off"
    text = f"dhcp: {_server_line(d, d.get('mode'), d.get('role'))}"
    if "v6" in d:
        text += f"; v6: {_server_line(d['v6'], None, d.get('role'))}"
    return text


def _server_line(d: dict, mode, role) -> str:
    problem = f"; PROBLEM: {d['problem']}" if d.get("problem") else ""
    if not d.get("running"):
        return f"{role}, Kea NOT running ({d.get('error', 'no answer')}){problem}"
    leases = ", ".join(f"{s['interface']} {_n(s['assigned'])}/{_n(s['total'])}"
                       for s in d.get("subnets", []))
    partner = f"{d.get('partner_role')} {d.get('partner_state') or 'unknown'}"
    age = d.get("partner_age")
    return (f"{mode + ' ' if mode else ''}{d.get('role')} {d.get('state')}; partner {partner}"
            f"{'' if age is None else f' (heard {age}s ago)'}; leases {leases or '-'}{problem}")


def _n(v) -> str:
    return "?" if v is None else str(v)


def human(d: dict) -> None:
    print(line(d))
    for name, server in (("", d), ("DHCPv6 ", d.get("v6") or {})):
        if server.get("running") and server.get("unacked_clients"):
            print(f"  {name}clients the partner left unanswered: {server['unacked_clients']}")

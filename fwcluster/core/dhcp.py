"""Kea's configuration from the cluster model: kea-dhcp4, kea-dhcp6 (where a
[[dhcp]] table has pools6) and kea-ctrl-agent.

Pure: the caller hands in the paths and the secret; the result is a dict
ready for json.dumps. Lease sync is Kea's own High Availability hook
(libdhcp_ha.so with libdhcp_lease_cmds.so): each member's kea-dhcp4 sends
lease updates and heartbeats to its partners' kea-ctrl-agent, which listens
on the member's sync address and checks HTTP basic auth (Kea 2.2's own HA
listener takes no authentication, the control agent does). kea-dhcp6 does
the same through the same agent, with the same peers and roles: the agent
hands each request to the server its "service" names.

Roles are static (docs/dhcp.md, "Roles"): the member CARP prefers
(lowest advskew, then the name) is Kea's primary, the next one standby (or
secondary in load-balancing), the rest backups.
"""
from __future__ import annotations

import base64
import hashlib

from fwcluster.core import hkdf

# Kea HA timings, milliseconds. Heartbeats every second; a partner silent for
# partner_down seconds is down (max-unacked-clients 0: do not also wait for
# DHCP clients to go unanswered, a small LAN may have none renewing then).
HEARTBEAT_MS = 1000
MAX_ACK_DELAY_MS = 1000
MAX_UNACKED_CLIENTS = 0
# The lease file on /config (memfile: one CSV row appended per grant,
# renewal and HA update; kea-lfc rewrites it with one row per lease). A row
# is at most this long with a hostname; between two compactions the file
# may grow by LEASE_GROWTH_BUDGET, so it stays below lease_file_bound().
LEASE_ROW_BYTES = {4: 160, 6: 224}  # a DHCPv6 row holds a DUID and more fields
LEASE_GROWTH_BUDGET = 4 << 20
LFC_MIN, LFC_MAX = 30, 600
# Less than this free for the lease file and Kea's next writes may fail:
# a grant or renewal it cannot write it does not answer (docs/dhcp.md).
LEASE_SPACE_LOW = 256 << 10
HOOKS_DIR = "/usr/lib/x86_64-linux-gnu/kea/hooks"
HA_LABEL = b"fwcluster dhcp ha basic auth v1"
SUBNET_ID_BASE = 1
# kea-dhcp6's server DUID: DUID-EN under ISC's enterprise number (what Kea
# generates itself), the identifier derived from cluster and member name, so
# it is stable across reboots and reinstalls without a server-id file, and
# differs between members (a client's RENEW names the server it leased from).
DUID_EN_ENTERPRISE = 2495
POOL_FIELD = {4: "pools", 6: "pools6"}


def ha_roles(cfg) -> dict[str, str]:
    """Member name -> Kea HA role. The CARP-preferred member (lowest
    advskew) is primary; the name breaks a tie because Kea needs exactly
    one primary."""
    order = sorted(cfg.members, key=lambda m: (m.advskew, m.name))
    second = "standby" if cfg.dhcp_ha.mode == "hot-standby" else "secondary"
    roles = {}
    for i, m in enumerate(order):
        roles[m.name] = "primary" if i == 0 else second if i == 1 else "backup"
    return roles


def ha_password(secret: bytes, cluster: str) -> str:
    """The basic-auth password every member uses towards its partners'
    control agents: derived from the cluster secret, so it changes with it
    and is never the secret itself."""
    key = hkdf.hkdf(secret, cluster.encode(), HA_LABEL, 24)
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def serves6(cfg) -> bool:
    """DHCPv6 too: some [[dhcp]] table has pools6."""
    return any(d.pools6 for d in cfg.dhcp)


def pool_addresses(cfg, family: int = 4) -> int:
    return sum(int(last) - int(first) + 1
               for d in cfg.dhcp for first, last in getattr(d, POOL_FIELD[family]))


def _rows_per_second(cfg, family: int) -> float:
    """Rows appended to the lease file at most: every pool address leased,
    each client renewing at half its lease (the busiest this LAN gets)."""
    return sum((int(last) - int(first) + 1) * 2 / d.lease_time
               for d in cfg.dhcp for first, last in getattr(d, POOL_FIELD[family]))


def lfc_interval(cfg, family: int = 4) -> int:
    """Seconds between two compactions of the family's lease file: short
    enough that the rows appended in between fit LEASE_GROWTH_BUDGET."""
    rows_per_s = _rows_per_second(cfg, family)
    if rows_per_s <= 0:
        return LFC_MAX
    return int(min(LFC_MAX, max(LFC_MIN, LEASE_GROWTH_BUDGET / (rows_per_s * LEASE_ROW_BYTES[family]))))


def lease_file_bound(cfg, family: int = 4) -> int:
    """Bytes the family's lease file reaches at most: one row per pool
    address after a compaction, plus what lfc_interval() lets grow until
    the next one."""
    growth = _rows_per_second(cfg, family) * lfc_interval(cfg, family) * LEASE_ROW_BYTES[family]
    return int(pool_addresses(cfg, family) * LEASE_ROW_BYTES[family] + growth)


def server_duid(cfg, node: str) -> dict:
    """kea-dhcp6's server-id: DUID-EN, identifier from cluster and member."""
    ident = hashlib.sha256(f"{cfg.name}\0{node}".encode()).hexdigest()[:16]
    return {"type": "EN", "enterprise-id": DUID_EN_ENTERPRISE, "identifier": ident, "persist": False}


def lease_space_problem(free_bytes: int | None) -> str | None:
    """What to say when the lease file's file system is (nearly) full."""
    if free_bytes is None or free_bytes >= LEASE_SPACE_LOW:
        return None
    return (f"lease file system full ({free_bytes // 1024} KiB free): Kea answers no grant or "
            "renewal it cannot write; free space on /config")


def _url(member, port: int) -> str:
    host = str(member.sync_address)
    if member.sync_address.version == 6:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _pool_text(first, last) -> str:
    return f"{first} - {last}"


def _subnet(index: int, d) -> dict:
    options = [{"name": "routers", "data": str(d.router)},
               {"name": "domain-name-servers", "data": ", ".join(str(a) for a in d.dns)}]
    # The server identifier stays Kea's default, the member's own address:
    # Kea's packet filter takes unicast only to addresses the interface had
    # when Kea opened it, so a vip that arrives later would lose renewals
    # (docs/dhcp.md, "Renewal and rebinding").
    if d.domain:
        options.append({"name": "domain-name", "data": d.domain})
    subnet = {
        "id": SUBNET_ID_BASE + index,
        "subnet": str(d.subnet),
        "interface": d.interface,
        "valid-lifetime": d.lease_time,
        "pools": [{"pool": _pool_text(f, l)} for f, l in d.pools],
        "option-data": options,
    }
    if d.reservations:
        subnet["reservations"] = [
            {"hw-address": r.mac, "ip-address": str(r.ip), **({"hostname": r.hostname} if r.hostname else {})}
            for r in d.reservations]
    return subnet


def _ha(cfg, node: str, secret: bytes) -> dict:
    """The HA hook's parameters, the same for kea-dhcp4 and kea-dhcp6."""
    roles = ha_roles(cfg)
    password = ha_password(secret, cfg.name)
    peers = [{"name": m.name, "url": _url(m, cfg.dhcp_ha.port), "role": roles[m.name],
              "auto-failover": roles[m.name] != "backup",
              "basic-auth-user": cfg.name, "basic-auth-password": password}
             for m in sorted(cfg.members, key=lambda m: m.name)]
    ha = {
        "this-server-name": node,
        "mode": cfg.dhcp_ha.mode,
        "heartbeat-delay": HEARTBEAT_MS,
        "max-response-delay": cfg.dhcp_ha.partner_down * 1000,
        "max-ack-delay": MAX_ACK_DELAY_MS,
        "max-unacked-clients": MAX_UNACKED_CLIENTS,
        "peers": peers,
    }
    return ha


def _server(cfg, node: str, family: int, secret: bytes, lease_file: str, control_socket: str,
            hooks_dir: str, log_output: str, interfaces: list[str]) -> dict:
    """What kea-dhcp4's and kea-dhcp6's configurations share."""
    return {
        "interfaces-config": {"interfaces": interfaces,
                              # the LAN may come up after Kea: retry binding
                              "service-sockets-max-retries": 30,
                              "service-sockets-retry-wait-time": 2000},
        "lease-database": {"type": "memfile", "persist": True, "name": lease_file,
                           "lfc-interval": lfc_interval(cfg, family)},
        # The HA hook without multi-threading talks through kea-ctrl-agent,
        # which is what checks the partner's credentials.
        "multi-threading": {"enable-multi-threading": False},
        "control-socket": {"socket-type": "unix", "socket-name": control_socket},
        "hooks-libraries": [
            {"library": f"{hooks_dir}/libdhcp_lease_cmds.so"},
            {"library": f"{hooks_dir}/libdhcp_ha.so",
             "parameters": {"high-availability": [_ha(cfg, node, secret)]}},
        ],
        "loggers": [{"name": f"kea-dhcp{family}", "severity": "INFO",
                     "output_options": [{"output": log_output}]}],
    }


def dhcp4(cfg, node: str, *, secret: bytes, lease_file: str, control_socket: str,
          hooks_dir: str = HOOKS_DIR, log_output: str = "syslog") -> dict:
    """kea-dhcp4's configuration for `node` (cfg.dhcp must not be empty)."""
    conf = _server(cfg, node, 4, secret, lease_file, control_socket, hooks_dir, log_output,
                   [d.interface for d in cfg.dhcp])
    conf["interfaces-config"]["dhcp-socket-type"] = "raw"
    conf["valid-lifetime"] = max(d.lease_time for d in cfg.dhcp)
    conf["subnet4"] = [_subnet(i, d) for i, d in enumerate(cfg.dhcp)]
    return {"Dhcp4": conf}


def _subnet6(index: int, d) -> dict:
    # No router option in DHCPv6: hosts learn routers from the vip's router
    # advertisements.
    options = [{"name": "dns-servers", "data": ", ".join(str(a) for a in d.dns6)}]
    if d.domain:
        options.append({"name": "domain-search", "data": d.domain})
    return {
        "id": SUBNET_ID_BASE + index,
        "subnet": str(d.subnet6),
        "interface": d.interface,
        "valid-lifetime": d.lease_time,
        "preferred-lifetime": d.lease_time,
        "pools": [{"pool": _pool_text(f, l)} for f, l in d.pools6],
        "option-data": options,
    }


def dhcp6(cfg, node: str, *, secret: bytes, lease_file: str, control_socket: str,
          hooks_dir: str = HOOKS_DIR, log_output: str = "syslog") -> dict:
    """kea-dhcp6's configuration for `node` (serves6(cfg) must hold): the
    tables with pools6, the same HA peers and roles as kea-dhcp4. Subnet ids
    are the tables' positions, as in dhcp4(). Renewal (T1) at half the
    lease, rebinding (T2) at 0.8 (Kea's calculated timers)."""
    tables = [(i, d) for i, d in enumerate(cfg.dhcp) if d.pools6]
    conf = _server(cfg, node, 6, secret, lease_file, control_socket, hooks_dir, log_output,
                   [d.interface for _, d in tables])
    conf["server-id"] = server_duid(cfg, node)
    conf["calculate-tee-times"] = True
    conf["valid-lifetime"] = max(d.lease_time for _, d in tables)
    conf["preferred-lifetime"] = conf["valid-lifetime"]
    conf["subnet6"] = [_subnet6(i, d) for i, d in tables]
    return {"Dhcp6": conf}


def ctrl_agent(cfg, node: str, *, secret: bytes, control_socket: str,
               control_socket6: str | None = None, log_output: str = "syslog") -> dict:
    """kea-ctrl-agent's configuration: the HA endpoint on the sync address,
    basic auth with the derived password; it forwards to kea-dhcp6 too when
    control_socket6 is given."""
    me = cfg.member(node)
    sockets = {"dhcp4": {"socket-type": "unix", "socket-name": control_socket}}
    if control_socket6:
        sockets["dhcp6"] = {"socket-type": "unix", "socket-name": control_socket6}
    return {"Control-agent": {
        "http-host": str(me.sync_address),
        "http-port": cfg.dhcp_ha.port,
        "authentication": {"type": "basic", "realm": f"fwcluster {cfg.name}",
                           "clients": [{"user": cfg.name,
                                        "password": ha_password(secret, cfg.name)}]},
        "control-sockets": sockets,
        "loggers": [{"name": "kea-ctrl-agent", "severity": "INFO",
                     "output_options": [{"output": log_output}]}],
    }}


def ha_summary(status_get: dict) -> dict:
    """The HA part of kea-dhcp4's `status-get` reply, flattened for fwctl
    and metrics: own role and state, the partner's last state as seen."""
    ha = (status_get.get("high-availability") or [{}])[0]
    servers = ha.get("ha-servers", {})
    local, remote = servers.get("local", {}), servers.get("remote", {})
    return {"mode": ha.get("ha-mode"), "role": local.get("role"), "state": local.get("state"),
            "scopes": local.get("scopes", []),
            "partner_role": remote.get("role"), "partner_state": remote.get("last-state"),
            "partner_in_touch": remote.get("in-touch"), "partner_age": remote.get("age"),
            "unacked_clients": remote.get("unacked-clients")}


def _stat(stats: dict, name: str) -> int | None:
    """A value of Kea's statistic-get-all reply ({name: [[value, time], ...]})."""
    samples = stats.get(name)
    if not samples or not isinstance(samples[0], list) or not samples[0]:
        return None
    value = samples[0][0]
    return value if isinstance(value, int) else None


def lease_counts(cfg, stats: dict, family: int = 4) -> list[dict]:
    """Per [[dhcp]] interface (of the family): addresses leased and in the
    pools, from Kea's statistics (subnet ids as dhcp4()/dhcp6() number them)."""
    out = []
    what = "addresses" if family == 4 else "nas"
    for i, d in enumerate(cfg.dhcp):
        if family == 6 and not d.pools6:
            continue
        sid = SUBNET_ID_BASE + i
        out.append({"interface": d.interface, "subnet": str(d.subnet if family == 4 else d.subnet6),
                    "assigned": _stat(stats, f"subnet[{sid}].assigned-{what}"),
                    "total": _stat(stats, f"subnet[{sid}].total-{what}")})
    return out

"""cluster.toml -> typed, validated model.

Pure: reads a file, touches no network or kernel state. Every error names the
file, the key (dotted, with table indexes) and the reason, on one line, so an
operator can fix it without reading code. Daemons exit with status 2 on any
ConfigError.
"""
from __future__ import annotations

import ipaddress
import posixpath
from dataclasses import dataclass, field
from typing import Any

EXIT_CONFIG = 2


class ConfigError(Exception):
    """A config problem: file, dotted key and reason."""

    def __init__(self, file: str, key: str, reason: str):
        self.file = str(file)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.file}: {key}: {reason}" if key else f"{self.file}: {reason}")


@dataclass(frozen=True)
class Member:
    name: str
    sync_address: ipaddress.IPv4Address | ipaddress.IPv6Address
    advskew: int = 0


@dataclass(frozen=True)
class Vip:
    vhid: int
    interface: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    advbase: int = 1

    @property
    def family(self) -> int:
        return self.address.version


@dataclass(frozen=True)
class Sync:
    interface: str
    port: int = 3780


@dataclass(frozen=True)
class Carp:
    preempt: bool = True
    # Demotion added while a vip interface has no carrier (OpenBSD uses 240
    # for a dead link; any value larger than a peer's advskew spread works).
    link_demote: int = 240
    maintenance_demote: int = 240
    # Seconds a starting carpd stays demoted waiting for syncd's bulk resync
    # (ordered takeover, as pfsync does); syncd lifts it early. 0 = no wait.
    sync_hold: int = 0


@dataclass(frozen=True)
class Balance:
    mode: str = "active-standby"
    buckets: int = 0


@dataclass(frozen=True)
class Metrics:
    listen: str = ""  # "127.0.0.1:9780"; empty = off
    textfile_dir: str = ""  # node-exporter textfile collector dir; empty = off


@dataclass(frozen=True)
class Firewall:
    template: str = "/etc/fwcluster/ruleset.nft.j2"


@dataclass(frozen=True)
class Config:
    path: str
    name: str
    secret_file: str
    run_dir: str
    state_dir: str
    sync: Sync
    carp: Carp
    members: tuple[Member, ...]
    vips: tuple[Vip, ...]
    firewall: Firewall
    balance: Balance
    metrics: Metrics
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise ConfigError(self.path, "member", f"no member named {name!r} "
                          f"(members: {', '.join(m.name for m in self.members)})")

    def peers(self, name: str) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.name != name)

    @property
    def interfaces(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for v in self.vips:
            seen.setdefault(v.interface)
        return tuple(seen)


# --- schema -----------------------------------------------------------------
# Each table lists its keys with (type, default); a default of REQUIRED means
# the key must be present. Unknown keys are errors: a typo must not silently
# fall back to a default on a firewall.
REQUIRED = object()

_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "cluster": {
        "name": (str, REQUIRED),
        "secret_file": (str, REQUIRED),
        "run_dir": (str, "/run/fwcluster"),
        "state_dir": (str, "/var/lib/fwcluster"),
    },
    "sync": {"interface": (str, REQUIRED), "port": (int, 3780)},
    "carp": {
        "preempt": (bool, True),
        "link_demote": (int, 240),
        "maintenance_demote": (int, 240),
        "sync_hold": (int, 0),
    },
    "member": {
        "name": (str, REQUIRED),
        "sync_address": (str, REQUIRED),
        "advskew": (int, 0),
    },
    "vip": {
        "vhid": (int, REQUIRED),
        "interface": (str, REQUIRED),
        "address": (str, REQUIRED),
        "advbase": (int, 1),
    },
    "firewall": {"template": (str, "/etc/fwcluster/ruleset.nft.j2")},
    "balance": {"mode": (str, "active-standby"), "buckets": (int, 0)},
    "metrics": {"listen": (str, ""), "textfile_dir": (str, "")},
}
_ARRAYS = {"member", "vip"}  # [[member]], [[vip]]
_REQUIRED_TABLES = {"cluster", "sync", "member", "vip"}
BALANCE_MODES = ("active-standby", "active-active")

# Documentation of every key, used by `fwctl config reference` and
# docs/configuration.md (a test keeps the two in step).
KEY_DOCS: dict[str, str] = {
    "cluster.name": "Cluster name; shown by fwctl and in metrics.",
    "cluster.secret_file": "File whose first line is the shared passphrase "
    "(CARP HMAC key; sync keys are derived from it). Must not be world-readable.",
    "cluster.run_dir": "Directory of the daemons' control sockets.",
    "cluster.state_dir": "Persistent daemon state (maintenance flag). On the "
    "appliance it lives on /config.",
    "sync.interface": "Interface of the dedicated state-sync link.",
    "sync.port": "UDP port of state sync (1-65535).",
    "carp.preempt": "A member with a better (lower) skew takes the vips back.",
    "carp.link_demote": "Demotion added while a vip interface has no carrier.",
    "carp.maintenance_demote": "Demotion added by `fwctl maintenance on`.",
    "carp.sync_hold": "Seconds a starting carpd stays demoted until syncd reports "
    "its bulk resync done (ordered takeover); 0 = do not wait.",
    "member.name": "Member name; each daemon is told which one it is by --node.",
    "member.sync_address": "This member's address on the sync link (IPv4 or IPv6).",
    "member.advskew": "CARP advskew (0-254) of this member for every vip; "
    "the lowest wins the election.",
    "vip.vhid": "CARP virtual host id (1-255), unique in the cluster.",
    "vip.interface": "Interface that carries the vip.",
    "vip.address": "Virtual address with prefix length, IPv4 or IPv6.",
    "vip.advbase": "Seconds between adverts (0-254); 0 with advskew > 0 gives "
    "sub-second intervals of advskew/256 s.",
    "firewall.template": "jinja2 template of the nftables ruleset; a relative path is "
    "taken from the directory of cluster.toml.",
    "balance.mode": "active-standby (default) or active-active.",
    "balance.buckets": "Hash buckets shared among members in active-active mode.",
    "metrics.listen": "host:port of carpd's Prometheus endpoint; syncd serves on the same "
    "host at port + 1 (so the port must be at most 65534); empty = off.",
    "metrics.textfile_dir": "Directory for node-exporter textfile output; empty = off.",
}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {"str": "string", "int": "integer", "bool": "boolean"}.get(t.__name__, t.__name__)


def _check_table(path: str, prefix: str, table: Any, schema) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(path, prefix, "must be a table")
    for key in table:
        if key not in schema:
            raise ConfigError(path, f"{prefix}.{key}", f"unknown key (known: {', '.join(schema)})")
    out = {}
    for key, (typ, default) in schema.items():
        if key not in table:
            if default is REQUIRED:
                raise ConfigError(path, f"{prefix}.{key}", "missing required key")
            out[key] = default
            continue
        value = table[key]
        # bool is an int subclass in Python; do not accept true as a number.
        if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
            name = _type_name(typ)
            article = "an" if name[0] in "aeiou" else "a"
            raise ConfigError(path, f"{prefix}.{key}", f"must be {article} {name}, got {value!r}")
        out[key] = value
    return out


def _in_range(path, key, value, lo, hi):
    if not lo <= value <= hi:
        raise ConfigError(path, key, f"{value} is outside {lo}-{hi}")


def parse(data: dict, path: str = "<config>", node: str | None = None) -> Config:
    for top in data:
        if top not in _SCHEMA:
            raise ConfigError(path, top, f"unknown table (known: {', '.join(_SCHEMA)})")
    for top in _REQUIRED_TABLES:
        if top not in data:
            raise ConfigError(path, top, "missing required table")
    tables = {}
    for top, schema in _SCHEMA.items():
        if top in _ARRAYS:
            items = data.get(top, [])
            if not isinstance(items, list) or not items:
                raise ConfigError(path, top, f"must be one or more [[{top}]] tables")
            tables[top] = [_check_table(path, f"{top}[{i}]", t, schema)
                           for i, t in enumerate(items)]
        else:
            tables[top] = _check_table(path, top, data.get(top, {}), schema)

    c, s = tables["cluster"], tables["sync"]
    if not c["name"]:
        raise ConfigError(path, "cluster.name", "must not be empty")
    _in_range(path, "sync.port", s["port"], 1, 65535)
    carp = tables["carp"]
    for k in ("link_demote", "maintenance_demote"):
        _in_range(path, f"carp.{k}", carp[k], 0, 255)
    _in_range(path, "carp.sync_hold", carp["sync_hold"], 0, 3600)

    members = []
    seen_names: dict[str, int] = {}
    seen_sync: dict[str, int] = {}
    for i, m in enumerate(tables["member"]):
        key = f"member[{i}]"
        if not m["name"]:
            raise ConfigError(path, f"{key}.name", "must not be empty")
        if m["name"] in seen_names:
            raise ConfigError(path, f"{key}.name",
                              f"duplicate member name {m['name']!r} (also member[{seen_names[m['name']]}])")
        seen_names[m["name"]] = i
        try:
            addr = ipaddress.ip_address(m["sync_address"])
        except ValueError:
            raise ConfigError(path, f"{key}.sync_address",
                              f"malformed address {m['sync_address']!r}") from None
        if str(addr) in seen_sync:
            raise ConfigError(path, f"{key}.sync_address",
                              f"duplicate address {addr} (also member[{seen_sync[str(addr)]}])")
        seen_sync[str(addr)] = i
        _in_range(path, f"{key}.advskew", m["advskew"], 0, 254)
        members.append(Member(m["name"], addr, m["advskew"]))

    vips = []
    seen_vhid: dict[int, int] = {}
    for i, v in enumerate(tables["vip"]):
        key = f"vip[{i}]"
        _in_range(path, f"{key}.vhid", v["vhid"], 1, 255)
        if v["vhid"] in seen_vhid:
            raise ConfigError(path, f"{key}.vhid",
                              f"duplicate vhid {v['vhid']} (also vip[{seen_vhid[v['vhid']]}])")
        seen_vhid[v["vhid"]] = i
        if not v["interface"]:
            raise ConfigError(path, f"{key}.interface", "must not be empty")
        if "/" not in v["address"]:
            raise ConfigError(path, f"{key}.address",
                              f"malformed address {v['address']!r}: needs a prefix length, e.g. 192.0.2.1/24")
        try:
            addr = ipaddress.ip_interface(v["address"])
        except ValueError as e:
            raise ConfigError(path, f"{key}.address", f"malformed address {v['address']!r}: {e}") from None
        _in_range(path, f"{key}.advbase", v["advbase"], 0, 254)
        if v["advbase"] == 0:
            for j, m in enumerate(members):
                if m.advskew == 0:
                    raise ConfigError(path, f"{key}.advbase",
                                      f"advbase 0 with member[{j}] ({m.name}) advskew 0 gives a zero "
                                      "advert interval; give that member advskew > 0")
        vips.append(Vip(v["vhid"], v["interface"], addr, v["advbase"]))

    b = tables["balance"]
    if b["mode"] not in BALANCE_MODES:
        raise ConfigError(path, "balance.mode", f"{b['mode']!r} is not one of {', '.join(BALANCE_MODES)}")
    if b["mode"] == "active-active":
        _in_range(path, "balance.buckets", b["buckets"], 1, 255 - len(vips))
    elif b["buckets"] < 0:
        raise ConfigError(path, "balance.buckets", "must not be negative")

    met = tables["metrics"]
    if met["listen"]:
        host, sep, port = met["listen"].rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(path, "metrics.listen", f"{met['listen']!r} is not host:port")
        _in_range(path, "metrics.listen", int(port), 1, 65534)  # syncd uses port + 1

    fw = tables["firewall"]
    if fw["template"] and not posixpath.isabs(fw["template"]):
        # Relative to cluster.toml, so one file works wherever a member keeps it.
        fw["template"] = posixpath.join(posixpath.dirname(path), fw["template"])
    cfg = Config(
        path=path, name=c["name"], secret_file=c["secret_file"], run_dir=c["run_dir"],
        state_dir=c["state_dir"], sync=Sync(s["interface"], s["port"]),
        carp=Carp(**carp), members=tuple(members), vips=tuple(vips),
        firewall=Firewall(**tables["firewall"]), balance=Balance(**b),
        metrics=Metrics(**met), raw=data,
    )
    if node is not None:
        if node not in seen_names:
            raise ConfigError(path, "--node", f"{node!r} is not a member "
                              f"(members: {', '.join(seen_names)})")
    return cfg

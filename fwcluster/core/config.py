"""cluster.toml -> typed, validated model.

Pure: reads a file, touches no network or kernel state. Every error names the
file, the key (dotted, with table indexes) and the reason, on one line, so an
operator can fix it without reading code. Daemons exit with status 2 on any
ConfigError.
"""
from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from fwcluster.core import virtualmac

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
    # The address on each sync link, in [sync] interfaces order; the first
    # is sync_address (where the config channel listens).
    sync_addresses: tuple = ()

    @property
    def link_addresses(self) -> tuple:
        return self.sync_addresses or (self.sync_address,)


@dataclass(frozen=True)
class Vip:
    vhid: int
    interface: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    advbase: int = 1
    # Unicast CARP: the members' own addresses on this segment. Adverts go to
    # each of them (our own skipped) instead of the CARP multicast group.
    peers: tuple = ()
    # "virtual": the vip lives on a macvlan with the VRRP MAC of its vhid
    # (fwcluster.core.virtualmac); "own": on the interface, with its MAC.
    mac: str = "own"
    # Seconds between the master's repeated gratuitous ARP / unsolicited
    # NA (a neighbour or switch that missed or ignored one); 0 = off.
    garp_refresh: int = 0
    # A link-local IPv6 vip: seconds between the master's router adverts
    # from it (fwcluster.carp.core.ramsg); 0 = none.
    ra_interval: int = 0
    # The failover group whose vips move together ([[group]]; "default":
    # the members' own advskew and [carp] preempt).
    group: str = "default"

    @property
    def family(self) -> int:
        return self.address.version


SYNC_STATES = ("sessions", "all")
# Protocol names [sync] filter accepts (numbers 0-255 are accepted too).
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
                    "icmpv6": 58, "sctp": 132, "dccp": 33, "udplite": 136}


@dataclass(frozen=True)
class SyncFilter:
    """[sync] filter: which conntrack entries are replicated. The rule that
    applies it is syncd.core.policy.replicated; the ruleset's ct event masks
    follow `states` (fwcluster.nft.context)."""
    # "sessions": an entry from the moment conntrack marks it assured (TCP
    # established, UDP/SCTP/... with traffic both ways), to its end; "all":
    # every entry from its first packet (the behaviour before issue 24).
    states: str = "sessions"
    protocols: tuple = ()    # protocol numbers replicated; () = every protocol
    ignore: tuple = ()       # address ranges (strings) whose flows are not replicated


@dataclass(frozen=True)
class Sync:
    # The sync links, first preferred (syncd/core/links.py chooses among
    # them); `interface` alone in cluster.toml is a list of one.
    interfaces: tuple
    port: int = 3780
    # Seconds between anti-entropy rounds: a lost conntrack event or a
    # delete lost while a stream was broken is repaired within one.
    digest_interval: int = 30
    filter: SyncFilter = SyncFilter()   # what is replicated (syncd/core/policy.py)

    @property
    def interface(self) -> str:
        """The preferred sync link."""
        return self.interfaces[0]


@dataclass(frozen=True)
class Carp:
    preempt: bool = True
    # Demotion added while a vip interface has no carrier (OpenBSD uses 240
    # for a dead link; any value larger than a peer's advskew spread works).
    link_demote: int = 240
    maintenance_demote: int = 240
    # Seconds a starting carpd stays demoted waiting for syncd's bulk resync
    # (ordered takeover, as pfsync does); syncd lifts it as soon as it is in
    # sync (about 3 s without live peers), the bound only covers a member
    # whose syncd does not run. 0 = no wait.
    sync_hold: int = 30
    # "compatible": CARP v2 adverts as ucarp and OpenBSD send them;
    # "hardened": every advert field MACed, counters replay-checked
    # (docs/carp.md, "Trust models"). The two do not interoperate; only a
    # ucarp or OpenBSD peer needs compatible, so it must be asked for.
    mode: str = "hardened"


@dataclass(frozen=True)
class Balance:
    mode: str = "active-standby"
    buckets: int = 0


@dataclass(frozen=True)
class Metrics:
    listen: str = ""  # "127.0.0.1:9780"; empty = off
    textfile_dir: str = ""  # node-exporter textfile collector dir; empty = off


# Conntrack helpers the template can assign: protocol -> (transport, the
# port it listens on unless the config says otherwise).
HELPER_PROTOCOLS = {"ftp": ("tcp", 21), "sip": ("udp", 5060)}


@dataclass(frozen=True)
class Helper:
    protocol: str        # a key of HELPER_PROTOCOLS (the kernel's helper name)
    port: int

    @property
    def transport(self) -> str:
        return HELPER_PROTOCOLS[self.protocol][0]

    @property
    def name(self) -> str:
        """The nft ct helper object's name, e.g. ftp_21."""
        return f"{self.protocol}_{self.port}"


@dataclass(frozen=True)
class Firewall:
    template: str = "/etc/fwcluster/ruleset.nft.j2"
    helpers: tuple = ()  # Helper, ...


@dataclass(frozen=True)
class Reservation:
    mac: str  # lower case, colon separated
    ip: ipaddress.IPv4Address
    hostname: str = ""


@dataclass(frozen=True)
class Dhcp:
    """One [[dhcp]] table: Kea serves DHCPv4 on `interface`, whose IPv4 vip
    gives the subnet and the defaults of router and DNS; and DHCPv6 when
    pools6 is given, in the prefix of its IPv6 vip."""
    interface: str
    subnet: ipaddress.IPv4Network
    vip: ipaddress.IPv4Address
    pools: tuple  # ((first, last), ...) IPv4Address pairs, inclusive
    router: ipaddress.IPv4Address
    dns: tuple  # IPv4Address, ...
    domain: str = ""
    lease_time: int = 3600
    reservations: tuple = ()  # Reservation, ...
    # DHCPv6 (IA_NA addresses); pools6 empty: no DHCPv6 on this interface
    pools6: tuple = ()  # ((first, last), ...) IPv6Address pairs, inclusive
    subnet6: ipaddress.IPv6Network | None = None
    vip6: ipaddress.IPv6Address | None = None
    dns6: tuple = ()  # IPv6Address, ...


@dataclass(frozen=True)
class DhcpHa:
    # Kea's HA mode (docs/dhcp.md): one server answers, the other takes over
    # at partner-down; or both answer, each for half of the clients.
    mode: str = "hot-standby"
    port: int = 8647  # kea-ctrl-agent on each member's sync address
    # Seconds without an answer from the partner before a survivor serves
    # its clients too (Kea's max-response-delay).
    partner_down: int = 3


@dataclass(frozen=True)
class Track:
    """Something whose failure demotes the member by `weight` (docs/tracking.md)."""
    name: str
    type: str  # one of TRACK_TYPES
    interface: str = ""  # interface: the one watched; icmp/tcp: the probe's device
    reverse: bool = False
    target: str = ""
    port: int = 0
    command: tuple = ()
    user: str = "nobody"
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    weight: int = 240
    flap_limit: int = 4


@dataclass(frozen=True)
class Group:
    """A failover group: its vips move together, elected with these skews."""
    name: str
    preempt: bool = True
    # Seconds a member must have been better than the group's master
    # before it preempts (machine.preempt_held).
    preempt_delay: float = 0.0
    advskew: tuple = ()  # ((member name, advskew), ...) for every member, by name

    def skew(self, member: str) -> int:
        return dict(self.advskew)[member]


DEFAULT_GROUP = "default"
# Bits of the conntrack mark that name a flow's failover group (the ruleset
# sets them at a flow's first packet; syncd's ownership reads them). Group
# index 0 is mark 0: a cluster of one group marks nothing.
GROUP_MARK_SHIFT = 24
GROUP_MARK_MASK = 0x0F << GROUP_MARK_SHIFT
# The conntrack mark bit of a flow that is never replicated (pf's no-sync):
# the ruleset's `sync.nosync` rule fragment sets it (and an empty ct event
# mask) at the flow's first packet; syncd's policy skips marked entries,
# in events and in dumps alike.
NOSYNC_MARK = 0x10000000
MAX_GROUPS = 16


def group_of_mark(mark: int) -> int:
    """The index in Config.groups of the group a conntrack mark names."""
    return (mark & GROUP_MARK_MASK) >> GROUP_MARK_SHIFT


@dataclass(frozen=True)
class Hooks:
    directory: str = "/config/hooks/role.d"
    timeout: int = 10


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
    tracks: tuple[Track, ...] = ()
    hooks: Hooks = Hooks()
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    dhcp: tuple[Dhcp, ...] = ()  # empty: no DHCP server
    dhcp_ha: DhcpHa = DhcpHa()
    # Failover groups, in mark order (group_of_mark); the implicit
    # "default" group, when any vip is in it, comes first.
    groups: tuple[Group, ...] = ()

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def group_index(self, name: str) -> int:
        return [g.name for g in self.groups].index(name)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise ConfigError(self.path, "member", f"no member named {name!r} "
                          f"(members: {', '.join(m.name for m in self.members)})")

    def peers(self, name: str) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.name != name)

    def wire_index(self, name: str) -> int:
        """The member's id on the sync wire (see wire_indexes)."""
        return wire_indexes(m.name for m in self.members)[name]

    @property
    def interfaces(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for v in self.vips:
            seen.setdefault(v.interface)
        return tuple(seen)


def wire_indexes(names) -> dict[str, int]:
    """Each member's u8 id on the sync wire (src/dst of a datagram): its
    position among the member names sorted. Members that list the
    [[member]] tables in another order agree on every id; adding or
    removing a member renumbers, which a reload carries as a new protocol
    run (docs/sync.md, "Live reload")."""
    return {n: i for i, n in enumerate(sorted(names))}


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
    "sync": {"interface": (str, None), "interfaces": (list, ()), "port": (int, 3780), "digest_interval": (int, 30),
             "filter": (dict, {})},
    "carp": {
        "preempt": (bool, True),
        "link_demote": (int, 240),
        "maintenance_demote": (int, 240),
        "sync_hold": (int, 30),
        "mode": (str, "hardened"),
    },
    "member": {
        "name": (str, REQUIRED),
        "sync_address": (str, None),
        "sync_addresses": (list, ()),
        "advskew": (int, 0),
    },
    "vip": {
        "vhid": (int, REQUIRED),
        "interface": (str, REQUIRED),
        "address": (str, REQUIRED),
        "advbase": (int, 1),
        "peers": (list, ()),
        "mac": (str, "own"),
        "garp_refresh": (int, 0),
        "ra_interval": (int, 0),
        "group": (str, DEFAULT_GROUP),
    },
    "group": {
        "name": (str, REQUIRED),
        "preempt": (bool, None),  # None: [carp] preempt
        "preempt_delay": ((int, float), 0),
        "advskew": (dict, {}),
    },
    "firewall": {"template": (str, "/etc/fwcluster/ruleset.nft.j2"), "helpers": (list, ())},
    "balance": {"mode": (str, "active-standby"), "buckets": (int, 0)},
    "metrics": {"listen": (str, ""), "textfile_dir": (str, "")},
    "dhcp": {
        "interface": (str, REQUIRED),
        "pools": (list, REQUIRED),
        "router": (str, ""),
        "dns": (list, ()),
        "domain": (str, ""),
        "lease_time": (int, 3600),
        "reservations": (list, ()),
        "pools6": (list, ()),
        "dns6": (list, ()),
    },
    "dhcp_ha": {"mode": (str, "hot-standby"), "port": (int, 8647), "partner_down": (int, 3)},
    "track": {
        "name": (str, REQUIRED),
        "type": (str, REQUIRED),
        "interface": (str, ""),
        "reverse": (bool, False),
        "target": (str, ""),
        "port": (int, 0),
        "command": (list, ()),
        "user": (str, "nobody"),
        "interval": ((int, float), 1),
        "timeout": ((int, float), 1),
        "rise": (int, 2),
        "fall": (int, 3),
        "weight": (int, 240),
        "flap_limit": (int, 4),
    },
    "hooks": {"directory": (str, "/config/hooks/role.d"), "timeout": (int, 10)},
}
_FILTER_SCHEMA = {"states": (str, "sessions"), "protocols": (list, ()), "ignore": (list, ())}
_ARRAYS = {"member", "vip", "dhcp", "track", "group"}  # [[member]], [[vip]], ...
_OPTIONAL_ARRAYS = {"dhcp", "track", "group"}  # may be absent: no DHCP server, no tracks, one group
# The keys each kind of track uses beyond the common ones (a key set for a
# kind that ignores it is an error: it would look like it did something).
TRACK_TYPES = {
    "interface": {"interface"},
    "icmp": {"target", "interface"},
    "tcp": {"target", "port", "interface"},
    "script": {"command", "user"},
}
TRACK_COMMON = {"name", "type", "reverse", "interval", "timeout", "rise", "fall", "weight",
                "flap_limit"}
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_REQUIRED_TABLES = ("cluster", "sync", "member", "vip")  # checked in this order
BALANCE_MODES = ("active-standby", "active-active")
CARP_MODES = ("compatible", "hardened")
DHCP_HA_MODES = ("hot-standby", "load-balancing")
# Every pool address of the cluster together: bounds Kea's lease file on
# /config (about 150 bytes a lease, twice that between two compactions).
MAX_DHCP_ADDRESSES = 16384
RESERVATION_KEYS = ("mac", "ip", "hostname")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

# Documentation of every key, used by `fwctl config reference` and
# docs/configuration.md (a test keeps the two in step).
KEY_DOCS: dict[str, str] = {
    "cluster.name": "Cluster name; shown by fwctl and in metrics. 1-63 of A-Z a-z 0-9 . _ -, "
    "starting with a letter or digit.",
    "cluster.secret_file": "File whose first line is the shared passphrase "
    "(CARP HMAC key; sync keys are derived from it). An absolute path; the file must be "
    "owned by the daemons' user (root), not readable by others and not writable by group or "
    "others; the passphrase must be strong (docs/operations.md, `fwctl secret generate`).",
    "cluster.run_dir": "Directory of the daemons' control sockets (absolute path).",
    "cluster.state_dir": "Persistent daemon state (maintenance flag; absolute path). On the "
    "appliance it lives on /config.",
    "sync.interface": "Interface of the dedicated state-sync link: a kernel interface name "
    "(1-15 bytes; no whitespace, control characters, '/', ':', '*', quotes or backslash). "
    "The same as `interfaces` with one name; give one of the two.",
    "sync.interfaces": "Redundant sync links (1-4 interface names, same rules as "
    "sync.interface), first preferred: the stream moves to the next link when the "
    "preferred one loses carrier or stops answering, and back when it returns, without a "
    "bulk transfer (docs/sync.md, \"Redundant sync links\"). Each member then gives "
    "`sync_addresses`, one per link.",
    "sync.port": "UDP port of state sync (1-65535).",
    "sync.filter": "Which conntrack entries state sync replicates (docs/sync.md, \"What it "
    "replicates\"), a table: `states` = \"sessions\" (default: an entry once conntrack "
    "marks it assured -- TCP established, UDP and others with traffic both ways -- until "
    "it ends; the shipped ruleset's ct event masks keep the kernel from reporting the "
    "rest) or \"all\" (every entry from its first packet); `protocols` = names (tcp, "
    "udp, sctp, dccp, udplite, gre, esp, ah, icmp, icmpv6) or numbers replicated, empty = "
    "all; `ignore` = address ranges (CIDR) whose flows (any address of either "
    "direction) are not replicated. A rule can exclude its flows with the template's "
    "`sync.nosync` (pf's no-sync).",
    "sync.digest_interval": "Seconds (1-3600) between anti-entropy rounds: each member checks "
    "the entries it originated against its kernel table and peers compare per-range digests "
    "and repair what differs, so a lost conntrack event is repaired within one interval "
    "(docs/sync.md: about 1 s of CPU per round at 100k entries).",
    "carp.preempt": "A member with a better (lower) skew takes the vips back.",
    "carp.link_demote": "Demotion added while a vip interface has no carrier.",
    "carp.maintenance_demote": "Demotion added by `fwctl maintenance on`.",
    "carp.sync_hold": "Seconds (0-3600) a starting carpd stays demoted until syncd reports "
    "its bulk resync done (ordered takeover, on by default). syncd lifts it as soon as every "
    "live peer has sent its table (about 3 s when no peer answers), so the bound only "
    "matters when syncd does not run; 0 = do not wait (carpd without syncd).",
    "carp.mode": "hardened (default: every advert field authenticated under a key of its own, "
    "per-sender replay window; does not interoperate with ucarp or OpenBSD) or compatible "
    "(CARP v2 as ucarp and OpenBSD speak it; its HMAC does not cover advbase, advskew or "
    "demote, so edited or replayed adverts are accepted: only for a cluster with a ucarp or "
    "OpenBSD member). The same on every member; "
    "see docs/carp.md, \"Trust models\".",
    "member.name": "Member name; each daemon is told which one it is by --node. Same "
    "characters as cluster.name. Its place among the names, sorted, is the member's id on "
    "the sync wire: the order of the [[member]] tables does not matter.",
    "member.sync_address": "This member's unicast address on the (first) sync link (IPv4 or "
    "IPv6); the config channel listens there. Required unless sync_addresses is given.",
    "member.sync_addresses": "This member's address on each sync link, in the order of "
    "sync.interfaces (one per link; the first is sync_address, which may then be left "
    "out). Needed with more than one sync link. All of one family, distinct in the cluster.",
    "member.advskew": "CARP advskew (0-254) of this member for every vip of the default "
    "group, and of a [[group]] that does not name the member; the lowest wins the election.",
    "vip.vhid": "CARP virtual host id (1-255), unique in the cluster.",
    "vip.interface": "Interface that carries the vip (same rules as sync.interface).",
    "vip.address": "Virtual address with prefix length, IPv4 or IPv6: a unicast host address; "
    "not multicast, unspecified, loopback, IPv4 link-local or broadcast, and no /0.",
    "vip.advbase": "Seconds between adverts (0-254); 0 with advskew > 0 gives "
    "sub-second intervals of advskew/256 s.",
    "vip.peers": "Unicast CARP (as keepalived's unicast_peer): every member's own address "
    "on this vip's segment (unicast addresses inside the vip's network, not its network or "
    "broadcast address), same family as the vip; adverts go to these (not to "
    "224.0.0.18 / ff02::12) where multicast is dropped or filtered, and adverts from any "
    "other source are dropped (`unlisted_source`). Empty = multicast.",
    "vip.mac": "own (default: the vip answers with the interface's MAC; a failover moves "
    "it by gratuitous ARP / unsolicited NA) or virtual (the vip lives on a macvlan named "
    "fwvmac<vhid> with MAC 00:00:5e:00:01:<vhid>, IPv6 00:00:5e:00:02:<vhid>, up on the "
    "master only: neighbours never need to change their cache, even a static ARP entry). "
    "Not with active-active; see docs/carp.md, \"Virtual MAC\".",
    "vip.garp_refresh": "Seconds (0-3600) between the master's repeated gratuitous ARPs "
    "(IPv4) or unsolicited neighbour advertisements (IPv6) for the vip, sent with its next "
    "advert once due; 0 = off (default: announced on taking over and once more two adverts "
    "later). With mac = virtual keep it below the switches' MAC ageing time (often 300 s).",
    "vip.ra_interval": "IPv6 first hop: on a link-local vip (e.g. fe80::1/64), seconds "
    "(1-1800) between the router advertisements its master sends from it, naming as "
    "prefixes (on-link; autonomous if /64) the global IPv6 vips on the same interface, router "
    "lifetime 3 intervals, so SLAAC hosts route through an address that fails over; "
    "0 = none (default). See docs/carp.md, \"IPv6 first hop\".",
    "vip.group": "Name of the [[group]] the vip fails over with; default: the implicit "
    "group \"default\" (the members' advskew, carp.preempt). With more than one group in "
    "use every vip needs mac = \"virtual\" (the ruleset tells a flow's group by the MAC it "
    "was sent to; docs/carp.md, \"Failover groups\").",
    "group.name": "Name of the failover group (same characters as member names, unique). "
    "Its vips move together; the groups elect independently, so each member can be master "
    "of its own group (a static active-active split, docs/examples/cluster-split.toml). "
    f"At most {MAX_GROUPS} groups in use.",
    "group.preempt": "A member with a better skew in this group takes its vips back; "
    "default: carp.preempt.",
    "group.preempt_delay": "Seconds (0-3600) a member must have been better than the "
    "group's master, without a break, before it preempts (it then claims at the master's "
    "next advert); 0 = at once. Takeovers from a master that fails, bows out or is "
    "demoted are never delayed.",
    "group.advskew": "Each member's advskew (0-254) in this group, an inline table "
    "{fw1 = 0, fw2 = 100}; a member not named keeps its member.advskew.",
    "firewall.template": "jinja2 template of the nftables ruleset; a relative path is "
    "taken from the directory of cluster.toml.",
    "firewall.helpers": "Conntrack helpers for protocols that open further connections "
    "(docs/firewall.md, \"Conntrack helpers\"): inline tables {protocol = \"ftp\"} or "
    "{protocol = \"sip\", port = 5060}; protocol ftp (TCP, default port 21) or sip (UDP, "
    "default port 5060), port 1-65535, each protocol and port once. New connections "
    "forwarded to that port get the helper, the connections it expects are accepted as "
    "related, and state sync replicates both. Empty = no helpers (default).",
    "balance.mode": "active-standby (default) or active-active.",
    "balance.buckets": "Hash buckets shared among members in active-active mode.",
    "metrics.listen": "host:port of carpd's Prometheus endpoint (host: an IPv4 address, an "
    "IPv6 address in brackets or a host name); syncd serves on the same "
    "host at port + 1 (so the port must be at most 65534); empty = off.",
    "metrics.textfile_dir": "Directory (absolute path) for node-exporter textfile output; empty = off.",
    "dhcp.interface": "LAN interface Kea serves DHCPv4 on; it must carry an IPv4 [[vip]], whose "
    "prefix is the subnet. One [[dhcp]] table per interface; none = no DHCP server (docs/dhcp.md).",
    "dhcp.pools": "Address ranges handed out, as \"first-last\" or a CIDR prefix, inside the "
    "subnet, not overlapping each other, not holding the vip, the network or the broadcast "
    f"address; at most {MAX_DHCP_ADDRESSES} addresses in all pools of the cluster (bounds the "
    "lease file on /config).",
    "dhcp.router": "Router option (3); empty = the interface's IPv4 vip.",
    "dhcp.dns": "DNS server option (6), IPv4 addresses; empty = the interface's IPv4 vip.",
    "dhcp.domain": "Domain name option (15; DHCPv6: domain search list, 24); empty = not sent.",
    "dhcp.lease_time": "Lease time in seconds (60-604800); clients renew at half of it. DHCPv6: "
    "the valid and preferred lifetime.",
    "dhcp.pools6": "DHCPv6 address ranges (IA_NA), as \"first-last\" or a prefix, inside the "
    "prefix of the interface's IPv6 [[vip]], not overlapping, not holding the vip; they count "
    f"towards the {MAX_DHCP_ADDRESSES} addresses of the cluster. Empty = no DHCPv6 here "
    "(clients use SLAAC); routers come from router advertisements, never DHCPv6.",
    "dhcp.dns6": "DHCPv6 DNS servers option (23), IPv6 addresses; empty = the interface's IPv6 vip.",
    "dhcp.reservations": "Fixed addresses: inline tables {mac = \"02:00:00:00:00:01\", ip = "
    "\"192.0.2.160\", hostname = \"printer\"}; each ip inside one of the pools, each mac and "
    "ip once.",
    "dhcp_ha.mode": "Kea High Availability mode: hot-standby (the CARP-preferred member, lowest "
    "advskew, answers; the next one takes over at partner-down) or load-balancing (both answer, "
    "each for its half of the clients). Members beyond two are Kea backups.",
    "dhcp_ha.port": "TCP port of kea-ctrl-agent on each member's sync address: Kea's lease "
    "updates and heartbeats between members, HTTP basic auth under a key derived from the "
    "cluster secret (1-65535, not the sync port).",
    "dhcp_ha.partner_down": "Seconds (2-60) without an answer from the partner over the sync "
    "link before a member serves the partner's clients too (Kea's max-response-delay; "
    "heartbeats every second).",
    "track.name": "Name of the track (same characters as member names, unique); its demotion "
    "source is `track:<name>` (docs/tracking.md).",
    "track.type": "interface (carrier and operstate of a link, with or without a vip), icmp "
    "(echo to `target`), tcp (a connect to `target`:`port`) or script (`command` exits 0).",
    "track.interface": "interface: the interface watched (it need not carry a vip). icmp, "
    "tcp: optional, the device the probe is bound to.",
    "track.reverse": "Invert the result: the track fails while the check succeeds (e.g. a "
    "standby uplink that is up only when the main one is down).",
    "track.target": "icmp, tcp: the IPv4 or IPv6 address probed (the upstream gateway, a "
    "host beyond it).",
    "track.port": "tcp: the port connected to (1-65535).",
    "track.command": "script: the argv to run, the program as an absolute path; exit status "
    "0 is success. No shell.",
    "track.user": "script: the user it runs as; `root` is allowed with a warning in the log.",
    "track.interval": "Seconds between checks (0.1-3600).",
    "track.timeout": "Seconds (0.05-300) a probe or script may take; longer is a failure "
    "(a script is killed).",
    "track.rise": "Successes in a row (1-100) that make a failed track good.",
    "track.fall": "Failures in a row (1-100) that make a good track fail.",
    "track.weight": "Demotion (0-255) the member gets while this track fails; the failing "
    "tracks' weights add up with the other demotion sources. 0 = watch only.",
    "track.flap_limit": "State changes (2-60) the track may make within a minute; a track "
    "that would change more stays failed until its last minute has fewer changes, so a "
    "flapping target cannot move the vips more often.",
    "hooks.directory": "Directory of role hooks: executables run, in lexical order, on "
    "every role change of the failover group (docs/tracking.md, \"Role hooks\"). A missing "
    "directory means no hooks.",
    "hooks.timeout": "Seconds (1-3600) a hook may run before it is killed.",
}


# --- string rules -------------------------------------------------------------------
# Strings reach nftables text, log formats, file paths and argv: each kind
# gets the narrowest rule that still takes every sane value.
IFNAMSIZ = 16  # the kernel's limit, NUL included
# Quotes and backslash are legal in a kernel name but would close a string in
# the rendered ruleset, and '*' is a wildcard there; ':' and whitespace and '/' the kernel refuses itself.
_IFNAME_BAD = set("/:\"'`\\*") | {chr(c) for c in range(33)} | {"\x7f"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # members, cluster: no %, quotes, spaces
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _show(value, limit: int = 60) -> str:
    """A value for an error line: repr (escapes newlines), cut to a length."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "...(" + str(len(r)) + " chars)"


def _key(key) -> str:
    """A TOML key as it may appear in an error line (keys are arbitrary strings)."""
    return key if isinstance(key, str) and _SAFE_KEY.match(key) else _show(key, 40)


def check_ifname(path: str, key: str, name: str) -> None:
    """An interface name by the kernel's rules (dev_valid_name), minus quotes."""
    if not name:
        raise ConfigError(path, key, "must not be empty")
    if len(name.encode()) >= IFNAMSIZ:
        raise ConfigError(path, key, f"{_show(name)} is longer than {IFNAMSIZ - 1} bytes")
    if name in (".", ".."):
        raise ConfigError(path, key, f"{name!r} is not an interface name")
    bad = sorted(set(name) & _IFNAME_BAD)
    if bad:
        raise ConfigError(path, key, f"{_show(name)} contains {_show(''.join(bad))} "
                          "(no whitespace, control characters, '/', ':', '*', quotes or backslash)")


def check_name(path: str, key: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(path, key, f"{_show(name)} is not a valid name (1-63 of A-Z a-z 0-9 . _ -, "
                          "starting with a letter or digit)")


def check_host(path: str, key: str, host: str) -> None:
    """An IP literal (IPv6 in brackets) or a DNS host name."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
            return
        except ValueError:
            raise ConfigError(path, key, f"{_show(host)} is not an IPv6 address") from None
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    if ":" in host:
        raise ConfigError(path, key, f"{_show(host)}: an IPv6 address needs brackets, e.g. [::1]:9780")
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(x) for x in labels) or labels[-1].isdigit():
        raise ConfigError(path, key, f"{_show(host)} is neither an IP address nor a host name")


def check_vip(path: str, key: str, addr) -> None:
    """A vip is a unicast host address on a real segment."""
    ip = addr.ip
    if addr.network.prefixlen == 0:
        raise ConfigError(path, key, f"{addr} has prefix length 0 (it would claim every address)")
    for what, bad in (("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified),
                      ("loopback", ip.is_loopback),
                      ("link-local", ip.version == 4 and ip.is_link_local)):
        if bad:
            raise ConfigError(path, key, f"{addr} is a {what} address, not usable as a vip")
    if ip.version == 4 and ip == addr.network.broadcast_address and addr.network.prefixlen < 31:
        raise ConfigError(path, key, f"{addr} is the broadcast address of its network")


MAX_PEERS = 16


def check_peers(path: str, key: str, peers: list, vip) -> tuple:
    """Unicast CARP destinations: distinct unicast addresses of members on
    the vip's segment (its network): adverts go to them and are taken only
    from them, so a broadcast or an off-segment address is a mistake."""
    if len(peers) > MAX_PEERS:
        raise ConfigError(path, key, f"{len(peers)} addresses, at most {MAX_PEERS}")
    out = []
    for i, p in enumerate(peers):
        if not isinstance(p, str):
            raise ConfigError(path, f"{key}[{i}]", f"must be a string, got {_show(p)}")
        try:
            ip = ipaddress.ip_address(p)
        except ValueError:
            raise ConfigError(path, f"{key}[{i}]", f"{_show(p)} is not an IP address") from None
        if ip.version != vip.version:
            raise ConfigError(path, f"{key}[{i}]", f"{ip} is IPv{ip.version}, the vip is IPv{vip.version}")
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip == vip.ip:
            raise ConfigError(path, f"{key}[{i}]", f"{ip} is not a member's own unicast address")
        if ip not in vip.network:
            raise ConfigError(path, f"{key}[{i}]", f"{ip} is not on the vip's segment {vip.network}")
        if ip.version == 4 and vip.network.prefixlen < 31 and ip in (
                vip.network.network_address, vip.network.broadcast_address):
            raise ConfigError(path, f"{key}[{i}]", f"{ip} is the network or broadcast address of "
                              f"{vip.network}, not a member's own")
        if str(ip) in out:
            raise ConfigError(path, f"{key}[{i}]", f"duplicate address {ip}")
        out.append(str(ip))
    return tuple(out)


def check_sync_filter(path: str, table: dict) -> SyncFilter:
    t = _check_table(path, "sync.filter", table, _FILTER_SCHEMA)
    if t["states"] not in SYNC_STATES:
        raise ConfigError(path, "sync.filter.states",
                          f"{_show(t['states'])} is not one of {', '.join(SYNC_STATES)}")
    protocols = []
    for i, p in enumerate(t["protocols"]):
        n = PROTOCOL_NUMBERS.get(p) if isinstance(p, str) else p
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 255:
            raise ConfigError(path, f"sync.filter.protocols[{i}]",
                              f"{_show(p)} is not a protocol name ({', '.join(PROTOCOL_NUMBERS)}) "
                              "or number 0-255")
        if n not in protocols:
            protocols.append(n)
    ignore = []
    for i, r in enumerate(t["ignore"]):
        try:
            net = ipaddress.ip_network(r, strict=False) if isinstance(r, str) else None
        except ValueError:
            net = None
        if net is None:
            raise ConfigError(path, f"sync.filter.ignore[{i}]", f"{_show(r)} is not an address range")
        ignore.append(str(net))
    return SyncFilter(t["states"], tuple(protocols), tuple(ignore))


def check_helpers(path: str, items: list) -> tuple:
    """[firewall] helpers: each an inline table {protocol, port}."""
    out: list[Helper] = []
    for i, h in enumerate(items):
        key = f"firewall.helpers[{i}]"
        if not isinstance(h, dict):
            raise ConfigError(path, key, f"{_show(h)} is not an inline table "
                              "{protocol = \"ftp\", port = 21}")
        for k in h:
            if k not in ("protocol", "port"):
                raise ConfigError(path, f"{key}.{_key(k)}", "unknown key (known: protocol, port)")
        proto = h.get("protocol")
        if proto not in HELPER_PROTOCOLS:
            raise ConfigError(path, f"{key}.protocol",
                              f"{_show(proto)} is not one of {', '.join(HELPER_PROTOCOLS)}")
        port = h.get("port", HELPER_PROTOCOLS[proto][1])
        if isinstance(port, bool) or not isinstance(port, int):
            raise ConfigError(path, f"{key}.port", f"{_show(port)} is not a port number")
        _in_range(path, f"{key}.port", port, 1, 65535)
        helper = Helper(proto, port)
        if helper in out:
            raise ConfigError(path, key, f"duplicate helper {proto} on port {port}")
        out.append(helper)
    return tuple(out)


def check_abs_path(path: str, key: str, value: str) -> None:
    if not posixpath.isabs(value):
        raise ConfigError(path, key, f"{_show(value)} must be an absolute path")


def check_track(path: str, key: str, t: dict, given: dict) -> Track:
    """One [[track]] table: its kind, the keys that kind uses, their ranges."""
    check_name(path, f"{key}.name", t["name"])
    kind = t["type"]
    if kind not in TRACK_TYPES:
        raise ConfigError(path, f"{key}.type", f"{_show(kind)} is not one of {', '.join(TRACK_TYPES)}")
    for k in given:
        if k not in TRACK_COMMON and k not in TRACK_TYPES[kind]:
            raise ConfigError(path, f"{key}.{_key(k)}", f"not used by a track of type {kind}")
    if t["interface"] or kind == "interface":
        check_ifname(path, f"{key}.interface", t["interface"])
    if kind in ("icmp", "tcp"):
        try:
            ip = ipaddress.ip_address(t["target"])
        except ValueError:
            raise ConfigError(path, f"{key}.target", f"{_show(t['target'])} is not an IP address") from None
        if ip.is_multicast or ip.is_unspecified:
            raise ConfigError(path, f"{key}.target", f"{ip} is not a unicast address")
    if kind == "tcp":
        _in_range(path, f"{key}.port", t["port"], 1, 65535)
    command = tuple(t["command"])
    if kind == "script":
        if not command:
            raise ConfigError(path, f"{key}.command", "must name the program to run")
        for j, arg in enumerate(command):
            if not isinstance(arg, str) or "\0" in arg:
                raise ConfigError(path, f"{key}.command[{j}]", f"must be a string, got {_show(arg)}")
        check_abs_path(path, f"{key}.command[0]", command[0])
        if not USER_RE.match(t["user"]):
            raise ConfigError(path, f"{key}.user", f"{_show(t['user'])} is not a user name")
    for k, lo, hi in (("interval", 0.1, 3600), ("timeout", 0.05, 300)):
        _in_range(path, f"{key}.{k}", t[k], lo, hi)
    for k, lo, hi in (("rise", 1, 100), ("fall", 1, 100), ("weight", 0, 255), ("flap_limit", 2, 60)):
        _in_range(path, f"{key}.{k}", t[k], lo, hi)
    return Track(t["name"], kind, t["interface"], t["reverse"], t["target"], t["port"], command,
                 t["user"], float(t["interval"]), float(t["timeout"]), t["rise"], t["fall"],
                 t["weight"], t["flap_limit"])


def _type_name(t) -> str:
    if t == (int, float):
        return "number"
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {"str": "string", "int": "integer", "bool": "boolean",
            "list": "list", "float": "number", "dict": "table"}.get(t.__name__, t.__name__)


def _check_table(path: str, prefix: str, table: Any, schema) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(path, prefix, "must be a table")
    for key in table:
        if key not in schema:
            raise ConfigError(path, f"{prefix}.{_key(key)}", f"unknown key (known: {', '.join(schema)})")
    out = {}
    for key, (typ, default) in schema.items():
        if key not in table:
            if default is REQUIRED:
                raise ConfigError(path, f"{prefix}.{key}", "missing required key")
            out[key] = default
            continue
        value = table[key]
        # bool is an int subclass in Python; do not accept true as a number.
        if (isinstance(value, bool) and typ is not bool) or not isinstance(value, typ):
            name = _type_name(typ)
            article = "an" if name[0] in "aeiou" else "a"
            raise ConfigError(path, f"{prefix}.{key}", f"must be {article} {name}, got {_show(value)}")
        if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ConfigError(path, f"{prefix}.{key}", f"{_show(value)} contains a control character")
        out[key] = value
    return out


def _in_range(path, key, value, lo, hi):
    if not lo <= value <= hi:
        raise ConfigError(path, key, f"{value} is outside {lo}-{hi}")


def parse(data: dict, path: str = "<config>", node: str | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(path, "", "must be a TOML document of tables")
    for top in data:
        if top not in _SCHEMA:
            raise ConfigError(path, _key(top), f"unknown table (known: {', '.join(_SCHEMA)})")
    for top in _REQUIRED_TABLES:
        if top not in data:
            raise ConfigError(path, top, "missing required table")
    tables = {}
    for top, schema in _SCHEMA.items():
        if top in _ARRAYS:
            items = data.get(top, [])
            if top in _OPTIONAL_ARRAYS and top not in data:
                tables[top] = []
                continue
            if not isinstance(items, list) or (not items and top not in _OPTIONAL_ARRAYS):
                raise ConfigError(path, top, f"must be one or more [[{top}]] tables")
            tables[top] = [_check_table(path, f"{top}[{i}]", t, schema)
                           for i, t in enumerate(items)]
        else:
            tables[top] = _check_table(path, top, data.get(top, {}), schema)

    c, s = tables["cluster"], tables["sync"]
    if not c["name"]:
        raise ConfigError(path, "cluster.name", "must not be empty")
    check_name(path, "cluster.name", c["name"])
    for k in ("secret_file", "run_dir", "state_dir"):
        check_abs_path(path, f"cluster.{k}", c[k])
    interfaces = _sync_interfaces(path, s)
    _in_range(path, "sync.port", s["port"], 1, 65535)
    _in_range(path, "sync.digest_interval", s["digest_interval"], 1, 3600)
    carp = tables["carp"]
    for k in ("link_demote", "maintenance_demote"):
        _in_range(path, f"carp.{k}", carp[k], 0, 255)
    _in_range(path, "carp.sync_hold", carp["sync_hold"], 0, 3600)
    if carp["mode"] not in CARP_MODES:
        raise ConfigError(path, "carp.mode", f"{_show(carp['mode'])} is not one of {', '.join(CARP_MODES)}")

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
        check_name(path, f"{key}.name", m["name"])
        seen_names[m["name"]] = i
        links = _link_addresses(path, key, m, len(interfaces))
        for addr, k in links:
            if str(addr) in seen_sync:
                raise ConfigError(path, k, f"duplicate address {addr} "
                                  f"(also member[{seen_sync[str(addr)]}])")
            seen_sync[str(addr)] = i
        _in_range(path, f"{key}.advskew", m["advskew"], 0, 254)
        addrs = tuple(a for a, _ in links)
        members.append(Member(m["name"], addrs[0], m["advskew"],
                              addrs if len(addrs) > 1 else ()))

    vips = []
    seen_vhid: dict[int, int] = {}
    for i, v in enumerate(tables["vip"]):
        key = f"vip[{i}]"
        _in_range(path, f"{key}.vhid", v["vhid"], 1, 255)
        if v["vhid"] in seen_vhid:
            raise ConfigError(path, f"{key}.vhid",
                              f"duplicate vhid {v['vhid']} (also vip[{seen_vhid[v['vhid']]}])")
        seen_vhid[v["vhid"]] = i
        check_ifname(path, f"{key}.interface", v["interface"])
        if "/" not in v["address"]:
            raise ConfigError(path, f"{key}.address", f"malformed address {_show(v['address'])}: "
                              "needs a prefix length, e.g. 192.0.2.1/24")
        try:
            addr = ipaddress.ip_interface(v["address"])
        except ValueError as e:
            raise ConfigError(path, f"{key}.address",
                              f"malformed address {_show(v['address'])}: {_show(str(e), 80)}") from None
        check_vip(path, f"{key}.address", addr)
        _in_range(path, f"{key}.advbase", v["advbase"], 0, 254)
        if v["mac"] not in virtualmac.MODES:
            raise ConfigError(path, f"{key}.mac",
                              f"{_show(v['mac'])} is not one of {', '.join(virtualmac.MODES)}")
        _in_range(path, f"{key}.garp_refresh", v["garp_refresh"], 0, 3600)
        _in_range(path, f"{key}.ra_interval", v["ra_interval"], 0, 1800)
        if v["ra_interval"] and not (addr.version == 6 and addr.ip.is_link_local):
            raise ConfigError(path, f"{key}.ra_interval", f"router adverts need a link-local IPv6 "
                              f"vip (e.g. fe80::1/64), not {addr}")
        vips.append(Vip(v["vhid"], v["interface"], addr, v["advbase"],
                        check_peers(path, f"{key}.peers", v["peers"], addr),
                        v["mac"], v["garp_refresh"], v["ra_interval"], v["group"]))
    groups = _groups(path, tables["group"], members, vips, carp["preempt"])

    b = tables["balance"]
    if b["mode"] not in BALANCE_MODES:
        raise ConfigError(path, "balance.mode", f"{_show(b['mode'])} is not one of {', '.join(BALANCE_MODES)}")
    if b["mode"] == "active-active":
        if tables["group"]:
            raise ConfigError(path, "group", "failover groups are for active-standby "
                              "(active-active balances every vip by buckets)")
        _in_range(path, "balance.buckets", b["buckets"], 1, 255 - len(vips))
        for i, v in enumerate(vips):
            if v.mac == virtualmac.VIRTUAL:
                raise ConfigError(path, f"vip[{i}].mac", "virtual is not for active-active "
                                  "(a balanced vip has its multicast MAC)")
    elif b["buckets"] < 0:
        raise ConfigError(path, "balance.buckets", "must not be negative")

    met = tables["metrics"]
    if met["listen"]:
        host, sep, port = met["listen"].rpartition(":")
        if not sep or not port.isdigit() or not host or len(port) > 5:
            raise ConfigError(path, "metrics.listen", f"{_show(met['listen'])} is not host:port")
        check_host(path, "metrics.listen", host)
        _in_range(path, "metrics.listen", int(port), 1, 65534)  # syncd uses port + 1
    if met["textfile_dir"]:
        check_abs_path(path, "metrics.textfile_dir", met["textfile_dir"])

    tracks = tuple(check_track(path, f"track[{i}]", t, data["track"][i])
                   for i, t in enumerate(tables["track"]))
    seen_tracks: dict[str, int] = {}
    for i, t in enumerate(tracks):
        if t.name in seen_tracks:
            raise ConfigError(path, f"track[{i}].name",
                              f"duplicate track name {t.name!r} (also track[{seen_tracks[t.name]}])")
        seen_tracks[t.name] = i
    hooks = tables["hooks"]
    check_abs_path(path, "hooks.directory", hooks["directory"])
    _in_range(path, "hooks.timeout", hooks["timeout"], 1, 3600)

    fw = tables["firewall"]
    fw["helpers"] = check_helpers(path, fw["helpers"])
    if fw["template"] and not posixpath.isabs(fw["template"]):
        # Relative to cluster.toml, so one file works wherever a member keeps it.
        fw["template"] = posixpath.join(posixpath.dirname(path), fw["template"])
    dhcp = tuple(_dhcp(path, i, t, vips, tables["dhcp"]) for i, t in enumerate(tables["dhcp"]))
    dhcp_ha = _dhcp_ha(path, tables["dhcp_ha"], s["port"])
    _check_dhcp_cluster(path, dhcp)
    cfg = Config(
        path=path, name=c["name"], secret_file=c["secret_file"], run_dir=c["run_dir"],
        state_dir=c["state_dir"], sync=Sync(interfaces, s["port"], s["digest_interval"],
                                        check_sync_filter(path, s["filter"])),
        carp=Carp(**carp), members=tuple(members), vips=tuple(vips),
        firewall=Firewall(**tables["firewall"]), balance=Balance(**b),
        metrics=Metrics(**met), tracks=tracks, hooks=Hooks(**hooks), raw=data, dhcp=dhcp,
        dhcp_ha=dhcp_ha, groups=groups,
    )
    if node is not None:
        if node not in seen_names:
            raise ConfigError(path, "--node", f"{_show(node)} is not a member "
                              f"(members: {', '.join(seen_names)})")
    return cfg


# --- [sync] links -----------------------------------------------------------------

MAX_SYNC_LINKS = 4


def _sync_interfaces(path: str, s: dict) -> tuple:
    """[sync] interface (one link) or interfaces (first preferred), not both."""
    if s["interface"] is not None and s["interfaces"]:
        raise ConfigError(path, "sync.interfaces", "give sync.interface or sync.interfaces, not both")
    if s["interface"] is None and not s["interfaces"]:
        raise ConfigError(path, "sync.interfaces", "missing: give sync.interfaces "
                          "(or sync.interface for one link)")
    if s["interface"] is not None:
        check_ifname(path, "sync.interface", s["interface"])
        return (s["interface"],)
    names = s["interfaces"]
    if len(names) > MAX_SYNC_LINKS:
        raise ConfigError(path, "sync.interfaces", f"{len(names)} links, at most {MAX_SYNC_LINKS}")
    for j, name in enumerate(names):
        if not isinstance(name, str):
            raise ConfigError(path, f"sync.interfaces[{j}]", f"must be a string, got {_show(name)}")
        check_ifname(path, f"sync.interfaces[{j}]", name)
        if name in names[:j]:
            raise ConfigError(path, f"sync.interfaces[{j}]", f"{_show(name)} is listed twice")
    return tuple(names)


def _sync_ip(path: str, key: str, text) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(text, str):
        raise ConfigError(path, key, f"must be a string, got {_show(text)}")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(path, key, f"malformed address {_show(text)}") from None
    if addr.is_multicast or addr.is_unspecified:
        raise ConfigError(path, key, f"{addr} is not a unicast host address")
    return addr


def _link_addresses(path: str, key: str, m: dict, links: int) -> list:
    """A member's address on each sync link, with the key that gave it:
    sync_address (one link) and/or sync_addresses (one per link, the first
    equal to sync_address when both are given), all of one family."""
    many = m["sync_addresses"]
    if m["sync_address"] is None and not many:
        raise ConfigError(path, f"{key}.sync_address", "missing required key")
    if not many:
        if links > 1:
            raise ConfigError(path, f"{key}.sync_addresses", f"missing: one address per sync "
                              f"link ({links}, sync.interfaces)")
        return [(_sync_ip(path, f"{key}.sync_address", m["sync_address"]), f"{key}.sync_address")]
    if len(many) != links:
        raise ConfigError(path, f"{key}.sync_addresses", f"{len(many)} addresses for {links} "
                          "sync links (sync.interfaces): one per link, same order")
    out = [(_sync_ip(path, f"{key}.sync_addresses[{j}]", a), f"{key}.sync_addresses[{j}]")
           for j, a in enumerate(many)]
    if m["sync_address"] is not None:
        first = _sync_ip(path, f"{key}.sync_address", m["sync_address"])
        if first != out[0][0]:
            raise ConfigError(path, f"{key}.sync_address", f"{first} is not sync_addresses[0] "
                              f"({out[0][0]}): the first link's address")
    for addr, k in out[1:]:
        if addr.version != out[0][0].version:
            raise ConfigError(path, k, f"{addr}: family differs from sync_addresses[0] ({out[0][0]})")
    return out


# --- [[group]] --------------------------------------------------------------------

def _groups(path: str, tables: list, members: list, vips: list, preempt: bool) -> tuple:
    """The failover groups the vips use: the implicit default one (each
    member's advskew, [carp] preempt) first if any vip is in it, then the
    [[group]] tables in their order."""
    own = tuple(sorted((m.name, m.advskew) for m in members))  # order-free, as the members are
    index = {m.name: j for j, m in enumerate(members)}
    out = {DEFAULT_GROUP: Group(DEFAULT_GROUP, preempt, 0.0, own)}
    seen: dict[str, int] = {}  # a [[group]] named "default" replaces the implicit one
    for i, t in enumerate(tables):
        key = f"group[{i}]"
        check_name(path, f"{key}.name", t["name"])
        if t["name"] in seen:
            raise ConfigError(path, f"{key}.name", f"duplicate group name {t['name']!r} "
                              f"(also group[{seen[t['name']]}])")
        seen[t["name"]] = i
        _in_range(path, f"{key}.preempt_delay", t["preempt_delay"], 0, 3600)
        skews = dict(own)
        for name, skew in t["advskew"].items():
            if name not in skews:
                raise ConfigError(path, f"{key}.advskew.{_key(name)}", "not a member "
                                  f"(members: {', '.join(skews)})")
            if isinstance(skew, bool) or not isinstance(skew, int):
                raise ConfigError(path, f"{key}.advskew.{_key(name)}",
                                  f"must be an integer, got {_show(skew)}")
            _in_range(path, f"{key}.advskew.{_key(name)}", skew, 0, 254)
            skews[name] = skew
        out[t["name"]] = Group(t["name"], preempt if t["preempt"] is None else t["preempt"],
                               float(t["preempt_delay"]), tuple(sorted(skews.items())))
    used = {v.group for v in vips}
    for i, v in enumerate(vips):
        if v.group not in out:
            raise ConfigError(path, f"vip[{i}].group", f"no [[group]] named {_show(v.group)} "
                              f"(groups: {', '.join(out)})")
        if len(used) > 1 and v.mac != virtualmac.VIRTUAL:
            raise ConfigError(path, f"vip[{i}].mac", "must be \"virtual\" with more than one "
                              "failover group: the ruleset tells a flow's group by the MAC it "
                              "was sent to")
        if v.advbase == 0:
            for name, skew in out[v.group].advskew:
                if skew == 0:
                    raise ConfigError(path, f"vip[{i}].advbase",
                                      f"advbase 0 with member[{index[name]}] ({name}) advskew 0 in group "
                                      f"{v.group} gives a zero advert interval; give that "
                                      "member advskew > 0")
    for i, t in enumerate(tables):
        if t["name"] not in used:
            raise ConfigError(path, f"group[{i}]", f"no vip is in group {t['name']!r}")
    if len(used) > MAX_GROUPS:
        raise ConfigError(path, "group", f"{len(used)} groups in use, at most {MAX_GROUPS} "
                          "(the conntrack mark bits that name them)")
    return tuple(g for name, g in out.items() if name in used)


# --- [[dhcp]] ---------------------------------------------------------------------

_IP = {4: (ipaddress.IPv4Address, ipaddress.IPv4Network), 6: (ipaddress.IPv6Address, ipaddress.IPv6Network)}


def _ip(path: str, key: str, value, version: int = 4):
    if not isinstance(value, str):
        raise ConfigError(path, key, f"must be a string, got {_show(value)}")
    try:
        return _IP[version][0](value)
    except ValueError:
        raise ConfigError(path, key, f"{_show(value)} is not an IPv{version} address") from None


def _pool(path: str, key: str, value, subnet, vip) -> tuple:
    """A pool as (first, last): inside the subnet (IPv4 or IPv6, as the
    vip's), never the vip, the network or the broadcast address (IPv6: the
    subnet-router anycast address); a client given one breaks the LAN."""
    v = subnet.version
    if not isinstance(value, str):
        raise ConfigError(path, key, f"must be a string, got {_show(value)}")
    if "/" in value:
        try:
            net = _IP[v][1](value.strip(), strict=True)
        except ValueError as e:
            raise ConfigError(path, key, f"{_show(value)} is not an IPv{v} prefix: {_show(str(e), 80)}") from None
        first, last = net.network_address, net.broadcast_address
    else:
        a, sep, b = value.partition("-")
        if not sep:
            raise ConfigError(path, key, f"{_show(value)} is neither \"first-last\" nor a prefix")
        first, last = _ip(path, key, a.strip(), v), _ip(path, key, b.strip(), v)
    if first > last:
        raise ConfigError(path, key, f"{_show(value)}: first address after the last")
    if first not in subnet or last not in subnet:
        raise ConfigError(path, key, f"{_show(value)} is outside {subnet}, the subnet of the vip")
    reserved = [("the vip", vip)]
    if v == 6:
        reserved.append(("the subnet-router anycast address", subnet.network_address))
    elif subnet.prefixlen < 31:
        reserved += [("the network address", subnet.network_address),
                     ("the broadcast address", subnet.broadcast_address)]
    for what, addr in reserved:
        if first <= addr <= last:
            raise ConfigError(path, key, f"{_show(value)} holds {what} {addr}")
    return first, last


def _pools(path: str, key: str, values, subnet, vip) -> tuple:
    """Every pool of one table's list, none overlapping another."""
    pools = [_pool(path, f"{key}[{n}]", p, subnet, vip) for n, p in enumerate(values)]
    for n, (first, last) in enumerate(pools):
        for m in range(n):
            if first <= pools[m][1] and pools[m][0] <= last:
                raise ConfigError(path, f"{key}[{n}]", f"overlaps {key}[{m}]")
    return tuple(pools)


def _dhcp6(path: str, key: str, t: dict, vips) -> dict:
    """The DHCPv6 part of a [[dhcp]] table: pools6 in the prefix of the
    interface's IPv6 vip, DNS defaulting to that vip; {} without pools6."""
    if not t["pools6"]:
        if t["dns6"]:
            raise ConfigError(path, f"{key}.dns6", "given without pools6 (no DHCPv6 on this interface)")
        return {}
    vip6 = [v.address for v in vips if v.interface == t["interface"] and v.family == 6]
    if not vip6:
        raise ConfigError(path, f"{key}.pools6", f"{_show(t['interface'])} carries no IPv6 [[vip]]: "
                          "DHCPv6 needs one (its prefix is the subnet, its address the DNS default)")
    subnet, vip = vip6[0].network, vip6[0].ip
    dns = tuple(_ip(path, f"{key}.dns6[{n}]", d, 6) for n, d in enumerate(t["dns6"])) or (vip,)
    return {"pools6": _pools(path, f"{key}.pools6", t["pools6"], subnet, vip),
            "subnet6": subnet, "vip6": vip, "dns6": dns}


def _reservation(path: str, key: str, value, pools) -> Reservation:
    if not isinstance(value, dict):
        raise ConfigError(path, key, "must be an inline table {mac = ..., ip = ...}")
    for k in value:
        if k not in RESERVATION_KEYS:
            raise ConfigError(path, f"{key}.{_key(k)}", f"unknown key (known: {', '.join(RESERVATION_KEYS)})")
    for k in ("mac", "ip"):
        if k not in value:
            raise ConfigError(path, f"{key}.{k}", "missing required key")
    mac = value["mac"]
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise ConfigError(path, f"{key}.mac", f"{_show(mac)} is not a MAC address (02:00:00:00:00:01)")
    ip = _ip(path, f"{key}.ip", value["ip"])
    if not any(first <= ip <= last for first, last in pools):
        raise ConfigError(path, f"{key}.ip", f"{ip} is outside the pools of this interface")
    hostname = value.get("hostname", "")
    if not isinstance(hostname, str):
        raise ConfigError(path, f"{key}.hostname", f"must be a string, got {_show(hostname)}")
    if hostname:
        check_host(path, f"{key}.hostname", hostname)
    return Reservation(mac.lower(), ip, hostname)


def _dhcp(path: str, i: int, t: dict, vips, all_tables) -> Dhcp:
    key = f"dhcp[{i}]"
    check_ifname(path, f"{key}.interface", t["interface"])
    for j in range(i):
        if all_tables[j]["interface"] == t["interface"]:
            raise ConfigError(path, f"{key}.interface", f"{t['interface']} already has dhcp[{j}]")
    vip4 = [v.address for v in vips if v.interface == t["interface"] and v.family == 4]
    if not vip4:
        raise ConfigError(path, f"{key}.interface", f"{_show(t['interface'])} carries no IPv4 "
                          "[[vip]]: DHCP needs one (its prefix is the subnet, its address the router)")
    subnet, vip = vip4[0].network, vip4[0].ip
    if not t["pools"]:
        raise ConfigError(path, f"{key}.pools", "must name at least one pool")
    pools = _pools(path, f"{key}.pools", t["pools"], subnet, vip)
    router = vip if not t["router"] else _ip(path, f"{key}.router", t["router"])
    if router not in subnet:
        raise ConfigError(path, f"{key}.router", f"{router} is outside {subnet}")
    dns = tuple(_ip(path, f"{key}.dns[{n}]", d) for n, d in enumerate(t["dns"])) or (vip,)
    if t["domain"]:
        check_host(path, f"{key}.domain", t["domain"])
    _in_range(path, f"{key}.lease_time", t["lease_time"], 60, 604800)
    reservations = tuple(_reservation(path, f"{key}.reservations[{n}]", r, pools)
                         for n, r in enumerate(t["reservations"]))
    for n, r in enumerate(reservations):
        for m in range(n):
            for what in ("mac", "ip"):
                if getattr(r, what) == getattr(reservations[m], what):
                    raise ConfigError(path, f"{key}.reservations[{n}].{what}",
                                      f"{getattr(r, what)} also in {key}.reservations[{m}]")
    return Dhcp(t["interface"], subnet, vip, pools, router, dns, t["domain"],
                t["lease_time"], reservations, **_dhcp6(path, key, t, vips))


def _dhcp_ha(path: str, t: dict, sync_port: int) -> DhcpHa:
    if t["mode"] not in DHCP_HA_MODES:
        raise ConfigError(path, "dhcp_ha.mode", f"{_show(t['mode'])} is not one of {', '.join(DHCP_HA_MODES)}")
    _in_range(path, "dhcp_ha.port", t["port"], 1, 65535)
    if t["port"] == sync_port:
        raise ConfigError(path, "dhcp_ha.port", f"{t['port']} is the sync port")
    _in_range(path, "dhcp_ha.partner_down", t["partner_down"], 2, 60)
    return DhcpHa(**t)


def _check_dhcp_cluster(path: str, dhcp) -> None:
    """Rules across [[dhcp]] tables: pools of two interfaces may share a
    subnet only if they do not overlap; the total bounds the lease file."""
    total = 0
    for i, d in enumerate(dhcp):
        for field in ("pools", "pools6"):
            for n, (first, last) in enumerate(getattr(d, field)):
                total += int(last) - int(first) + 1
                for j in range(i):
                    for m, (f2, l2) in enumerate(getattr(dhcp[j], field)):
                        if first <= l2 and f2 <= last:
                            raise ConfigError(path, f"dhcp[{i}].{field}[{n}]",
                                              f"overlaps dhcp[{j}].{field}[{m}]")
    if total > MAX_DHCP_ADDRESSES:
        raise ConfigError(path, "dhcp", f"{total} pool addresses in all, at most {MAX_DHCP_ADDRESSES} "
                          "(the lease file lives on the small /config partition)")

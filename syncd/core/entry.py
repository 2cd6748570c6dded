"""One conntrack entry as state sync carries it (pure data, no I/O).

Ports: for TCP/UDP/SCTP/DCCP/UDPLITE the real ports; for ICMP and ICMPv6 the
source "port" is the echo id and the destination "port" is type << 8 | code,
as in the kernel's tuple. Other protocols carry 0/0.
"""
from __future__ import annotations

from typing import NamedTuple

OP_UPSERT = 1
OP_DELETE = 2

ICMP, ICMPV6, TCP, UDP = 1, 58, 6, 17
CARP = 112

# include/uapi/linux/netfilter/nf_conntrack_common.h
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_DYING = 1 << 9
IPS_TEMPLATE = 1 << 11
IPS_UNTRACKED = 1 << 12

TCP_STATES = {1: "SYN_SENT", 2: "SYN_RECV", 3: "ESTABLISHED", 4: "FIN_WAIT",
              5: "CLOSE_WAIT", 6: "LAST_ACK", 7: "TIME_WAIT", 8: "CLOSE",
              9: "LISTEN"}
# Conntrack helpers by their code on the sync wire (wire.py, a record's
# helper field): append only, the codes are the protocol. An entry with a
# helper not listed here is replicated without it.
HELPERS = ("", "ftp", "sip", "tftp", "irc", "amanda", "sane")
HELPER_CODES = {name: code for code, name in enumerate(HELPERS)}

PROTO_NAMES = {ICMP: "icmp", TCP: "tcp", UDP: "udp", ICMPV6: "icmpv6",
               33: "dccp", 132: "sctp", 136: "udplite", CARP: "carp"}


class Entry(NamedTuple):
    family: int          # 4 or 6
    proto: int
    zone: int
    osrc: str            # original direction tuple
    odst: str
    osport: int
    odport: int
    rsrc: str            # reply direction tuple (differs from the inverse when NATed)
    rdst: str
    rsport: int
    rdport: int
    status: int = 0
    timeout: int = 0     # seconds left
    mark: int = 0
    tcp_state: int = 0   # 0: no TCP protoinfo
    wscale_orig: int = 0
    wscale_reply: int = 0
    flags_orig: int = 0
    flags_reply: int = 0
    helper: str = ""     # the conntrack helper attached ("ftp"); "": none

    @property
    def key(self) -> tuple:
        return (self.zone, self.family, self.proto, self.osrc, self.odst, self.osport, self.odport)

    @property
    def snat(self) -> bool:
        """The source was translated: replies go to another address/port."""
        return self.rdst != self.osrc or self.rdport != self.osport

    @property
    def dnat(self) -> bool:
        return self.rsrc != self.odst or self.rsport != self.odport

    def addresses(self) -> tuple[str, str, str, str]:
        return (self.osrc, self.odst, self.rsrc, self.rdst)

    def describe(self) -> dict:
        """JSON-friendly form for fwctl conntrack."""
        d = {"family": self.family, "proto": PROTO_NAMES.get(self.proto, str(self.proto)),
             "zone": self.zone, "mark": self.mark, "status": self.status,
             "timeout": self.timeout,
             "orig": {"src": self.osrc, "dst": self.odst, "sport": self.osport, "dport": self.odport},
             "reply": {"src": self.rsrc, "dst": self.rdst, "sport": self.rsport, "dport": self.rdport},
             "snat": self.snat, "dnat": self.dnat}
        if self.helper:
            d["helper"] = self.helper
        if self.tcp_state:
            d["tcp"] = {"state": TCP_STATES.get(self.tcp_state, str(self.tcp_state)),
                        "wscale_orig": self.wscale_orig, "wscale_reply": self.wscale_reply,
                        "flags_orig": self.flags_orig, "flags_reply": self.flags_reply}
        return d

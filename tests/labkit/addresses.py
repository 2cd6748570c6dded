"""Addresses of the lab, all from the documentation ranges (RFC 5737, RFC 3849).

    client ── [lan bridge] ── lan0 fw1..fwN wan0 ── [wan bridge] ── server
                                   sync0
                                     └──── [sync bridge]
"""
from __future__ import annotations

LAN4, WAN4, SYNC4 = "192.0.2", "198.51.100", "203.0.113"
LAN6, WAN6 = "2001:db8:1:", "2001:db8:2:"
LAN_VIP4, WAN_VIP4 = f"{LAN4}.1", f"{WAN4}.1"
LAN_VIP6, WAN_VIP6 = f"{LAN6}:1", f"{WAN6}:1"
CLIENT4, SERVER4 = f"{LAN4}.100", f"{WAN4}.100"
CLIENT6, SERVER6 = f"{LAN6}:100", f"{WAN6}:100"
SYNC_PORT = 3780
MEMBER_IFS = ("lan0", "wan0", "sync0")
SEGMENTS = ("lan", "wan", "sync")


# A lab with a second sync link (Lab(sync_links=2)) splits the sync range:
# sync0 203.0.113.0/25, sync1 203.0.113.128/25.
SYNC1_SEGMENT, SYNC1_IF = "sync1", "sync1"


def member_addr4(k: int, seg: str) -> str:
    """Own address of member k (1-based) on a segment."""
    return {"lan": f"{LAN4}.1{k}", "wan": f"{WAN4}.1{k}", "sync": f"{SYNC4}.{k}",
            SYNC1_SEGMENT: f"{SYNC4}.{128 + k}"}[seg]


def member_addr6(k: int, seg: str) -> str:
    return {"lan": f"{LAN6}:1{k}", "wan": f"{WAN6}:1{k}"}[seg]


def default_vips(ipv6: bool, advbase: int = 1) -> list[dict]:
    vips = [
        {"vhid": 1, "interface": "lan0", "address": f"{LAN_VIP4}/24", "advbase": advbase},
        {"vhid": 2, "interface": "wan0", "address": f"{WAN_VIP4}/24", "advbase": advbase},
    ]
    if ipv6:
        vips += [
            {"vhid": 3, "interface": "lan0", "address": f"{LAN_VIP6}/64", "advbase": advbase},
            {"vhid": 4, "interface": "wan0", "address": f"{WAN_VIP6}/64", "advbase": advbase},
        ]
    return vips

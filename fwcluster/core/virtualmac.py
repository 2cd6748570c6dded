"""A vip's virtual MAC and the macvlan that carries it (pure naming).

With `mac = "virtual"` a vip answers with the VRRP MAC of its vhid
(RFC 5798 7.3: 00:00:5e:00:01:VHID for IPv4, 00:00:5e:00:02:VHID for IPv6)
on a macvlan that only the master keeps up, so the neighbours' caches
never change at a failover. The macvlan's name is predictable because the
ruleset must match traffic that arrives on it (fwcluster.nft).
"""
from __future__ import annotations

VIRTUAL = "virtual"
OWN = "own"
MODES = (OWN, VIRTUAL)
PREFIX = "fwvmac"  # + vhid: at most 9 bytes, within IFNAMSIZ


def mac(vhid: int, family: int) -> str:
    if not 1 <= vhid <= 255:
        raise ValueError(f"vhid {vhid} is outside 1-255")
    return f"00:00:5e:00:{1 if family == 4 else 2:02x}:{vhid:02x}"


def ifname(vhid: int) -> str:
    return f"{PREFIX}{vhid}"

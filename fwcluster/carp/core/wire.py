"""CARP v2 advertisements on the wire (pure: bytes in, bytes out).

Layout of the 36-byte CARP header (IP protocol 112), as OpenBSD and ucarp
send it:

    0      version (high nibble, 2) | type (low nibble, 1 = advertisement)
    1      vhid
    2      advskew
    3      authlen (7: counter + HMAC in 32-bit words)
    4      demote (OpenBSD's group demotion counter; ucarp sends 0)
    5      advbase
    6-7    Internet checksum over the CARP header (no pseudo-header)
    8-15   64-bit counter, big-endian
    16-35  HMAC-SHA1

The HMAC is RFC 2104 HMAC-SHA1 whose key is the passphrase truncated to 20
bytes (OpenBSD keeps a 20-byte key; ucarp refuses passphrases of more than
19 bytes) and whose message is, byte for byte:

    0x02 (version) 0x01 (type) vhid  virtual addresses  counter (8 bytes, as sent)

The virtual addresses are the 4-byte IPv4 addresses in ascending order, then
the 16-byte IPv6 addresses. ucarp hashes its single --addr exactly so.

Received packets go through decode(), which returns an Advert or a Drop with
one of COMPATIBLE_DROP_REASONS; nothing here raises on hostile input.

What this HMAC does not cover (advbase, advskew, demote) anyone on the
segment can edit, and the only replay check is our own cookie: that is
CARP's design. [carp] mode = "hardened" uses hardened.py instead.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

PROTO = 112
VERSION = 2
TYPE_ADVERTISEMENT = 1
AUTHLEN = 7
TTL = 255
HEADER_LEN = 36
KEY_LEN = 20
GROUP4 = "224.0.0.18"
GROUP6 = "ff02::12"
# An advert with both set to 255 tells the backups "I am leaving: take over
# now" (OpenBSD's bow-out; their master-down check treats it as timed out).
BOW_OUT = 255

COMPATIBLE_DROP_REASONS = ("bad_ttl", "bad_checksum", "bad_hmac", "bad_version", "bad_type",
                           "unknown_vhid", "truncated", "replay", "bad_authlen")
# Every reason either mode gives: hardened.py adds a v2 advert at a hardened
# member ("unhardened") and an authentic counter older than the sender's
# replay window ("stale"), and an authentic advert from a sender that has
# not proved it is live to us ("unproven"); unicast CARP an advert from a
# source not in vip.peers ("unlisted_source", machine.hears_from). Counters
# and metrics carry all of them.
DROP_REASONS = COMPATIBLE_DROP_REASONS + ("unhardened", "stale", "unproven", "unlisted_source")

_HEADER = struct.Struct("!BBBBBBHQ20s")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum (one's complement of the one's complement sum)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def hmac_key(passphrase: bytes) -> bytes:
    """The HMAC key OpenBSD and ucarp derive from a passphrase."""
    return passphrase[:KEY_LEN]


def address_bytes(addresses: Iterable) -> bytes:
    """The vip addresses as the HMAC covers them."""
    addrs = [ipaddress.ip_address(str(a).split("/")[0]) for a in addresses]
    v4 = sorted(int(a) for a in addrs if a.version == 4)
    v6 = [a.packed for a in addrs if a.version == 6]
    return b"".join(struct.pack("!I", a) for a in v4) + b"".join(v6)


class Auth:
    """What it takes to sign and check one vhid's adverts.

    cookie is the 64-bit counter this member sends for the vhid. Like OpenBSD
    it is random and fixed for the life of the process, so an advert carrying
    it that comes back to us is our own, echoed or replayed: it is dropped.
    """

    def __init__(self, passphrase: bytes, vhid: int, addresses: Iterable, cookie: int):
        self.vhid = vhid
        self.cookie = cookie & 0xFFFFFFFFFFFFFFFF
        prefix = bytes((VERSION, TYPE_ADVERTISEMENT, vhid)) + address_bytes(addresses)
        self._inner = hmac.new(hmac_key(passphrase), prefix, hashlib.sha1)

    def digest(self, counter: bytes) -> bytes:
        h = self._inner.copy()
        h.update(counter)
        return h.digest()


@dataclass(frozen=True)
class Advert:
    vhid: int
    advbase: int
    advskew: int
    demote: int
    counter: int


@dataclass(frozen=True)
class Drop:
    reason: str
    vhid: int | None = None  # when the packet was long enough to name one


def encode(auth: Auth, advbase: int, advskew: int, demote: int = 0,
           counter: int | None = None) -> bytes:
    """The 36-byte CARP payload (the IP layer adds TTL 255 and the group)."""
    counter = auth.cookie if counter is None else counter & 0xFFFFFFFFFFFFFFFF
    ctr = struct.pack("!Q", counter)
    md = auth.digest(ctr)
    head = _HEADER.pack((VERSION << 4) | TYPE_ADVERTISEMENT, auth.vhid, advskew, AUTHLEN,
                        min(demote, 255), advbase, 0, counter, md)
    csum = checksum(head)
    return head[:6] + struct.pack("!H", csum) + head[8:]


def decode(payload: bytes, ttl: int, auths: Mapping[int, Auth]) -> Advert | Drop:
    """Check one received CARP payload in the order OpenBSD does.

    ttl is the IPv4 TTL or the IPv6 hop limit the packet arrived with;
    auths maps each vhid we run on this interface/family to its Auth.
    """
    vhid = payload[1] if len(payload) >= 2 else None
    if ttl != TTL:
        return Drop("bad_ttl", vhid)
    if len(payload) < HEADER_LEN:
        return Drop("truncated", vhid)
    if checksum(payload) != 0:
        return Drop("bad_checksum", vhid)
    vt, vhid, advskew, authlen, demote, advbase, _, counter, md = _HEADER.unpack_from(payload)
    if vt >> 4 != VERSION:
        return Drop("bad_version", vhid)
    if vt & 0x0F != TYPE_ADVERTISEMENT:
        return Drop("bad_type", vhid)
    auth = auths.get(vhid)
    if auth is None:
        return Drop("unknown_vhid", vhid)
    if authlen != AUTHLEN:
        return Drop("bad_authlen", vhid)
    if not hmac.compare_digest(md, auth.digest(payload[8:16])):
        return Drop("bad_hmac", vhid)
    if counter == auth.cookie:
        return Drop("replay", vhid)
    return Advert(vhid=vhid, advbase=advbase, advskew=advskew, demote=demote, counter=counter)

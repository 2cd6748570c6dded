"""Hardened CARP adverts (pure): every field authenticated, no counter reused.

The packet is the 36-byte CARP v2 header of wire.py with another version and
another MAC, so it costs nothing more on the wire and a compatible-mode
member, ucarp or OpenBSD drops it cleanly as `bad_version` (its checksum is
valid; no CARP or VRRP version is 4):

    0      version 4 (high nibble) | type 1 = advertisement (low nibble)
    1      vhid
    2      advskew
    3      authlen 7 (counter + MAC in 32-bit words, as in v2)
    4      demote
    5      advbase
    6-7    Internet checksum over the 36 bytes
    8-15   counter: boot id (high 32 bits) | sequence in that boot (low 32)
    16-35  HMAC-SHA256, first 160 bits

MAC key: HKDF-SHA256 of the cluster secret with a label of its own (never a
key sync or the config channel use), bound to the cluster name. MAC message:
bytes 0-5, the counter, the sender's IP source address (length-prefixed: the
replay window is keyed by it, so it must be authentic) and the vip addresses
(as in v2). The checksum is left out: it is a function of the rest.

Receivers keep, per sender (source address, vhid), the highest counter
accepted and which of the WINDOW counters below it were seen; an authentic
advert is accepted once and only if it is newer than the window's bottom.
A sender's boot id grows strictly from one start to the next (the shell
allocates it, see fwcluster/carp/bootid.py), so a restarted member's adverts
are newer than anything of its previous life: accepted, while a recording of
that life is `stale`.

A receiver has a window only for a sender that proved it is live now, so a
receiver that starts empty (restarted, /config wiped) cannot be held by a
recording (issue 21 #2). An authentic advert from a sender without a window
is dropped as `unproven`, and the receiver sends the sender (unicast) a
solicitation: the same layout with type 2, a random 64-bit nonce in the
counter field, MACed like an advert (its source bound). A master answers
with a proof: its advert with authlen 9 and the nonce echoed in 8 more
bytes (44 in all), the MAC over the echo too. A proof carrying the nonce
we are waiting for opens the sender's window at its counter, every lower
one counted as seen: anything recorded before is `stale`. At most one
solicitation per sender and vhid goes out, and one proof is answered per
asker and vhid, per CHALLENGE_GAP; a replayed solicitation gets a proof no
one waits for.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from typing import Callable, Iterable, Mapping, NamedTuple

from fwcluster.carp.core import wire
from fwcluster.carp.core.wire import Advert, Drop
from fwcluster.core.hkdf import hkdf

VERSION = 4
MAC_LEN = 20
SEQ_MAX = 0xFFFFFFFF
BOOT_MAX = 0xFFFFFFFF
WINDOW = 64          # counters below the highest one that may still arrive late
MAX_SENDERS = 1024   # windows kept; only key holders can create one
TYPE_SOLICIT = 2     # "prove you are live": a receiver without a window for the sender
PROOF_AUTHLEN = 9    # counter + MAC + the echoed nonce, in 32-bit words
PROOF_LEN = wire.HEADER_LEN + 8
CHALLENGE_GAP = 0.1  # s: solicitations out per (sender, vhid), proofs per (asker, vhid)
_HEAD = struct.Struct("!BBBBBBHQ")


class Solicit(NamedTuple):
    """An authentic solicitation: the asker wants a proof for vhid."""
    vhid: int
    nonce: int


def key(secret: bytes, cluster: str) -> bytes:
    """The MAC key of hardened adverts in this cluster."""
    return hkdf(secret, b"fwcluster-carpd", b"carp-hardened-hmac-v1 " + cluster.encode())


class Auth:
    """One vhid's key and vip addresses. Holds no counter: the member's
    Counter is shared, so a re-keyed Auth never restarts a sequence."""

    def __init__(self, mac_key: bytes, vhid: int, addresses: Iterable, cookie: int = 0):
        self.vhid = vhid
        self.cookie = cookie  # unused here; kept so both modes' Auths look alike
        self._key = mac_key
        self._addresses = wire.address_bytes(addresses)

    def mac(self, head: bytes, counter: bytes, src: bytes, echo: bytes = b"") -> bytes:
        """MAC over header bytes 0-5, counter, source (packed), vips, and a
        proof's echoed nonce."""
        msg = head[:6] + counter + bytes((len(src),)) + src + self._addresses + echo
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:MAC_LEN]


class Counter:
    """This member's advert counter: strictly increasing for as long as boot
    ids are (the shell persists them). renew() gives a new, higher boot id
    when a boot's 2**32 sequence numbers are used up."""

    def __init__(self, boot: int, renew: Callable[[], int]):
        if not 0 < boot <= BOOT_MAX:
            raise ValueError(f"boot id {boot} outside 1-{BOOT_MAX}")
        self.boot, self.seq, self._renew = boot, 0, renew

    def next(self) -> int:
        if self.seq >= SEQ_MAX:
            self.boot, self.seq = min(max(self._renew(), self.boot + 1), BOOT_MAX), 0
        self.seq += 1
        return self.boot << 32 | self.seq


def encode(auth: Auth, counter: int, source: str, advbase: int, advskew: int,
           demote: int = 0, echo: int | None = None) -> bytes:
    """The 36-byte hardened advert sent from source; with echo, the 44-byte
    proof answering the solicitation that carried that nonce."""
    return _packet(auth, wire.TYPE_ADVERTISEMENT, counter, source, advbase, advskew, demote, echo)


def encode_solicit(auth: Auth, nonce: int, source: str) -> bytes:
    """The 36-byte solicitation sent from source (advbase, advskew, demote 0)."""
    return _packet(auth, TYPE_SOLICIT, nonce, source, 0, 0, 0, None)


def _packet(auth: Auth, ptype: int, counter: int, source: str, advbase: int, advskew: int,
            demote: int, echo: int | None) -> bytes:
    ctr = struct.pack("!Q", counter)
    tail = b"" if echo is None else struct.pack("!Q", echo)
    head = _HEAD.pack((VERSION << 4) | ptype, auth.vhid, advskew,
                      wire.AUTHLEN if echo is None else PROOF_AUTHLEN,
                      min(demote, 255), advbase, 0, counter)
    src = _packed(source)
    if src is None:
        raise ValueError(f"advert source {source!r} is not an IP address")
    pkt = head + auth.mac(head, ctr, src, tail) + tail
    return pkt[:6] + struct.pack("!H", wire.checksum(pkt)) + pkt[8:]


class ReplayWindows:
    """Per sender (source, vhid): the highest counter accepted and a bitmap
    of the WINDOW counters below it. Only authentic adverts reach admit().
    At most `senders` windows (least recently used dropped first)."""

    def __init__(self, size: int = WINDOW, senders: int = MAX_SENDERS):
        self.size, self.senders = size, senders
        self._w: dict[tuple[bytes, int], tuple[int, int]] = {}  # -> (top, bits)

    def admit(self, sender: tuple[bytes, int], counter: int) -> str | None:
        """None if counter is new (and now recorded); else the drop reason
        (`unproven`: the sender has no window yet)."""
        if sender not in self._w:
            return "unproven"
        top, bits = self._w.pop(sender)
        try:
            if counter > top:
                shift = counter - top
                bits = ((bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
                top = counter
                return None
            offset = top - counter
            if offset >= self.size:
                return "stale"
            if bits >> offset & 1:
                return "replay"
            bits |= 1 << offset
            return None
        finally:
            self._w[sender] = (top, bits)  # re-inserted last: most recently used
            if len(self._w) > self.senders:
                del self._w[next(iter(self._w))]

    def prove(self, sender: tuple[bytes, int], counter: int) -> None:
        """The sender proved it is live with counter: its window starts there,
        every lower counter counted as seen."""
        self._w.pop(sender, None)
        self._w[sender] = (counter, (1 << self.size) - 1)
        if len(self._w) > self.senders:
            del self._w[next(iter(self._w))]

    def top(self, sender: tuple[bytes, int]) -> int:
        return self._w.get(sender, (0, 0))[0]


class Challenges:
    """The nonces we wait for (one per sender and vhid) and when we last
    asked and answered, each bounded like the windows."""

    def __init__(self, senders: int = MAX_SENDERS):
        self.senders = senders
        self.waiting: dict[tuple[bytes, int], tuple[int, float]] = {}  # -> (nonce, asked at)
        self.answered: dict[tuple[bytes, int], float] = {}              # asker -> answered at

    def ask(self, sender: tuple[bytes, int], nonce: int, now: float) -> bool:
        """Solicit sender with nonce now? Not within CHALLENGE_GAP of the last."""
        last = self.waiting.get(sender)
        if last is not None and now - last[1] < CHALLENGE_GAP:
            return False
        _put(self.waiting, sender, (nonce, now), self.senders)
        return True

    def take(self, sender: tuple[bytes, int], echo: int) -> bool:
        """Is echo the nonce we wait for from sender? (Then we wait no more.)"""
        last = self.waiting.get(sender)
        if last is None or last[0] != echo:
            return False
        del self.waiting[sender]
        return True

    def answer(self, asker: tuple[bytes, int], now: float) -> bool:
        """Answer asker's solicitation now? Not within CHALLENGE_GAP of the last."""
        last = self.answered.get(asker)
        if last is not None and now - last < CHALLENGE_GAP:
            return False
        _put(self.answered, asker, now, self.senders)
        return True


def _put(d: dict, k, v, bound: int) -> None:
    d.pop(k, None)
    d[k] = v
    if len(d) > bound:
        del d[next(iter(d))]


def decode(payload: bytes, ttl: int, source: str, auths: Mapping[int, Auth],
           windows: ReplayWindows, own: str | None = None,
           challenges: Challenges | None = None) -> Advert | Drop | Solicit:
    """Check one received packet: form, then MAC, then freshness.

    source is the packet's IP source address, own our address on that
    interface and family (an authentic advert from it is ours, replayed).
    Only an authentic packet may move a replay window; only a proof
    echoing the nonce `challenges` waits for may open one.
    """
    vhid = payload[1] if len(payload) >= 2 else None
    if ttl != wire.TTL:
        return Drop("bad_ttl", vhid)
    if len(payload) < wire.HEADER_LEN:
        return Drop("truncated", vhid)
    if wire.checksum(payload) != 0:
        return Drop("bad_checksum", vhid)
    vt, vhid, advskew, authlen, demote, advbase, _, counter = _HEAD.unpack_from(payload)
    if vt >> 4 == wire.VERSION:
        return Drop("unhardened", vhid)  # a compatible-mode member, ucarp, or a recording
    if vt >> 4 != VERSION:
        return Drop("bad_version", vhid)
    ptype = vt & 0x0F
    if ptype not in (wire.TYPE_ADVERTISEMENT, TYPE_SOLICIT):
        return Drop("bad_type", vhid)
    auth = auths.get(vhid)
    if auth is None:
        return Drop("unknown_vhid", vhid)
    proof = ptype == wire.TYPE_ADVERTISEMENT and authlen == PROOF_AUTHLEN
    if len(payload) != (PROOF_LEN if proof else wire.HEADER_LEN) or \
            not (proof or authlen == wire.AUTHLEN):
        return Drop("bad_authlen", vhid)  # every byte is covered: no trailing data
    echo = payload[wire.HEADER_LEN:]
    src = _packed(source)  # nothing authentic comes from a source that is no address
    if src is None or not hmac.compare_digest(auth.mac(payload, payload[8:16], src, echo),
                                              payload[16:36]):
        return Drop("bad_hmac", vhid)
    if own is not None and src == _packed(own):
        return Drop("replay", vhid)  # our own packet: it left us, so it was sent back
    if ptype == TYPE_SOLICIT:
        return Solicit(vhid, counter)
    sender = (src, vhid)
    if proof and challenges is not None and challenges.take(sender, int.from_bytes(echo, "big")):
        windows.prove(sender, counter)
    else:
        stale = windows.admit(sender, counter)
        if stale:
            return Drop(stale, vhid)
    return Advert(vhid=vhid, advbase=advbase, advskew=advskew, demote=demote, counter=counter)


def _packed(address: str) -> bytes | None:
    """The address as the MAC and the windows see it (one spelling per address)."""
    try:
        return ipaddress.ip_address(address).packed
    except ValueError:
        return None

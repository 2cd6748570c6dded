"""Hardened CARP adverts (pure): every field authenticated, no counter reused.

The packet is the 36-byte CARP v2 header of wire.py with another version and
another MAC, so it costs nothing more on the wire and a compatible-mode
member, ucarp or OpenBSD drops it cleanly as `bad_version` (its checksum is
valid; no CARP or VRRP version is 4 or 5):

    0      version 5 (4: the previous release's) | type 1 = advertisement
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

Versions (issue 23): that is version 5. Version 4, the previous release's,
has no solicitation and no proof: an authentic advert from a sender without
a window opens one at its counter. A member speaks both (a capped build only
4, exactly as that release did) and decodes each by its own rule. Adverts
are multicast, so the version is chosen per vhid, not per peer: a member
sends at the newest version every member it heard on the vhid speaks
(send_version), from what each sender's last authentic packet carried
(Heard; on a vhid nobody was heard on yet, every vhid's senders count). A v4 advert heard pulls the vhid down to 4 at once; since a
backup listens for master-down before it sends, a new member joining an
old master falls back before its first advert. A member that speaks 5 and
hears a v4 advert sends that sender a v5 solicitation at most every
PROBE_GAP (a probe): a previous-release member drops it as `bad_version`,
an upgraded one that fell back learns the prober speaks 5, and once every
member it heard speaks 5 the vhid climbs back. A sender heard at 4 is
never forgotten by time: a backup of the previous release is silent, and
forgetting it would make the master send what it cannot read.

A backup of the previous release that joins (a rollback, a member booted
from its old slot) is silent until it claims: it cannot read version 5,
so it hears no master, and the master hears nothing at 4 before that
claim. syncd hears it first (its sync ALIVE tells the release's
protocols, authenticated) and tells carpd (`peer-speaks`): what a member
was told counts on every vhid (Heard.tell), by member name, until it is
told otherwise, and a master sends its adverts at once when that changes
its version. When syncd hears the backup before the backup's master-down
runs out, the backup joins without a claim; a slower start still claims
once and yields (docs/upgrade.md).
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

VERSION = 5          # adverts with liveness proof (solicitation, proof)
OLDEST = 4           # the previous release's: no solicitation or proof
SPEAKS = (OLDEST, VERSION)
PROBE_GAP = 10.0     # s: v5 solicitations out per sender heard at an older version
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


def send_version(speaks: tuple[int, int], heard: Iterable[int]) -> int:
    """The version to send a vhid's adverts at: the newest every member
    heard on it speaks (what each one's last packet carried), within ours."""
    return max(speaks[0], min([speaks[1], *heard]))


class Heard:
    """Per vhid, the version of each sender's last authentic packet
    (bounded like the windows; only key holders can add a sender)."""

    def __init__(self, senders: int = MAX_SENDERS):
        self.senders = senders
        self._v: dict[tuple[bytes, int], int] = {}  # (source, vhid) -> version
        self._probed: dict[tuple[bytes, int], float] = {}
        self._told: dict[str, int] = {}   # member name -> newest version (syncd's word)

    def note(self, sender: tuple[bytes, int], version: int) -> None:
        _put(self._v, sender, version, self.senders)

    def versions(self, vhid: int) -> dict[bytes, int]:
        return {src: v for (src, vh), v in self._v.items() if vh == vhid}

    def tell(self, member: str, newest: int | None) -> bool:
        """A member speaks hardened CARP up to `newest` (None: forget it),
        as syncd heard from it; True when that changed what we knew."""
        if self._told.get(member) == newest:
            return False
        if newest is None:
            del self._told[member]
        elif member in self._told or len(self._told) < self.senders:
            self._told[member] = newest
        return True

    def told(self) -> dict[str, int]:
        return dict(self._told)

    def keep_told(self, members) -> None:
        """Forget what was told of members no longer in the cluster (a
        reload): a removed member's old version must not hold the vhids."""
        for name in [n for n in self._told if n not in members]:
            del self._told[name]

    def speaking(self, vhid: int) -> list[int]:
        """The versions heard on vhid, and what members were told to speak
        (they count on every vhid: a silent backup is heard on none); on a
        vhid nobody was heard on yet, those heard on any (a failover
        group's vip is claimed on its sibling's advert, before the first
        one of its own arrives)."""
        return (list(self.versions(vhid).values()) or list(self._v.values())) + list(self._told.values())

    def probe(self, sender: tuple[bytes, int], speaks: tuple[int, int], now: float) -> bool:
        """Tell sender (heard at an older version than our newest) that we
        speak newer? Not within PROBE_GAP of the last time."""
        if self._v.get(sender, speaks[1]) >= speaks[1]:
            return False
        last = self._probed.get(sender)
        if last is not None and now - last < PROBE_GAP:
            return False
        _put(self._probed, sender, now, self.senders)
        return True


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
           demote: int = 0, echo: int | None = None, version: int = VERSION) -> bytes:
    """The 36-byte hardened advert sent from source; with echo, the 44-byte
    proof answering the solicitation that carried that nonce (version 5 only)."""
    if echo is not None and version < 5:
        raise ValueError("version 4 has no proof")
    return _packet(auth, wire.TYPE_ADVERTISEMENT, counter, source, advbase, advskew, demote, echo,
                   version)


def encode_solicit(auth: Auth, nonce: int, source: str) -> bytes:
    """The 36-byte solicitation sent from source (advbase, advskew, demote 0)."""
    return _packet(auth, TYPE_SOLICIT, nonce, source, 0, 0, 0, None, VERSION)


def _packet(auth: Auth, ptype: int, counter: int, source: str, advbase: int, advskew: int,
            demote: int, echo: int | None, version: int) -> bytes:
    ctr = struct.pack("!Q", counter)
    tail = b"" if echo is None else struct.pack("!Q", echo)
    head = _HEAD.pack((version << 4) | ptype, auth.vhid, advskew,
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

    def admit(self, sender: tuple[bytes, int], counter: int, opens: bool = False) -> str | None:
        """None if counter is new (and now recorded); else the drop reason
        (`unproven`: the sender has no window yet, unless the advert `opens`
        one, as version 4's do)."""
        if sender not in self._w and not opens:
            return "unproven"
        top, bits = self._w.pop(sender, (0, 0))
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
           challenges: Challenges | None = None, speaks: tuple[int, int] = SPEAKS,
           heard: Heard | None = None) -> Advert | Drop | Solicit:
    """Check one received packet: form, then MAC, then freshness.

    source is the packet's IP source address, own our address on that
    interface and family (an authentic advert from it is ours, replayed).
    Only an authentic packet may move a replay window; in version 5 only a
    proof echoing the nonce `challenges` waits for may open one, in 4 any
    authentic advert. speaks: the versions we accept; `heard` is told the
    version of every authentic packet of another sender.
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
    version = vt >> 4
    if not speaks[0] <= version <= speaks[1] or version < OLDEST:
        return Drop("bad_version", vhid)
    ptype = vt & 0x0F
    if ptype not in ((wire.TYPE_ADVERTISEMENT, TYPE_SOLICIT) if version >= 5
                     else (wire.TYPE_ADVERTISEMENT,)):
        return Drop("bad_type", vhid)
    auth = auths.get(vhid)
    if auth is None:
        return Drop("unknown_vhid", vhid)
    proof = version >= 5 and ptype == wire.TYPE_ADVERTISEMENT and authlen == PROOF_AUTHLEN
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
    sender = (src, vhid)
    if heard is not None:
        heard.note(sender, version)  # authentic and live or not, it speaks this version
    if ptype == TYPE_SOLICIT:
        return Solicit(vhid, counter)
    if proof and challenges is not None and challenges.take(sender, int.from_bytes(echo, "big")):
        windows.prove(sender, counter)
    else:
        stale = windows.admit(sender, counter, opens=version < 5)
        if stale:
            return Drop(stale, vhid)
    return Advert(vhid=vhid, advbase=advbase, advskew=advskew, demote=demote, counter=counter)


def _packed(address: str) -> bytes | None:
    """The address as the MAC and the windows see it (one spelling per address)."""
    try:
        return ipaddress.ip_address(address).packed
    except ValueError:
        return None

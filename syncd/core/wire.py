"""State-sync message format (pure: bytes in, bytes out; no sockets).

Every datagram (versions 2 and 3, big endian):

  0  magic "FS"        2    8  session u64  the receiver's session nonce, as the
  2  version u8 (2|3)  1                    sender learned it (0: none yet)
  3  type u8           1   16  boot  u64    the sender's random per-run id
  4  src u8            1   24  seq   u64    per peer, never reset in a run
  5  dst u8            1   32  gen   u64    stream generation sender->receiver
  6  flags u16         2   40  dseq  u64    data sequence (DATA/DONE), cumulative
     (1: bulk transfer)                     ack (ACK), first missing (NACK),
                                            last sent (ALIVE)
                           48  arg   u64    entry count (DATA), last missing
                                            (NACK), table size (ALIVE), the
                                            requester's new session (REQ)
 56  body: arg entry records (DATA), the sender's release (ALIVE, version 3)
 ..  HMAC-SHA256(key, everything before it), 32 bytes

Version 3 is version 2 plus what makes versions visible: its ALIVE carries
the sender's release and the protocol versions it speaks (About, below),
under the datagram's MAC like everything else. One encoder and one decoder
serve both; which version goes to which peer is protocol.py's rule.

Every counter is 64 bits: at a million messages a second one lasts 584,000
years, so none wraps in a process lifetime (version 1 had u32 ones that did).

src/dst are member indexes (config order), so a message captured on its way to
one member cannot be replayed to another. Entry record (big endian):

  op u8, family u8 (4|6), proto u8, tcp_state u8, zone u16, helper u16,
  status u32, timeout u32, mark u32,
  wscale_orig u8, wscale_reply u8, flags_orig u8, flags_reply u8,
  orig src, orig dst (4 or 16 bytes), orig sport u16, orig dport u16,
  reply src, reply dst, reply sport u16, reply dport u16

A DATA body of version 3 may also hold expectation records (expect.py),
told apart by their op (3, 4).

helper is the conntrack helper of the entry by its code (entry.HELPERS, 0:
none). It was a pad field that every release before it sends as 0 and
ignores when reading, so it goes to peers of either version unchanged.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NamedTuple

from syncd.core import digest, expect
from syncd.core.addrcache import ntop, pton
from syncd.core.entry import HELPER_CODES, HELPERS, OP_DELETE, OP_UPSERT, Entry

MAGIC = b"FS"
OLDEST, NEWEST = 2, 3     # the layouts this module encodes and decodes

DATA, ACK, NACK, ALIVE, RESYNC_REQ, RESYNC_DONE = 1, 2, 3, 4, 5, 6
# Anti-entropy (digest.py): DIGEST (reliable; arg = round, body = the
# sender's own-entry digest per range), REPAIR_REQ (arg = round, body = a
# bitmap of differing ranges), REPAIR_DONE (reliable; body = the bitmap:
# the ranges whose whole contents were just sent).
DIGEST, REPAIR_REQ, REPAIR_DONE = 7, 8, 9
FLAG_BULK = 0x0001
FLAG_OWN = 0x0002    # DATA: the sender's own entries, contents of a bulk or repair
# ALIVE sent at an older version than the sender's newest: bits 8-15 of
# flags carry that newest (0: not said), so a pair whose first newer ALIVEs
# were lost still finds it. Older releases never read an ALIVE's flags.
NEWEST_SHIFT = 8
TYPE_NAMES = {DATA: "data", ACK: "ack", NACK: "nack", ALIVE: "alive",
              RESYNC_REQ: "resync-req", RESYNC_DONE: "resync-done",
              DIGEST: "digest", REPAIR_REQ: "repair-req", REPAIR_DONE: "repair-done"}
# Fixed body lengths of the other types that have one.
BODY_LEN = {DIGEST: digest.DIGESTS.size, REPAIR_REQ: digest.BITMAP_LEN,
            REPAIR_DONE: digest.BITMAP_LEN}

HEADER = struct.Struct("!2sBBBBHQQQQQQ")
MAC_LEN = 32
REC_HEAD = struct.Struct("!BBBBHHIIIBBBB")
PORTS = struct.Struct("!HH")
ADDR_LEN = {4: 4, 6: 16}
REC_LEN = {f: REC_HEAD.size + 2 * (2 * n + PORTS.size) for f, n in ADDR_LEN.items()}

# Keep datagrams below a 1500-byte MTU even over IPv6 (40 + 8 bytes of headers).
MAX_DATAGRAM = 1400
MAX_BODY = MAX_DATAGRAM - HEADER.size - MAC_LEN


class WireError(Exception):
    """A datagram that must be dropped; .reason is the counter name."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Message(NamedTuple):
    type: int
    src: int
    dst: int
    session: int      # the receiver's session nonce (see protocol.py)
    boot: int         # the sender's per-run id
    seq: int
    gen: int = 0
    dseq: int = 0
    arg: int = 0
    records: tuple = ()   # ((op, Entry | expect.Expectation), ...) for DATA
    flags: int = 0        # FLAG_BULK: DATA of a bulk transfer; FLAG_OWN: see above
    raw: tuple = ()       # DATA: each record's bytes (anti-entropy bookkeeping)
    body: bytes = b""     # DIGEST, REPAIR_REQ, REPAIR_DONE, ALIVE (version 3)
    version: int = NEWEST  # the wire version it is (to be) sent at
    about: "About | None" = None   # decoded ALIVE body (version 3)


class About(NamedTuple):
    """What a version 3 ALIVE tells of its sender: its release version and,
    per protocol between members, the (oldest, newest) versions it speaks.

    Body: u8 n, release (n bytes UTF-8), u8 count, then per protocol:
    u8 n, name (n bytes ASCII), u16 oldest, u16 newest."""
    release: str
    speaks: tuple = ()    # ((name, oldest, newest), ...)


ABOUT_MAX_TEXT = 64       # release and protocol names: bytes each
ABOUT_MAX_PROTOCOLS = 16
_RANGE = struct.Struct("!HH")


def newest_spoken(m: Message) -> int:
    """The newest version the sender of m speaks, as far as m tells."""
    said = m.flags >> NEWEST_SHIFT if m.type == ALIVE else 0
    return max(m.version, said)


def encode_about(a: About) -> bytes:
    release = a.release.encode()[:ABOUT_MAX_TEXT]
    out = [bytes([len(release)]), release, bytes([len(a.speaks)])]
    for name, low, high in a.speaks:
        n = name.encode("ascii")
        out += [bytes([len(n)]), n, _RANGE.pack(low, high)]
    return b"".join(out)


def decode_about(body: bytes) -> About:
    """The ALIVE body of version 3 (already authenticated); WireError
    "malformed" for anything that does not parse exactly."""
    def text(off: int, encoding: str) -> tuple[str, int]:
        if off >= len(body) or off + 1 + body[off] > len(body):
            raise WireError("malformed", "alive body truncated")
        end = off + 1 + body[off]
        try:
            return body[off + 1:end].decode(encoding), end
        except UnicodeDecodeError:
            raise WireError("malformed", "alive body text") from None
    release, off = text(0, "utf-8")
    if off >= len(body) or body[off] > ABOUT_MAX_PROTOCOLS:
        raise WireError("malformed", "alive body protocol count")
    count, off = body[off], off + 1
    speaks = []
    for _ in range(count):
        name, off = text(off, "ascii")
        if off + _RANGE.size > len(body):
            raise WireError("malformed", "alive body truncated")
        low, high = _RANGE.unpack_from(body, off)
        off += _RANGE.size
        speaks.append((name, low, high))
    if off != len(body):
        raise WireError("malformed", "trailing bytes after alive body")
    return About(release, tuple(speaks))


# Whole records in one struct call per family; addresses through small
# caches (a sync stream repeats the same few thousand addresses endlessly).
_REC = {f: struct.Struct(f"!BBBBHHIIIBBBB{n}s{n}sHH{n}s{n}sHH") for f, n in ADDR_LEN.items()}
_TIMEOUT = struct.Struct("!I")        # a record's timeout field (after op..status)


def record_timeout(rec: bytes) -> int:
    """Seconds the entry had left when the record was made."""
    return _TIMEOUT.unpack_from(rec, 12)[0]


def encode_record(op: int, e: Entry) -> bytes:
    f = e.family
    return _REC[f].pack(op, f, e.proto, e.tcp_state, e.zone, HELPER_CODES.get(e.helper, 0),
                        e.status, e.timeout, e.mark,
                        e.wscale_orig, e.wscale_reply, e.flags_orig, e.flags_reply,
                        pton(e.osrc), pton(e.odst), e.osport, e.odport,
                        pton(e.rsrc), pton(e.rdst), e.rsport, e.rdport)


def decode_record(buf: bytes, off: int) -> tuple[int, Entry, int]:
    """(op, entry, next offset); raises WireError on a malformed record."""
    if len(buf) - off < REC_HEAD.size:
        raise WireError("truncated", "entry record header")
    op, family = buf[off], buf[off + 1]
    if op != OP_UPSERT and op != OP_DELETE:
        raise WireError("malformed", f"entry op {op}")
    rec = _REC.get(family)
    if rec is None:
        raise WireError("malformed", f"entry family {family}")
    if len(buf) - off < rec.size:
        raise WireError("truncated", "entry record")
    (op, family, proto, tcp_state, zone, helper, status, timeout, mark, wso, wsr, fo, fr,
     osrc, odst, osport, odport, rsrc, rdst, rsport, rdport) = rec.unpack_from(buf, off)
    e = Entry(family, proto, zone, ntop(osrc), ntop(odst), osport, odport,
              ntop(rsrc), ntop(rdst), rsport, rdport, status, timeout, mark,
              tcp_state, wso, wsr, fo, fr,
              HELPERS[helper] if helper < len(HELPERS) else "")  # a newer release's helper: none
    return op, e, off + rec.size


def _expectation(body: bytes, off: int, version: int):
    """An expectation record (expect.py): version 3 only."""
    if version < 3:
        raise WireError("malformed", f"entry op {body[off]}")
    try:
        return expect.decode_record(body, off)
    except expect.Malformed as e:
        raise WireError("malformed", str(e)) from None


# HMAC-SHA256 (RFC 2104) with the key's inner and outer pad states hashed
# once per key: each message then costs copies of the two states and its own
# bytes, not two more SHA-256 blocks (hmac.digest redoes them every call;
# this is ~0.8 us less per message, the same MACs).
_BLOCK = 64
_PADS: dict = {}


def _pads(key: bytes) -> tuple:
    pads = _PADS.get(key)
    if pads is None:
        k = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
        k = k.ljust(_BLOCK, b"\0")
        if len(_PADS) >= 16:       # a few keys in a process's life (reloads)
            _PADS.clear()
        pads = _PADS[key] = (hashlib.sha256(bytes(b ^ 0x36 for b in k)),
                             hashlib.sha256(bytes(b ^ 0x5C for b in k)))
    return pads


def mac(key: bytes, data) -> bytes:
    """HMAC-SHA256(key, data), the same as hmac.digest(key, data, "sha256")."""
    inner, outer = _pads(key)
    i = inner.copy()
    i.update(data)
    o = outer.copy()
    o.update(i.digest())
    return o.digest()


def sign(key: bytes, data: bytes) -> bytes:
    return data + mac(key, data)


def encode(key: bytes, m: Message, body: bytes = b"") -> bytes:
    """Sign a message at its version (m.version). DATA bodies come
    pre-encoded (see encode_record) so a batch is encoded once however often
    it is resent; a version 3 ALIVE's body is encode_about's."""
    head = HEADER.pack(MAGIC, m.version, m.type, m.src, m.dst, m.flags, m.session, m.boot, m.seq,
                       m.gen, m.dseq, m.arg)
    return sign(key, head + body)


def decode(key: bytes, data: bytes, speaks: tuple[int, int] = (OLDEST, NEWEST)) -> Message:
    """Parse and authenticate; raises WireError(reason) for anything to drop.
    A version outside `speaks` (oldest, newest) is "bad_version": nothing
    of its layout is read, not even the MAC's place.

    Checks run cheapest first, but nothing in the body is trusted before the
    MAC has been verified."""
    if len(data) < HEADER.size + MAC_LEN:
        raise WireError("truncated", f"{len(data)} bytes")
    if data[:2] != MAGIC:
        raise WireError("bad_magic")
    version = data[2]
    if not speaks[0] <= version <= speaks[1]:
        raise WireError("bad_version", f"version {version}")
    if not hmac.compare_digest(mac(key, data[:-MAC_LEN]), data[-MAC_LEN:]):
        raise WireError("bad_auth")
    (_m, _v, mtype, src, dst, flags, session, boot, seq, gen, dseq, arg) = HEADER.unpack_from(data)
    if mtype not in TYPE_NAMES:
        raise WireError("bad_type", f"type {mtype}")
    records = raw = ()
    body_end = len(data) - MAC_LEN
    if mtype == DATA:
        recs, raws, off = [], [], HEADER.size
        body = data[:body_end]      # sliced once, not once per record
        for _ in range(arg):
            start = off
            if off < len(body) and body[off] in expect.OPS:
                op, e, off = _expectation(body, off, version)
            else:
                op, e, off = decode_record(body, off)
            recs.append((op, e))
            raws.append(body[start:off])
        if off != body_end:
            raise WireError("malformed", "trailing bytes after entries")
        records, raw = tuple(recs), tuple(raws)
    elif mtype == ALIVE and version >= 3:
        body = data[HEADER.size:body_end]
        return Message(mtype, src, dst, session, boot, seq, gen, dseq, arg, (), flags, body=body,
                       version=version, about=decode_about(body))
    elif body_end - HEADER.size != BODY_LEN.get(mtype, 0):
        raise WireError("malformed", f"{TYPE_NAMES[mtype]} body of {body_end - HEADER.size} bytes")
    else:
        return Message(mtype, src, dst, session, boot, seq, gen, dseq, arg, (), flags,
                       body=data[HEADER.size:body_end], version=version)
    return Message(mtype, src, dst, session, boot, seq, gen, dseq, arg, records, flags, raw,
                   version=version)

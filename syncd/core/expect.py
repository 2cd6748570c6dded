"""Conntrack expectations as state sync carries them (pure: no I/O).

A helper (ftp, sip) that reads a control connection leaves an expectation
for the connection it announces; its first packet then passes as related.
The master replicates each expectation it makes so that the connection
can still open through a peer that takes over before it does.

Expectation record (big endian), in DATA bodies beside entry records
(wire.py), only at sync version 3 and only to a peer whose ALIVE lists
PROTOCOL (below; any other peer would refuse the op):

  op u8 (3 expect | 4 unexpect), family u8, proto u8 (the expected
  connection's), master proto u8, zone u16, helper u16 (the master's,
  entry.HELPERS), class u32, flags u32, timeout u32,
  master src, master dst, master sport u16, master dport u16,
  src, dst, sport u16, dport u16,
  mask src (address), mask sport u16, pad u16

Only port-carrying protocols are replicated (the expected connection and
its master); the kernel matches the destination exactly and the source
under the mask.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from typing import NamedTuple

from syncd.core.addrcache import ntop, pton
from syncd.core.entry import HELPER_CODES, HELPERS

OP_EXPECT = 3
OP_UNEXPECT = 4
# The protocol entry a version 3 ALIVE lists (wire.About, from
# fwcluster.core.versions.SPEAKS) when its sender reads expectation
# records: a receiver that does not know the op drops the whole datagram
# as malformed, so a record kind is negotiated on its own, not by the
# stream's version.
PROTOCOL = "sync_expect"
SPEAKS = (1, 1)
OPS = (OP_EXPECT, OP_UNEXPECT)
PORTED = frozenset((6, 17, 33, 132, 136))   # tcp udp dccp sctp udplite
_ADDR = {4: 4, 6: 16}
_REC = {f: struct.Struct(f"!BBBBHHIII{n}s{n}sHH{n}s{n}sHH{n}sH2x") for f, n in _ADDR.items()}
REC_LEN = {f: s.size for f, s in _REC.items()}

# Seconds an expectation whose master is not in the table yet is kept and
# tried again: the master's record goes first on the same stream, but its
# apply and the expectation's are two netlink requests on two sockets.
WAIT = 2.0
WAIT_MAX = 1024          # expectations kept waiting at once (oldest dropped)
ANNOUNCED_MAX = 65536    # expectations remembered as ours (oldest forgotten)


class Expectation(NamedTuple):
    family: int
    proto: int            # of the expected connection
    zone: int
    master: tuple         # (proto, src, dst, sport, dport): the master's original tuple
    src: str              # the expected connection's original tuple
    dst: str
    sport: int
    dport: int
    mask_src: str         # which source addresses and ports match
    mask_sport: int
    klass: int = 0        # the helper's expectation class (sip: signalling, audio, video)
    flags: int = 0        # NF_CT_EXPECT_PERMANENT, _INACTIVE, _USERSPACE
    timeout: int = 0      # seconds left
    helper: str = ""      # the master's helper

    @property
    def key(self) -> tuple:
        """What the kernel finds it by: zone and the expected tuple."""
        return (self.zone, self.family, self.proto, self.src, self.dst, self.sport, self.dport)


def reads_expectations(about) -> bool:
    """Whether a peer that told this (its wire.About; None: nothing) reads
    expectation records."""
    return about is not None and any(name == PROTOCOL and low <= SPEAKS[1] <= high
                                     for name, low, high in about.speaks)


def carried(x: Expectation) -> bool:
    """Whether sync carries it: ported expected and master connections."""
    return x.family in _ADDR and x.proto in PORTED and x.master[0] in PORTED


def encode_record(op: int, x: Expectation) -> bytes:
    mp, ms, md, msp, mdp = x.master
    return _REC[x.family].pack(op, x.family, x.proto, mp, x.zone, HELPER_CODES.get(x.helper, 0),
                               x.klass, x.flags, x.timeout, pton(ms), pton(md), msp, mdp,
                               pton(x.src), pton(x.dst), x.sport, x.dport,
                               pton(x.mask_src), x.mask_sport)


class Malformed(ValueError):
    pass


def decode_record(buf: bytes, off: int) -> tuple[int, Expectation, int]:
    """(op, expectation, next offset); Malformed for anything else."""
    if len(buf) - off < 2:
        raise Malformed("expectation record header")
    op, family = buf[off], buf[off + 1]
    rec = _REC.get(family)
    if op not in OPS or rec is None:
        raise Malformed(f"expectation op {op} family {family}")
    if len(buf) - off < rec.size:
        raise Malformed("expectation record truncated")
    (op, family, proto, mproto, zone, helper, klass, flags, timeout, ms, md, msp, mdp,
     src, dst, sport, dport, mask, mask_sport) = rec.unpack_from(buf, off)
    x = Expectation(family, proto, zone, (mproto, ntop(ms), ntop(md), msp, mdp), ntop(src), ntop(dst),
                    sport, dport, ntop(mask), mask_sport, klass, flags, timeout,
                    HELPERS[helper] if helper < len(HELPERS) else "")
    return op, x, off + rec.size


class Announced:
    """The expectations this member's own kernel made (it told the peers of
    them). Only their end goes to the peers: a replica that runs out or
    goes with its master's replica must not delete the original."""

    def __init__(self, limit: int = ANNOUNCED_MAX):
        self.limit = limit
        self.keys: OrderedDict = OrderedDict()

    def new(self, x: Expectation) -> None:
        self.keys[x.key] = None
        self.keys.move_to_end(x.key)
        while len(self.keys) > self.limit:
            self.keys.popitem(last=False)

    def ended(self, x: Expectation) -> bool:
        """x ended here: True if it was ours (its end is news for the peers)."""
        return self.keys.pop(x.key, False) is None


class Waiting:
    """Expectations from a peer whose master is not in the table yet: tried
    again until WAIT after they came, then dropped and counted."""

    def __init__(self, wait: float = WAIT, limit: int = WAIT_MAX):
        self.wait, self.limit = wait, limit
        self.items: OrderedDict = OrderedDict()     # key -> (expectation, give up at)
        self.dropped = 0

    def hold(self, x: Expectation, until: float) -> None:
        """Keep x to try again until `until` (the first try's time + wait)."""
        self.items[x.key] = (x, until)
        while len(self.items) > self.limit:
            self.items.popitem(last=False)
            self.dropped += 1

    def forget(self, x: Expectation) -> None:
        """Its end came (an unexpect): nothing left to create."""
        self.items.pop(x.key, None)

    def due(self, now: float) -> list[tuple[Expectation, float]]:
        """What to try again now, each with its deadline (one whose master
        is still missing goes back through hold()); those past it are
        dropped."""
        out = []
        for key, (x, until) in list(self.items.items()):
            del self.items[key]
            if now >= until:
                self.dropped += 1
            else:
                out.append((x, until))
        return out

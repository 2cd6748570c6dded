"""Anti-entropy: entry sets with per-range digests (pure).

An entry set maps a conntrack key to the entry's wire record (wire.py).
Keys fall into RANGES ranges by a hash of the key; each range keeps the XOR
of its entries' 64-bit hashes, so adding, changing or removing an entry
costs one hash and one XOR, and a digest of 100k entries is RANGES numbers
already at hand. The hash leaves out the op byte and the remaining timeout
(it changes every second without being news). Two members compare digests
range by range; only differing ranges are sent again (protocol.py).
"""
from __future__ import annotations

import hashlib
import struct

from syncd.core.entry import OP_DELETE

RANGES = 128
DIGESTS = struct.Struct(f"!{RANGES}Q")
BITMAP_LEN = RANGES // 8
# Record offsets (wire.REC_HEAD): family 1, proto 2, zone 4:6, timeout
# 12:16, original tuple from 24 (2 addresses, 2 ports).
_TUPLE = 24
_ADDR = {4: 4, 6: 16}
# Keys noted while someone watches a set: past this, the watchers are told
# their marks are void (they start over or give up) instead of the change
# log growing with every flow ever touched (a watcher that never ends: a
# bulk towards a peer that went down). A paced anti-entropy round over
# 100k entries takes ~4 s, ~40k keys at 10k new flows/s.
WATCH_LIMIT = 1 << 17


def record_key(rec: bytes) -> bytes:
    """The conntrack key of a record: family, proto, zone, original tuple."""
    n = _ADDR.get(rec[1], 4)
    return rec[1:3] + rec[4:6] + rec[_TUPLE:_TUPLE + 2 * n + 4]


def range_of(key: bytes) -> int:
    return hashlib.blake2b(key, digest_size=2).digest()[1] % RANGES


def record_hash(rec: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(rec[1:12] + rec[16:], digest_size=8).digest(), "big")


def as_delete(rec: bytes) -> bytes:
    return bytes((OP_DELETE,)) + rec[1:]


class EntrySet:
    """Records by key, grouped by range, with each range's digest."""

    def __init__(self, watch_limit: int = WATCH_LIMIT):
        self.watch_limit = watch_limit
        self.ranges: list[dict] = [{} for _ in range(RANGES)]   # key -> (hash, record)
        self.digests = [0] * RANGES
        self.size = 0
        # While someone reads a dump against this set (an anti-entropy
        # round, a bulk transfer): key -> stamp of its last put or remove,
        # so each can tell what changed since it began (its dump copy may
        # be older than the change). None while nobody watches.
        self.touched: dict | None = None
        self.stamp = 0
        self.watchers = 0
        self.void_to = 0        # marks up to this one can no longer tell (overflow)

    def put(self, rec: bytes, key: bytes | None = None) -> bool:
        """Add or replace; True if the entry changed (new, or another hash)."""
        key = key or record_key(rec)
        if self.touched is not None:
            self._touch(key)
        r = range_of(key)
        h = record_hash(rec)
        old = self.ranges[r].get(key)
        self.ranges[r][key] = (h, rec)
        if old is None:
            self.size += 1
            self.digests[r] ^= h
            return True
        if old[0] != h:
            self.digests[r] ^= old[0] ^ h
            return True
        return False

    def remove(self, key: bytes) -> bytes | None:
        """Drop a key; its record, or None if absent."""
        if self.touched is not None:
            self._touch(key)
        r = range_of(key)
        old = self.ranges[r].pop(key, None)
        if old is None:
            return None
        self.size -= 1
        self.digests[r] ^= old[0]
        return old[1]

    def get(self, key: bytes) -> tuple | None:
        return self.ranges[range_of(key)].get(key)

    def __contains__(self, key: bytes) -> bool:
        return key in self.ranges[range_of(key)]

    def __len__(self) -> int:
        return self.size

    def _touch(self, key: bytes) -> None:
        touched = self.touched
        if len(touched) >= self.watch_limit and key not in touched:
            # Every mark given so far is void: their watchers learn it from
            # valid() and start over; the log starts empty.
            touched.clear()
            self.void_to = self.stamp
            self.stamp += 1
        touched[key] = self.stamp

    def clear(self) -> None:
        watch = self.touched, self.stamp, self.watchers, self.void_to
        if self.touched is not None:
            for key, _rec in list(self.items()):
                self._touch(key)
            watch = self.touched, self.stamp, self.watchers, self.void_to
        self.__init__(self.watch_limit)
        self.touched, self.stamp, self.watchers, self.void_to = watch

    def watch(self) -> int:
        """Start noting changes; the mark to pass to changed_since()."""
        if self.touched is None:
            self.touched = {}
        self.watchers += 1
        self.stamp += 1
        return self.stamp

    def unwatch(self) -> None:
        self.watchers -= 1
        if self.watchers <= 0:
            self.touched, self.watchers = None, 0

    def changed_since(self, key: bytes, mark: int) -> bool:
        """Put or removed since watch() returned mark (and still watched);
        every key counts as changed for a void mark."""
        return self.touched is not None and (self.touched.get(key, -1) >= mark
                                             or mark <= self.void_to)

    def valid(self, mark: int) -> bool:
        """The change log still covers everything since mark (it has not
        overflowed since)."""
        return self.touched is not None and mark > self.void_to

    def items(self):
        for rng in self.ranges:
            for key, (_h, rec) in rng.items():
                yield key, rec

    def records(self, r: int) -> list[bytes]:
        return [rec for _h, rec in self.ranges[r].values()]

    def keys_in(self, r: int) -> list[bytes]:
        return list(self.ranges[r])


def encode_digests(digests: list[int]) -> bytes:
    return DIGESTS.pack(*digests)


def decode_digests(body: bytes) -> list[int]:
    return list(DIGESTS.unpack(body))


def differing(mine: list[int], theirs: list[int]) -> list[int]:
    """The ranges whose digests differ: the ones to repair."""
    return [r for r in range(RANGES) if mine[r] != theirs[r]]


def to_bitmap(ranges) -> bytes:
    bits = 0
    for r in ranges:
        bits |= 1 << r
    return bits.to_bytes(BITMAP_LEN, "big")


def from_bitmap(body: bytes) -> list[int]:
    bits = int.from_bytes(body, "big")
    return [r for r in range(RANGES) if bits >> r & 1]

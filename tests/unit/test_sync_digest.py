"""Anti-entropy: per-range digests (digest.py) and repair between two
members on a lossless in-memory link (protocol.py)."""
from __future__ import annotations

import random

from syncd.core import digest, keys, wire
from syncd.core.digest import EntrySet, record_key
from syncd.core.entry import OP_DELETE, OP_UPSERT, Entry
from syncd.core.protocol import Apply, Dump, Send, Sync

KEY = keys.sync_key(b"t", "t")
MEMBERS = [("a", "192.0.2.1"), ("b", "192.0.2.2")]


def ent(port: int, state: int = 3, timeout: int = 100) -> Entry:
    return Entry(4, 6, 0, "198.51.100.7", "203.0.113.9", port, 443,
                 "203.0.113.9", "198.51.100.7", 443, port, status=14, timeout=timeout,
                 tcp_state=state)


def rec(e: Entry) -> bytes:
    return wire.encode_record(OP_UPSERT, e)


def test_digest_is_incremental_and_ignores_the_timeout():
    s = EntrySet()
    for p in range(1000):
        s.put(rec(ent(p)))
    fresh = EntrySet()
    for p in range(1000):
        fresh.put(rec(ent(p, timeout=p)))      # only the timeout differs
    assert s.digests == fresh.digests and len(s) == 1000
    assert s.put(rec(ent(5, state=4)))         # a real change
    diff = digest.differing(s.digests, fresh.digests)
    assert diff == [digest.range_of(record_key(rec(ent(5))))]
    s.put(rec(ent(5)))
    assert s.digests == fresh.digests
    s.remove(record_key(rec(ent(7))))
    s.put(rec(ent(7)))
    assert s.digests == fresh.digests


def test_bitmap_and_digest_bodies_round_trip():
    ranges = sorted(random.Random(1).sample(range(digest.RANGES), 20))
    assert digest.from_bitmap(digest.to_bitmap(ranges)) == ranges
    d = [random.Random(2).getrandbits(64) for _ in range(digest.RANGES)]
    assert digest.decode_digests(digest.encode_digests(d)) == d
    assert len(digest.encode_digests(d)) <= wire.MAX_BODY


class Pair:
    """Two members, a lossless link, tables as dicts by port."""

    def __init__(self):
        self.now = 0.0
        self.n = {m: Sync(MEMBERS, m, KEY, 1, 0.0) for m, _ in MEMBERS}
        self.n["a"].carrying = True
        self.table = {"a": {}, "b": {}}       # a's own flows; b's replica of them
        self.addr = {a: m for m, a in MEMBERS}

    def pump(self, rounds: int = 40):
        for _ in range(rounds):
            self.now += 0.05
            for m, node in self.n.items():
                node.tick(self.now)
            moved = True
            while moved:
                moved = False
                for m, node in self.n.items():
                    for a in node.drain():
                        moved = True
                        if isinstance(a, Send):
                            other = self.addr[a.addr]
                            self.n[other].datagram(dict(MEMBERS)[m], a.data, self.now)
                        elif isinstance(a, Dump):
                            node.bulk(a.peer, list(self.table[m].values()) if m == "a" else [],
                                      self.now)
                        elif isinstance(a, Apply):
                            for op, e in a.records:
                                if op == OP_UPSERT:
                                    self.table[m][e.osport] = e
                                else:
                                    self.table[m].pop(e.osport, None)

    def change(self, recs, lost: bool = False):
        for op, e in recs:
            if op == OP_UPSERT:
                self.table["a"][e.osport] = e
            else:
                self.table["a"].pop(e.osport, None)
        if not lost:
            self.n["a"].local(recs, self.now)
            self.n["a"].flush(self.now)

    def round(self):
        return self.n["a"].anti_entropy(list(self.table["a"].values()), self.now)


def test_a_lost_destroy_and_a_lost_new_are_repaired_in_one_round():
    p = Pair()
    p.pump()
    assert p.n["a"].in_sync and p.n["b"].in_sync
    p.change([(OP_UPSERT, ent(port)) for port in range(1000, 1100)])
    p.pump(5)
    assert p.table["b"].keys() == p.table["a"].keys()
    p.change([(OP_DELETE, ent(1005)), (OP_UPSERT, ent(2000)),
              (OP_UPSERT, ent(1010, state=5))], lost=True)
    assert p.round() == 3                 # the own set checked against the kernel's table
    p.pump(5)
    assert p.table["b"] == p.table["a"]
    assert p.n["b"].peers["a"].counters["digests_received"] == 1
    assert p.n["b"].peers["a"].counters["ranges_differing"] == 0   # corrections came first


def test_a_delete_lost_while_the_peer_was_away_is_repaired_from_the_digest():
    p = Pair()
    p.pump()
    p.change([(OP_UPSERT, ent(port)) for port in range(1000, 1050)])
    p.pump(5)
    # The peer is down for a's stream: a's delete is never sent to it.
    p.n["a"].peers["b"].state = "down"
    p.change([(OP_DELETE, ent(1003))])
    p.n["a"].peers["b"].state = "up"
    assert 1003 in p.table["b"]
    assert p.round() == 0
    p.pump(5)
    b = p.n["b"].peers["a"].counters
    assert b["ranges_differing"] == 1 and b["stale_deleted"] == 1
    assert p.table["b"] == p.table["a"]


def test_a_new_run_of_the_origin_drops_its_view_without_deleting():
    p = Pair()
    p.pump()
    p.change([(OP_UPSERT, ent(port)) for port in range(1000, 1010)])
    p.pump(5)
    p.n["a"] = Sync(MEMBERS, "a", KEY, 2, p.now)     # a restarts: its own set is empty
    p.table["a"].clear()                            # and rebooted
    p.pump()
    p.round()
    p.pump(5)
    assert p.n["b"].peers["a"].counters["views_dropped"] == 1
    assert len(p.table["b"]) == 10     # kept: the survivor may carry these flows

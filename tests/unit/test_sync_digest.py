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


# --- a round whose dump comes in pieces, live events in between ---------------------
def synced_pair(ports=range(1000, 1100)) -> Pair:
    p = Pair()
    p.pump()
    p.change([(OP_UPSERT, ent(port)) for port in ports])
    p.pump(5)
    assert p.table["b"] == p.table["a"] and p.n["a"].in_sync
    return p


def dump_of(p: Pair) -> list:
    """The kernel table as a dump reads it now (fixed before later changes)."""
    return list(p.table["a"].values())


def finish(p: Pair) -> int:
    fixes = p.n["a"].anti_entropy_finish(p.now)
    p.pump(5)
    return fixes


def round_around(p: Pair, split: int, live: list) -> int:
    """A round whose dump (taken now) comes in two pieces, the live changes
    between them; its corrections."""
    dump, a = dump_of(p), p.n["a"]
    a.anti_entropy_begin(p.now)
    a.anti_entropy_add(dump[:split], p.now)
    p.change(live)
    p.pump(1)
    a.anti_entropy_add(dump[split:], p.now)
    return finish(p)


def test_a_round_in_pieces_corrects_what_one_whole_round_corrects():
    p = synced_pair()
    p.change([(OP_DELETE, ent(1005)), (OP_UPSERT, ent(2000)),
              (OP_UPSERT, ent(1010, state=5))], lost=True)
    a, dump = p.n["a"], dump_of(p)
    a.anti_entropy_begin(p.now)
    for i in range(0, len(dump), 7):
        a.anti_entropy_add(dump[i:i + 7], p.now)
        p.pump(1)                              # the loop turns between pieces
    assert a.ae_entries == len(dump) and a.anti_entropy_running
    assert finish(p) == 3 and not a.anti_entropy_running
    assert p.table["b"] == p.table["a"]
    assert p.n["b"].peers["a"].counters["ranges_differing"] == 0


def test_an_entry_created_by_a_live_event_after_its_place_in_the_dump_is_kept():
    # The dump went past the new entry's place: a naive round deletes it.
    p = synced_pair()
    assert round_around(p, 100, [(OP_UPSERT, ent(3000))]) == 0
    assert 3000 in p.table["b"] and record_key(rec(ent(3000))) in p.n["a"].own
    assert p.n["b"].peers["a"].counters["ranges_differing"] == 0


def test_an_entry_deleted_by_a_live_event_is_not_brought_back_from_the_dump():
    # Its dump copy is older than the DESTROY: adopting it (we carry traffic
    # and nobody speaks for it) would re-create a closed session everywhere.
    p = synced_pair()
    assert round_around(p, 50, [(OP_DELETE, ent(1070))]) == 0   # its copy comes later
    assert 1070 not in p.table["b"] and record_key(rec(ent(1070))) not in p.n["a"].own
    assert p.table["b"] == p.table["a"]


def test_an_entry_changed_by_a_live_event_is_not_reverted_from_the_dump():
    p = synced_pair()
    # The second piece holds 1020 ESTABLISHED, read before the change.
    assert round_around(p, 10, [(OP_UPSERT, ent(1020, state=5))]) == 0
    assert p.table["b"][1020].tcp_state == 5 == p.table["a"][1020].tcp_state
    assert p.n["b"].peers["a"].counters["ranges_differing"] == 0


def test_a_lost_event_beside_live_ones_is_still_corrected_and_the_digest_is_current():
    p = synced_pair()
    p.change([(OP_DELETE, ent(1001))], lost=True)
    live = [(OP_UPSERT, ent(4000)), (OP_DELETE, ent(1090)), (OP_UPSERT, ent(1050, state=4))]
    assert round_around(p, 30, live) == 1      # the lost delete of 1001 only
    assert p.table["b"] == p.table["a"]
    b = p.n["b"].peers["a"].counters
    assert b["digests_received"] == 1 and b["ranges_differing"] == 0


def test_an_entry_a_peer_took_over_during_the_round_is_not_corrected():
    p = synced_pair()
    dump = dump_of(p)
    a = p.n["a"]
    a.anti_entropy_begin(p.now)
    a.anti_entropy_add(dump, p.now)
    # b now speaks for 1030 (it carries the flow) and tells a.
    moved = ent(1030, state=5)
    p.n["b"].local([(OP_UPSERT, moved)], p.now)
    p.n["b"].flush(p.now)
    p.pump(1)
    assert record_key(rec(moved)) not in a.own
    assert finish(p) == 0


def test_a_failed_dump_ends_the_round_without_corrections_or_digest():
    p = synced_pair()
    p.change([(OP_DELETE, ent(1005))], lost=True)
    a = p.n["a"]
    a.anti_entropy_begin(p.now)
    a.anti_entropy_add(dump_of(p)[:10], p.now)
    a.anti_entropy_abort()
    assert not a.anti_entropy_running and a.own.touched is None
    assert a.anti_entropy_finish(p.now) == 0
    p.pump(5)
    assert p.n["b"].peers["a"].counters["digests_received"] == 0
    assert 1005 in p.table["b"]                # the next round repairs it
    assert p.round() == 1


def test_the_sweep_for_gone_entries_runs_in_steps_and_respects_later_live_events():
    p = synced_pair()
    p.change([(OP_DELETE, ent(1002)), (OP_DELETE, ent(1003))], lost=True)
    a = p.n["a"]
    a.anti_entropy_begin(p.now)
    a.anti_entropy_add(dump_of(p), p.now)
    steps = 1
    while not a.anti_entropy_sweep(16):
        steps += 1
    assert steps == digest.RANGES // 16
    # 1002 comes back (a new flow, same key) after its range was swept.
    p.change([(OP_UPSERT, ent(1002, state=2))])
    p.pump(1)
    assert finish(p) == 1                      # the delete of 1003 only
    assert p.table["b"] == p.table["a"] and 1002 in p.table["b"]


def test_a_replica_the_origin_deleted_during_the_round_is_not_adopted_back():
    # Active-active: b carries traffic too, so a replica nobody speaks for
    # looks like b's to take. Its dump still held 1040 when a's DESTROY
    # arrived: adopting that copy would send the closed session back to a.
    p = synced_pair()
    b = p.n["b"]
    assert b.in_sync
    stale = list(p.table["b"].values())        # b's dump, read before the delete
    b.anti_entropy_begin(p.now)
    p.change([(OP_DELETE, ent(1040))])
    p.pump(1)
    assert 1040 not in p.table["b"]
    b.anti_entropy_add(stale, p.now)
    assert b.anti_entropy_finish(p.now) == 0
    p.pump(5)
    assert 1040 not in p.table["a"] and record_key(rec(ent(1040))) not in b.own

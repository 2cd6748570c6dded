"""A whole-table refresh handed out in chunks, behind live events."""
from __future__ import annotations

from syncd.core import wire
from syncd.core.digest import record_key
from syncd.core.entry import OP_DELETE, OP_UPSERT, Entry
from syncd.core.refreshfeed import RefreshFeed


def rec(port: int, op: int = OP_UPSERT) -> bytes:
    return wire.encode_record(op, Entry(4, 17, 0, "192.0.2.1", "198.51.100.1", port, 53,
                                        "198.51.100.1", "192.0.2.1", 53, port))


def ports(chunk) -> list[int]:
    return [wire.decode_record(r, 0)[1].osport for r in chunk]


def keys(*recs) -> list[bytes]:
    return [record_key(r) for r in recs]


def test_chunks_in_order_only_while_the_window_is_open():
    f = RefreshFeed(chunk=3, window=10)
    f.start([rec(p) for p in range(7)])
    assert f.next_chunk(backlog=10) is None          # peers behind: wait
    assert ports(f.next_chunk(0)) == [0, 1, 2]
    assert ports(f.next_chunk(9)) == [3, 4, 5]
    assert ports(f.next_chunk(0)) == [6]
    assert not f.active and f.next_chunk(0) is None


def test_a_live_event_wins_over_the_older_dump_copy():
    f = RefreshFeed(chunk=10, window=10)
    f.start([rec(p) for p in range(4)])
    f.touch(keys(rec(2, OP_DELETE), rec(99)))            # deleted live after the dump
    assert ports(f.next_chunk(0)) == [0, 1, 3]


def test_touch_while_idle_keeps_nothing():
    f = RefreshFeed()
    f.touch(keys(rec(1)))
    f.start([rec(1)])
    assert ports(f.next_chunk(0)) == [1]


def test_a_partial_refresh_does_not_replace_a_running_one():
    f = RefreshFeed(chunk=1, window=10)
    f.start([rec(1), rec(2)])
    assert not f.start([rec(7)], replace=False)
    assert f.start([rec(5)])                          # a newer full dump does
    assert ports(f.next_chunk(0)) == [5]


def test_a_dump_that_arrives_in_pieces():
    f = RefreshFeed(chunk=2, window=10)
    f.start([], open=True)
    assert f.active and not f.pending and f.next_chunk(0) is None   # waiting for the dump
    f.touch(keys(rec(3, OP_DELETE)))                     # live, after the dump began
    f.add([rec(1), rec(2), rec(3)])
    assert ports(f.next_chunk(0)) == [1, 2]
    assert ports(f.next_chunk(0)) == []            # 3: the live delete wins
    assert f.active and f.next_chunk(0) is None
    f.add([rec(4)])
    f.end()
    assert ports(f.next_chunk(0)) == [4]
    assert not f.active


def test_a_background_refresh_goes_at_its_own_pace_and_the_next_one_at_the_default():
    f = RefreshFeed(chunk=3, window=10)
    f.start([rec(p) for p in range(5)], pace=(2, 4))
    assert f.next_chunk(backlog=4) is None           # its own, smaller window
    assert ports(f.next_chunk(3)) == [0, 1]
    assert len(f.next_chunk(0)) == 2 and len(f.next_chunk(0)) == 1
    f.start([rec(p) for p in range(5)])
    assert len(f.next_chunk(backlog=9)) == 3          # defaults again

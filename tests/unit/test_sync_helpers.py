"""syncd daemon helpers that decide without I/O: epochs, Apply merging."""
from syncd.daemon import merge_applies, new_epoch
from syncd.core.entry import OP_UPSERT, Entry
from syncd.core.protocol import Apply, Send

E = Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 40000, 80, "198.51.100.100",
          "198.51.100.1", 80, 61000, tcp_state=3)
E6 = Entry(6, 17, 0, "2001:db8:1::100", "2001:db8:2::100", 5000, 53, "2001:db8:2::100",
           "2001:db8:1::100", 53, 5000)


def test_epoch_only_grows_and_survives_a_clock_step_back(tmp_path):
    (tmp_path / "syncd.epoch").write_text("4000000000\n")     # stored epoch ahead of the clock
    a = new_epoch(str(tmp_path))
    b = new_epoch(str(tmp_path))
    assert a == 4000000001 and b == 4000000002


def test_epoch_without_state_uses_the_clock(tmp_path):
    assert new_epoch(str(tmp_path / "new")) > 1_700_000_000


def test_merge_applies_keeps_order_and_boundaries():
    r1, r2, r3 = ((OP_UPSERT, E),), ((OP_UPSERT, E6),), ((OP_UPSERT, E),)
    acts = [Apply("fw2", r1), Apply("fw2", r2), Send("x", b""), Apply("fw2", r3, True),
            Apply("fw3", r1, True)]
    out = merge_applies(acts)
    assert out == [Apply("fw2", r1 + r2), Send("x", b""), Apply("fw2", r3, True), Apply("fw3", r1, True)]


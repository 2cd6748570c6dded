"""syncd's latency trace (debug mode): off unless SYNCD_TRACE is set, and
what it writes is what bench/sync.py joins on."""
from __future__ import annotations

import json

from syncd.core import wire
from syncd.core.entry import OP_DELETE, OP_UPSERT, Entry
from syncd.trace import Trace, profiler

E = Entry(4, 17, 0, "192.0.2.100", "198.51.100.100", 1024, 20001,
          "198.51.100.100", "192.0.2.100", 20001, 1024, mark=1)


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("SYNCD_TRACE", raising=False)
    monkeypatch.delenv("SYNCD_PROFILE", raising=False)
    assert Trace.from_env("fw1") is None
    assert profiler("fw1") == (None, None)


def test_batches_written_with_their_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNCD_TRACE", str(tmp_path / "trace"))
    t = Trace.from_env("fw2")
    t.sent_batch(1.0, 1.1, 1.2, 1.3, [wire.encode_record(OP_UPSERT, E)])   # what the daemon sends
    t.applied_batch(2.0, 0.0, 0.0, 2.1, 2.2)            # nothing applied: no record
    t.applying(2.3, [(OP_DELETE, E)])
    t.applied_batch(2.0, 0.01, 0.02, 2.1, 2.4)
    t.write()
    data = json.loads((tmp_path / "trace-fw2.json").read_text())
    assert data["sent"] == [[1.0, 1.1, 1.2, 1.3, [["192.0.2.100", 1024, 20001, OP_UPSERT, 1]]]]
    assert data["applied"] == [[2.0, 0.01, 0.02, 2.1, 2.3, 2.4, [["192.0.2.100", 1024, 20001, OP_DELETE, 1]]]]


def test_collections_recorded(monkeypatch, tmp_path):
    import gc
    monkeypatch.setenv("SYNCD_TRACE", str(tmp_path / "trace"))
    t = Trace.from_env("fw1")
    try:
        gc.collect(0)
    finally:
        gc.callbacks.remove(t._on_gc)
    t.write()
    data = json.loads((tmp_path / "trace-fw1.json").read_text())
    assert [g[2] for g in data["gc"]] == [0] and data["gc"][0][1] >= 0

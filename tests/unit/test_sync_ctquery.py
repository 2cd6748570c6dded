"""fwctl conntrack's answer built from a dump in pieces (syncd/core/ctquery.py):
the filters, counts over every piece, at most `limit` entries kept, and a
bad request refused before any dump."""
from __future__ import annotations

import pytest

from syncd.core.ctquery import MAX_LIMIT, Query, compile_filter
from syncd.core.entry import Entry

E = Entry(4, 6, 0, "192.0.2.100", "198.51.100.100", 40000, 80, "198.51.100.100",
          "198.51.100.1", 80, 61000, tcp_state=3)
E6 = Entry(6, 17, 0, "2001:db8:1::100", "2001:db8:2::100", 5000, 53, "2001:db8:2::100",
           "2001:db8:1::100", 53, 5000)


def match(e, flt) -> bool:
    return compile_filter(flt)(e)


def test_conntrack_filters():
    assert match(E, {}) and match(E, {"proto": "tcp", "dport": 80, "state": "established"})
    assert match(E, {"src": "192.0.2.0/24"}) and match(E, {"dst": "198.51.100.100"})
    assert match(E, {"src": "198.51.100.1"})          # the NATed source counts too
    assert not match(E, {"proto": "udp"}) and not match(E, {"sport": 1})
    assert not match(E, {"src": "2001:db8::/32"}) and match(E6, {"src": "2001:db8::/32", "family": 6})
    assert match(E6, {"proto": "17"}) and not match(E6, {"state": "ESTABLISHED"})


@pytest.mark.parametrize("req", [{"filter": {"src": "192.0.2.0/33"}}, {"filter": {"dport": "x"}},
                                 {"filter": {"port": 80}}, {"filter": ["tcp"]},
                                 {"limit": MAX_LIMIT + 1}, {"limit": -1}])
def test_a_bad_request_is_refused_before_any_dump(req):
    with pytest.raises(ValueError):
        Query(req)


def flows(n: int, dport: int) -> list[Entry]:
    return [Entry(4, 17, 0, "192.0.2.1", "198.51.100.1", 1000 + i, dport, "198.51.100.1",
                  "192.0.2.1", dport, 1000 + i) for i in range(n)]


def test_counts_cover_every_piece_and_only_limit_entries_are_kept():
    q = Query({"filter": {"dport": 53}, "limit": 3})
    for piece in (flows(5, 53), flows(4, 80), flows(2, 53)):
        q.add(piece)
    reply = q.reply()
    assert (reply["total"], reply["count"]) == (11, 7)
    assert [e["orig"]["sport"] for e in reply["entries"]] == [1000, 1001, 1002]
    q.restart()
    assert q.reply() == {"ok": True, "total": 0, "count": 0, "entries": []}


def test_count_keeps_no_entries():
    q = Query({"entries": False, "limit": 5})
    q.add(flows(9, 53))
    assert q.reply() == {"ok": True, "total": 9, "count": 9} and q.entries == []


class HeldDump:
    """Stands for Queries' PacedDump: the test ends each dump by hand."""

    def __init__(self, queries):
        self.q, self.starts = queries, 0

    def start(self):
        self.starts += 1

    def abort(self):
        pass

    def finish(self, entries, error=None):
        self.q._piece(entries)
        self.q._end(error)


def test_one_dump_at_a_time_a_bounded_queue_and_bad_requests_refused_at_once():
    import asyncio

    from syncd.ctshow import MAX_PENDING, Queries

    async def settle():             # the lock's hand-off takes a few loop steps
        for _ in range(5):
            await asyncio.sleep(0)

    async def scenario():
        q = Queries()
        dump = q.dump = HeldDump(q)
        waiting = [asyncio.create_task(q.answer({"entries": False})) for _ in range(MAX_PENDING)]
        await settle()
        busy = await q.answer({"entries": False})
        bad = await q.answer({"filter": {"dport": "x"}})
        assert busy["ok"] is False and busy["retry"] and bad["ok"] is False and "retry" not in bad
        assert dump.starts == 1                      # the others wait for the running dump
        dump.finish(flows(3, 53))
        await settle()
        assert await waiting[0] == {"ok": True, "total": 3, "count": 3} and dump.starts == 2
        dump.finish(flows(1, 53), error="dump: EINTR")  # read again once, from scratch
        await settle()
        assert dump.starts == 3 and not waiting[1].done()
        dump.finish(flows(2, 53))
        assert (await waiting[1])["total"] == 2
        for task in waiting[2:]:
            await settle()
            dump.finish([])
            assert (await task)["total"] == 0
        assert q.pending == 0
    asyncio.run(scenario())

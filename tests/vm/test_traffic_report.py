"""The traffic client's report (tests/vm/traffic.py), without a network:
the longest gap of one session is not the gap of all sessions together."""
from __future__ import annotations

from tests.vm import traffic


def test_the_longest_gap_of_one_session_is_reported_and_reset(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(traffic.time, "monotonic", lambda: now[0])
    c = traffic.Client("198.51.100.100:7000", 2, 0.1)
    c.last_reply = {0: 0.0, 1: 0.0}
    for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5):  # session 0 answers every 0.5 s
        now[0] = t
        c._reply(0)
    now[0] = 5.0
    c._reply(1)  # session 1's first reply after 5 s
    r = c.report()
    assert r["max_gap_s"] == 0.5
    assert (r["max_session_gap_s"], r["max_session_gap_session"]) == (5.0, 1)
    assert c.report()["max_session_gap_s"] == 0.0  # a fresh window

"""Redundant sync links (real kernel, real carpd and syncd, two sync links).

One lab, in order:
  1. 200 TCP sessions through fw1, replicated; fw1's preferred sync link
     (sync0) goes down: both members move the stream to sync1 (fw1 at its
     carrier loss, fw2 when sync0 stops answering), without a bulk; 50
     sessions opened after the cut are replicated.
  2. sync0 comes back: the stream moves back, still without a bulk.
  3. sync0 cut again, then node loss of fw1: all 250 sessions live on fw2.
"""
from __future__ import annotations

import time

import pytest

from syncd.core.links import silent_after
from syncd.core.protocol import Timing
from tests.labkit import Lab
from tests.lab.sync_helpers import (TIMING, Load, ct_count, in_sync, logs, start_member,
                                    start_server, syncd_status)
from tests.lab.test_sync_failover import SETTLE, lose_and_wait, settled

ALIVE = Timing().alive
# fw1 moves at its carrier loss (rtnetlink); fw2 once sync0 is silent for
# silent_after() and its next tick; back once an ALIVE came on sync0.
MOVE_BOUND = silent_after(ALIVE) + ALIVE + 0.2
BACK_BOUND = 2 * ALIVE + 0.2
FIRST, NEW = 200, 50


def link_of(lab: Lab, member: str, peer: str) -> str | None:
    return syncd_status(lab, member).get("peers", {}).get(peer, {}).get("link")


def on_link(lab: Lab, link: str) -> bool:
    return link_of(lab, "fw1", "fw2") == link and link_of(lab, "fw2", "fw1") == link


def bulks(lab: Lab) -> tuple:
    """Bulk transfers each way and fw2's sessions with fw1 (a new one
    would mean the stream started over)."""
    a = syncd_status(lab, "fw1")["peers"]["fw2"]
    b = syncd_status(lab, "fw2")["peers"]["fw1"]
    return a["bulk_sent"], b["bulk_sent"], b["sessions"]


def replicated(lab: Lab, at_least: int) -> bool:
    peer = syncd_status(lab, "fw1").get("peers", {}).get("fw2", {})
    return peer.get("state") == "up" and peer.get("unacked") == 0 and ct_count(lab, "fw2") >= at_least


def timed(lab: Lab, predicate, bound: float) -> float | None:
    t0 = time.monotonic()
    if lab.wait_for(predicate, bound, 0.02):
        return time.monotonic() - t0
    return None


@pytest.fixture(scope="module")
def run():
    r = {}
    with Lab(members=2, prefix="h24l", sync_links=2, **TIMING) as lab:
        start_server(lab)
        for m in lab.members:
            start_member(lab, m)
        assert lab.wait_for(lambda: settled(lab, "fw1"), 20), logs(lab)
        assert lab.wait_for(lambda: in_sync(lab), 15), logs(lab)
        assert on_link(lab, "sync0"), logs(lab)
        tcp = Load(lab, "first", FIRST)
        t0 = time.time()
        assert tcp.wait_alive_since(t0 + 2, 40) == FIRST, tcp.diagnose(t0 + 2)
        assert lab.wait_for(lambda: replicated(lab, FIRST), 20), logs(lab)
        r["bulks_before"] = bulks(lab)

        lab.link_down("fw1", "sync0")
        r["fw1_moved_s"] = timed(lab, lambda: link_of(lab, "fw1", "fw2") == "sync1", MOVE_BOUND)
        r["fw2_moved_s"] = timed(lab, lambda: link_of(lab, "fw2", "fw1") == "sync1", MOVE_BOUND)
        late = Load(lab, "late", NEW)
        t1 = time.time()
        r["late_alive"] = late.wait_alive_since(t1 + 1, 40)
        r["late_replicated"] = lab.wait_for(lambda: replicated(lab, FIRST + NEW), 20)
        r["fw1_cut"] = syncd_status(lab, "fw1")
        r["fw2_cut"] = syncd_status(lab, "fw2")
        r["metrics_cut"] = lab.control("fw1", {"cmd": "metrics"}, daemon="syncd")["text"]
        r["bulks_cut"] = bulks(lab)

        lab.link_up("fw1", "sync0")
        r["back_s"] = timed(lab, lambda: on_link(lab, "sync0"), BACK_BOUND + MOVE_BOUND)
        r["bulks_back"] = bulks(lab)
        r["fw1_back"] = syncd_status(lab, "fw1")

        lab.link_down("fw1", "sync0")
        r["recut_moved"] = lab.wait_for(lambda: on_link(lab, "sync1"), MOVE_BOUND + 1)
        tf = lose_and_wait(lab, "fw1", "fw2")
        r["first_after_loss"] = tcp.wait_alive_since(tf + SETTLE, 30)
        r["late_after_loss"] = late.wait_alive_since(tf + SETTLE, 30)
        if r["first_after_loss"] < FIRST or r["late_after_loss"] < NEW:
            print(tcp.diagnose(tf + SETTLE), late.diagnose(tf + SETTLE))
        print("\nsync links run:", {k: v for k, v in r.items()
                                     if not k.endswith(("_cut", "_back")) and k != "metrics_cut"})
        for load in (tcp, late):
            load.stop()
        yield r


def test_sessions_opened_after_the_cut_are_replicated(run):
    assert run["late_alive"] == NEW
    assert run["late_replicated"], run


def test_the_stream_moves_to_the_second_link_without_a_bulk(run):
    assert run["fw1_moved_s"] is not None and run["fw2_moved_s"] is not None, run
    assert run["bulks_cut"] == run["bulks_before"], run
    fw1 = run["fw1_cut"]
    assert fw1["links"]["sync0"] == {"carrier": False, "up": False}
    assert fw1["links"]["sync1"] == {"carrier": True, "up": True}
    assert fw1["peers"]["fw2"]["links"] == {"sync0": "no carrier", "sync1": "up"}
    assert run["fw2_cut"]["peers"]["fw1"]["links"] == {"sync0": "silent", "sync1": "up"}
    assert 'fwcluster_sync_link_up{interface="sync0"} 0.0' in run["metrics_cut"]
    assert 'fwcluster_sync_link_up{interface="sync1"} 1.0' in run["metrics_cut"]


def test_the_stream_moves_back_when_the_link_returns(run):
    assert run["back_s"] is not None, run
    assert run["bulks_back"] == run["bulks_before"], run
    assert run["fw1_back"]["peers"]["fw2"]["link_switches"] == 2
    assert all(link["up"] for link in run["fw1_back"]["links"].values())


def test_every_session_survives_the_loss_of_the_master_after_the_cut(run):
    assert run["recut_moved"], run
    assert run["first_after_loss"] == FIRST, run
    assert run["late_after_loss"] == NEW, run

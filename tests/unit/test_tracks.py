"""The tracks core: rise/fall, the flap bound, weights (fwcluster.carp.core.tracks)."""
from __future__ import annotations

import random

from fwcluster.carp.core import tracks
from fwcluster.carp.core.tracks import FLAP_WINDOW, TrackState, observe
from fwcluster.core.config import Track

GW = Track("gw", "icmp", target="198.51.100.100", rise=2, fall=3, weight=50, flap_limit=4)


def feed(track, results, state=None, start=0.0, step=1.0):
    state = state or TrackState()
    for i, ok in enumerate(results):
        state = observe(track, state, ok, start + i * step)
    return state


def test_a_track_starts_failed_and_rises_after_rise_successes():
    s = TrackState()
    assert tracks.demotion(GW, s) == 50
    s = observe(GW, s, True, 0.0)
    assert s.failed and s.last_ok
    s = observe(GW, s, True, 1.0)
    assert not s.failed and tracks.demotion(GW, s) == 0


def test_fall_failures_in_a_row_fail_it_and_a_success_resets_the_count():
    s = feed(GW, [True, True])
    s = feed(GW, [False, False, True, False, False], s, start=2)
    assert not s.failed, "two failures, a success, two failures: never three in a row"
    s = observe(GW, s, False, 10.0)
    assert s.failed and tracks.demotion(GW, s) == 50


def test_reverse_fails_while_the_check_succeeds():
    rev = Track("standby", "interface", interface="wan1", reverse=True, rise=1, fall=1)
    assert feed(rev, [True]).failed
    assert not feed(rev, [False]).failed


def test_a_flapping_target_is_held_failed_by_the_flap_bound():
    quick = Track("gw", "icmp", target="198.51.100.100", rise=1, fall=1, flap_limit=4)
    s = feed(quick, [True, False, True, False, True])  # changes at 0, 1, 2, 3; not 4
    assert s.failed and s.held and len(s.changes) == 4
    assert tracks.status(quick, s, 4.0)["state"] == "held"
    # Stays held while the window still holds too many changes...
    s = observe(quick, s, True, 1.0 + FLAP_WINDOW - 0.5)
    assert s.held
    # ...and recovers once the old changes have left it.
    s = observe(quick, s, True, 2.0 + FLAP_WINDOW)
    assert not s.failed


def test_no_minute_ever_holds_more_than_flap_limit_changes():
    rng = random.Random(7)
    for limit in (2, 3, 4, 10):
        t = Track("gw", "icmp", target="198.51.100.100", rise=1, fall=1, flap_limit=limit)
        s, times, now = TrackState(), [], 0.0
        for _ in range(3000):
            now += rng.uniform(0.05, 3.0)
            before = s.failed
            s = observe(t, s, rng.random() < 0.5, now)
            if s.failed != before:
                times.append(now)
        assert len(times) > 20
        worst = max(sum(1 for u in times if t0 - FLAP_WINDOW < u <= t0) for t0 in times)
        assert worst <= limit


def test_failing_is_never_held_back():
    quick = Track("gw", "icmp", target="198.51.100.100", rise=1, fall=1, flap_limit=2)
    s = feed(quick, [True])  # one change: the recovery
    assert not s.failed
    s = observe(quick, s, False, 1.0)
    assert s.failed, "a failing uplink must demote at once whatever the flap count"


def test_status_line():
    s = feed(GW, [True, True, False])
    st = tracks.status(GW, s, 3.5)
    assert st["state"] == "ok" and st["weight"] == 50 and st["demotion"] == 0
    assert st["last_ok"] is False and st["last_age"] == 1.5 and st["check"] == "icmp 198.51.100.100"
    assert tracks.source("gw") == "track:gw"

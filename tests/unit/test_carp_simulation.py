"""Randomised CARP simulation: thousands of seeded scenarios of 2-4 members
(advbase 0/1/2, random skews, preempt on/off, maintenance, link loss, sync
hold, crashes and restarts, ucarp-like members, lossy/delayed/duplicating
network), invariants checked after every quiet period (tests/unit/carp_sim.py).
Flap scenarios (a twentieth as many): every member's [[track]] flaps at
random rates; no minute holds more claims than the flap limits allow, and
the vips settle where the rules say once the target steadies.

    SIM_SCENARIOS=200000 make soak             # many more
    CARP_SIM_SEED=1234 .venv/bin/python -m pytest -q tests/unit/test_carp_simulation.py
                                               # replay one seed, with its trace
"""
from __future__ import annotations

import os

import pytest

from tests.unit.carp_sim import Violation, run_flap_scenario, run_scenario

# make test: 2000; make soak runs 200000 (more seeds, the same checks).
SCENARIOS = int(os.environ.get("SIM_SCENARIOS", "2000"))
REPLAY = os.environ.get("CARP_SIM_SEED")
FLAP_SCENARIOS = max(1, SCENARIOS // 20)  # each runs 150 s of flapping


def _replay_hint(seed: int) -> str:
    return (f"replay: CARP_SIM_SEED={seed} .venv/bin/python -m pytest -q "
            "tests/unit/test_carp_simulation.py")


def _run_seeds(run, count: int, kind: str = "") -> None:
    """run(seed) for count seeds (or the one CARP_SIM_SEED names, with its trace)."""
    seeds = [int(REPLAY)] if REPLAY else range(count)
    for seed in seeds:
        try:
            s = run(seed)
        except Violation as e:
            trace = "\n".join(e.trace[-60:]) if REPLAY else ""
            pytest.fail(f"{kind}seed {seed}: {e}\n{_replay_hint(seed)}\n{trace}", pytrace=False)
        if REPLAY:
            print("\n".join(s.trace))


def test_carp_scenarios_keep_the_invariants():
    _run_seeds(run_scenario, SCENARIOS)


def _caught(run, seeds: int, says: str = "") -> int:
    """How many of the first `seeds` scenarios raise a Violation that says `says`."""
    caught = 0
    for seed in range(seeds):
        try:
            run(seed)
        except Violation as e:
            caught += says in str(e)
    return caught


def test_simulation_is_deterministic():
    a, b = run_scenario(42), run_scenario(42)
    assert a.trace == b.trace and a.transitions == b.transitions


def test_simulation_can_see_a_flap():
    # The simulator must be able to fail: a machine that claims on its own
    # master-down whatever it heard (the bug fixed in issue 9) must be caught.
    from fwcluster.carp.core import machine
    real = machine.master_wait
    machine.master_wait = lambda advbase, advskew, heard, gaps=(): \
        machine.master_down_interval(advbase, advskew)
    try:
        assert _caught(run_scenario, 300) > 0
    finally:
        machine.master_wait = real


def test_simulation_sees_a_demotion_claim_that_leaves_vips_behind():
    # Issue 20: a sibling applied a demotion claim to its master's older
    # advert, so a pulled cable moved one vip at once and the other 2.9 s
    # later. The invariant must catch a group that does that.
    from fwcluster.carp.core import machine
    real = machine.VhidMachine._sibling_claimed
    machine.VhidMachine._sibling_claimed = lambda self, event, now: []
    try:
        assert _caught(run_scenario, 300, "left vips behind") > 0
    finally:
        machine.VhidMachine._sibling_claimed = real


def test_flapping_tracks_keep_the_invariants():
    _run_seeds(run_flap_scenario, FLAP_SCENARIOS, "flap ")


def test_simulation_sees_tracks_that_flap_the_vips():
    # Without the flap bound (a good track always recovers) a flapping
    # target moves the vips more often than the flap limits allow.
    from fwcluster.carp.core import tracks
    real = tracks.may_recover
    tracks.may_recover = lambda changes, now, flap_limit: True
    try:
        assert _caught(run_flap_scenario, 100, "the flap limits allow") > 0
    finally:
        tracks.may_recover = real

"""The chaos soak (tests/labkit/chaos.py, docs/lab.md "Chaos soak").

test_chaos_short_run is the short run in `make test` (about 3 minutes): a
seeded random schedule of daemon kills, link and cable loss, maintenance,
drills, reloads, config pushes, sync partitions, split brains and
blackouts under continuous traffic through the vips, every invariant
checked after each fault's quiet period. `make chaos` runs the same for
CHAOS_SECONDS (default 1800); CHAOS_SEED replays a schedule.

The other two keep the engine honest: the schedule depends on the seed
only, and damage done behind the engine's back (a crash, flushed
conntrack tables, a split brain, a memory bound) is reported, each as its
own invariant."""
from __future__ import annotations

import itertools
import time

from tests.labkit import Lab, chaos, chaosplan


def say(line: str) -> None:
    print(line, flush=True)


def test_chaos_short_run():
    report = chaos.soak(**chaos.from_env(), out=say)
    assert report.steps, "the schedule ran no fault"
    assert not report.violations, report.failure_text()


def test_schedule_is_the_seeds_alone():
    first = list(itertools.islice(chaosplan.plan(11), 200))
    assert first == list(itertools.islice(chaosplan.plan(11), 200))
    assert first != list(itertools.islice(chaosplan.plan(12), 200))
    assert {f.kind for f in first} == set(chaosplan.KINDS)
    lossy = {f.kind for f in first if chaosplan.unavoidable(f)}
    assert lossy == {"block", "deaf", "blackout"}
    still = {f.kind for f in first if chaosplan.still(f)}
    assert still == {"reload", "push", "partition", "link", "cable", "kill", "maintenance"}
    assert not any(chaosplan.still(f) for f in first if f.target == "master"
                   and f.kind in ("maintenance", "drill") or f.what in ("lan0", "wan0", "carpd")
                   and f.target == "master")


def test_engine_reports_damage_done_behind_its_back():
    with Lab(members=2, prefix="chaosn", **chaos.TIMING) as lab:
        engine = chaos.Chaos(lab, seed=0, seconds=60, keep_going=True, out=say)
        engine.begin()
        try:
            step = chaos.Step(1, chaosplan.Fault("control"), t_start=time.monotonic())
            lab.daemon("fw2", "syncd").kill()                 # a crash nobody injected
            for m in lab.members:                             # every TCP entry gone: with
                lab.run(m, ["conntrack", "-F"])               # tcp_loose=0 the sessions die
            for seg in ("lan", "wan"):                        # fw2 hears no adverts: a second master
                lab.cut("fw2", seg)
            engine.rss_slack_mb = -1                          # any sample is over the bound
            step.t_end = time.monotonic()
            time.sleep(engine.master_down + 1)
            engine.checkpoint(step)
        finally:
            engine.finish()
    found = {v.split("[", 1)[1].split("]", 1)[0] for v in engine.report.violations}
    assert found == {"crash", "flow", "masters", "memory"}, engine.report.violations
    lost = " ".join(v for v in engine.report.violations if "[flow]" in v)
    assert "tcp4-a" in lost and "during #1 control" in lost

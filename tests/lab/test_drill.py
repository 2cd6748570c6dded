"""fwctl drill in the lab: a 2-member cluster with syncd and live TCP
sessions (the sessions survive the drill and the report counts them), a
3-member cluster without syncd, and the refusals on a degraded cluster."""
from __future__ import annotations

import json
import time

from carp_helpers import fast, settled, wait_settled
from tests.labkit import PY
from sync_helpers import TCP_PORT, Load, in_sync, start_server

SESSIONS = 40


def drill(lab, member, *argv):
    """(exit status, report) of `fwctl drill --json` on member."""
    cp = lab.fwctl_raw(member, "drill", "--json", *argv, timeout=60)
    return cp.returncode, json.loads(cp.stdout)


def test_drill_two_members_with_syncd_and_sessions(carp_lab):
    lab = carp_lab(members=2, ipv6=True)  # default timing: advbase 1, advskew 0 / 100
    start_server(lab, duration=90)
    for m in lab.members:
        lab.start_syncd(m)
        lab.start_carpd(m)
    wait_settled(lab, "fw1", timeout=15)
    assert lab.wait_for(lambda: in_sync(lab), 15, 0.2)

    # Refused where it cannot run: on the backup (it names the master).
    rc, r = drill(lab, "fw2")
    assert rc == 1 and r["result"] == "refused"
    assert any("run the drill on the master" in p and lab.addr4("fw1") in p for p in r["problems"])
    assert lab.masters(1) == ["fw1"]  # nothing moved

    assert lab.wait_for(lambda: lab.run("server", ["ss", "-Hltn", f"sport = :{TCP_PORT}"]).stdout, 10)
    load = Load(lab, "drill", SESSIONS, duration=80)
    try:
        assert load.wait_alive_since(time.time(), 15) == SESSIONS, load.diagnose(time.time())
        assert lab.wait_for(lambda: in_sync(lab), 10, 0.2)

        rc, r = drill(lab, "fw1")
        assert rc == 0 and r["result"] == "ok" and r["problems"] == [], r
        # Demotion makes fw1 advertise at once and fw2 claim at once: far
        # below the 3 s a silent master's loss would take.
        assert 0 < r["takeover_seconds"] < 2
        assert 0 < r["failback_seconds"] <= r["timeout"]
        assert {v["vhid"] for v in r["vips"]} == {1, 2, 3, 4}
        by = {v["vhid"]: v["taken_over_by"] for v in r["vips"]}
        assert by == {1: lab.addr4("fw2", "lan"), 2: lab.addr4("fw2", "wan"),
                      3: lab.addr6("fw2", "lan"), 4: lab.addr6("fw2", "wan")}
        s = r["sessions"]
        assert s["known"] and s["before"] >= SESSIONS and s["after"] >= SESSIONS
        # The peer's table size is what it last reported (ALIVE), not asserted on.
        assert set(s["peers"]) == {"fw2"} and s["peers"]["fw2"]["lost_messages"] == 0
        assert s["not_arrived"] == 0
        # The drill is over: fw1 is master again, maintenance off.
        assert settled(lab, "fw1")
        assert lab.fwctl("fw1", "status")["maintenance"] is False
        # Every session crossed fw2 and back without a reset.
        t = time.time()
        assert load.wait_alive_since(t, 10) == SESSIONS, load.diagnose(t)
        assert load.errors() == []
    finally:
        load.stop()

    # A peer whose syncd is gone is a degraded cluster: refused.
    lab.stop_daemon("fw2", "syncd")
    assert lab.wait_for(lambda: lab.control("fw1", {"cmd": "status"}, daemon="syncd")
                        ["peers"]["fw2"]["state"] != "up", 10, 0.2)
    rc, r = drill(lab, "fw1")
    assert rc == 1 and r["result"] == "refused"
    assert any("peer fw2 is not reachable" in p for p in r["problems"])
    assert lab.masters(1) == ["fw1"]


def test_drill_three_members_without_syncd(carp_lab):
    lab = carp_lab(members=3, ipv6=False, **fast(3))
    for m in lab.members:
        lab.start_carpd(m)
    wait_settled(lab, "fw1")

    # Human output, with a hold long enough to look at the cluster meanwhile:
    # fw2 (the best backup) alone holds every vip, fw3 stays backup.
    p = lab.popen("fw1", [PY, "-m", "fwcluster.fwctl", *lab._daemon_args("fw1"), "drill",
                          "--hold", "2"], stdout=open(lab.dir / "drill.out", "wb"))
    assert lab.wait_for(lambda: settled(lab, "fw2"), 5, 0.05)
    assert p.wait(30) == 0
    out = (lab.dir / "drill.out").read_text()
    assert out.startswith("drill on fw1 (cluster lab): OK"), out
    assert "sessions  unknown (syncd not running)" in out
    assert f"{lab.addr4('fw2', 'wan')}" in out
    wait_settled(lab, "fw1")

    rc, r = drill(lab, "fw1", "--hold", "0.2")
    assert rc == 0 and r["result"] == "ok"
    assert r["sessions"] == {"known": False, "before": None, "after": None, "peers": {},
                             "not_arrived": None}
    assert any("syncd is not running" in n for n in r["notes"])
    assert r["takeover_seconds"] < 1 and r["failback_seconds"] < r["timeout"]

    # In maintenance already: refused, and it stays as the operator left it.
    lab.fwctl("fw1", "maintenance", "on")
    wait_settled(lab, "fw2")
    rc, r = drill(lab, "fw1")
    assert rc == 1 and "maintenance is already on here" in r["problems"]
    assert lab.fwctl("fw1", "status")["maintenance"] is True

    # No peer left to take over: the drill gives up after --timeout, lifts
    # maintenance again and the vips never left.
    lab.fwctl("fw1", "maintenance", "off")
    wait_settled(lab, "fw1")
    for m in ("fw2", "fw3"):
        lab.stop_daemon(m, "carpd", sig=9)
    rc, r = drill(lab, "fw1", "--timeout", "1")
    assert rc == 1 and r["result"] == "failed"
    assert any("no member took over" in p for p in r["problems"])
    st = lab.fwctl("fw1", "status")
    assert st["maintenance"] is False and all(v["state"] == "MASTER" for v in st["vips"])

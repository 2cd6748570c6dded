"""fwctl drill's pure parts: the pre-flight refusals and the session report;
and exit 3 when carpd does not answer. (The drill itself runs in the lab:
tests/lab/test_drill.py.)"""
import copy
import subprocess
import sys
from pathlib import Path

from fwcluster.fwctl.drill import preflight, sessions_report

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"


def vip(vhid, state, master):
    return {"vhid": vhid, "interface": "lan0", "address": f"192.0.2.{vhid}/24", "state": state,
            "master": master}


HEALTHY = {"node": "fw1", "cluster": "edge", "demotion": 0, "demotion_sources": {},
           "maintenance": False, "preempt": True,
           "vips": [vip(1, "MASTER", "192.0.2.11"), vip(2, "MASTER", "192.0.2.11")]}
SYNC = {"in_sync": True, "local_entries": 10,
        "peers": {"fw2": {"state": "up", "last_seen": 0.2, "table_size": 10, "unacked": 0,
                          "msgs_lost": 0}}}


def changed(**kw):
    st = copy.deepcopy(HEALTHY)
    st.update(kw)
    return st


def test_healthy_master_may_drill_with_or_without_syncd():
    assert preflight(HEALTHY, SYNC) == []
    assert preflight(HEALTHY, None) == []


def test_refusals_say_why():
    assert preflight(changed(maintenance=True, demotion=240,
                             demotion_sources={"maintenance": 240}), None) == [
        "maintenance is already on here", "this member is demoted (240: maintenance=240)"]
    assert preflight(changed(preempt=False), None) == [
        "preemption is off (carp.preempt = false): the vips would not come back"]
    backup = changed(vips=[vip(1, "BACKUP", "192.0.2.12"), vip(2, "BACKUP", "192.0.2.12")])
    assert preflight(backup, None) == ["this member is backup: run the drill on the master (192.0.2.12)"]
    split = changed(vips=[vip(1, "MASTER", "192.0.2.11"), vip(2, "BACKUP", "192.0.2.12")])
    assert preflight(split, None) == [
        "the vips are split between members (master here: vhid 1; backup here: vhid 2)"]
    link = changed(vips=[vip(1, "MASTER", "192.0.2.11"), vip(2, "INIT", None)])
    assert preflight(link, None) == ["vhid 2 in INIT (vip interface down?)"]


def test_refusals_from_syncd():
    down = copy.deepcopy(SYNC)
    down["peers"]["fw2"].update(state="down", last_seen=12.34)
    down["in_sync"] = False
    assert preflight(HEALTHY, down) == ["peer fw2 is not reachable (syncd: down, last seen 12.3 s ago)",
                                        "syncd is not in sync with its peers"]
    assert preflight(HEALTHY, {"in_sync": True, "peers": {}}) == ["syncd knows no peers"]


def test_sessions_report():
    assert sessions_report(None, None, None) == {"known": False, "before": None, "after": None,
                                                 "peers": {}, "not_arrived": None}
    at = copy.deepcopy(SYNC)
    at["peers"]["fw2"].update(unacked=3, table_size=9)
    after = copy.deepcopy(SYNC)
    after["local_entries"] = 12
    after["peers"]["fw2"]["msgs_lost"] = 2
    r = sessions_report(SYNC, at, after)
    assert r["known"] and r["before"] == 10 and r["after"] == 12 and r["not_arrived"] == 5
    assert r["peers"]["fw2"] == {"table_before": 10, "table_at_takeover": 9, "table_after": 10,
                                 "unacked_at_takeover": 3, "lost_messages": 2,
                                 "unacked_unit": "messages"}
    # Entries, when syncd counts them per message.
    at["peers"]["fw2"]["unacked_entries"] = 40
    assert sessions_report(SYNC, at, SYNC)["peers"]["fw2"]["unacked_unit"] == "entries"
    assert sessions_report(SYNC, at, SYNC)["not_arrived"] == 40


def test_exit_3_when_carpd_is_not_running(tmp_path):
    cp = subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "--config", str(EXAMPLE),
                         "--node", "fw1", "--run-dir", str(tmp_path), "drill"],
                        capture_output=True, text=True, cwd=ROOT)
    assert cp.returncode == 3 and "carpd is not running" in cp.stderr


def test_human_output(capsys):
    from fwcluster.fwctl.drill import human
    vips = [{"vhid": 1, "interface": "lan0", "address": "192.0.2.1/24", "taken_over_by": "192.0.2.12",
             "takeover_seconds": 0.0123, "failback_seconds": 0.31}]
    report = {"node": "fw1", "cluster": "edge", "result": "ok", "problems": [], "notes": [],
              "timeout": 15.0, "hold": 1.0, "takeover_seconds": 0.0123, "failback_seconds": 0.31,
              "vips": vips, "sessions": sessions_report(SYNC, SYNC, SYNC)}
    human(report)
    out = capsys.readouterr().out
    assert out.startswith("drill on fw1 (cluster edge): OK\n")
    assert "takeover  0.012 s" in out and "failback  0.310 s" in out
    assert "192.0.2.12" in out and "10 tracked before, 10 after" in out
    assert "not arrived on the peers: none" in out
    human(dict(report, result="refused", problems=["maintenance is already on here"]))
    assert capsys.readouterr().out == ("drill refused on fw1 (cluster edge):\n"
                                       "  - maintenance is already on here\n")

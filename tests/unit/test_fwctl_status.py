"""fwctl status / maintenance against a stand-in daemon on a real unix socket,
and how every daemon-backed command turns "not running" and "refused" into
its exit status.

fwctl is the thing under test; the daemon side is a small server speaking the
control contract (carpd's own control handling is tested in test_carp_control).
"""
import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fwcluster import ctlsock, version
from fwcluster.core import versions

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"

CARPD_STATUS = {
    "ok": True, "node": "fw1", "cluster": "edge", "demotion": 240,
    "demotion_sources": {"link:wan0": 240}, "maintenance": False, "preempt": True,
    "mode": "hardened", "balance": "active-standby",
    "vips": [{"vhid": 1, "interface": "lan0", "address": "192.0.2.1/24", "family": 4,
              "state": "MASTER", "master": "192.0.2.11", "advbase": 1, "advskew": 0,
              "demotion": 240, "transitions": 2,
              "counters": {"adverts_sent": 5, "adverts_received": 1,
                           "drops": {"bad_ttl": 0, "bad_checksum": 0, "bad_hmac": 3,
                                     "bad_version": 0, "bad_type": 0, "unknown_vhid": 0,
                                     "truncated": 0, "replay": 0, "bad_authlen": 0}}}],
}


class Daemons:
    """Serve carpd.sock (and optionally syncd.sock) from a background loop."""

    def __init__(self, run_dir: Path, syncd: bool, replies: dict | None = None):
        """replies: {cmd: reply} answered instead of the usual (either daemon)."""
        self.run_dir, self.syncd = run_dir, syncd
        self.replies = replies or {}
        self.requests = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self):
        asyncio.set_event_loop(self.loop)

        async def carpd(req):
            self.requests.append(req)
            if req["cmd"] in self.replies:
                return self.replies[req["cmd"]]
            if req["cmd"] == "status":
                return CARPD_STATUS
            if req["cmd"] == "maintenance":
                return {"ok": True, "maintenance": req["on"]}
            return {"ok": False, "error": "unknown"}

        async def syncd(req):
            self.requests.append(req)
            return self.replies.get(req["cmd"], {"ok": True, "peers": 1, "state": "in-sync"})

        async def start():
            self.servers = [await ctlsock.serve(ctlsock.socket_path(str(self.run_dir), "carpd"), carpd)]
            if self.syncd:
                self.servers.append(await ctlsock.serve(
                    ctlsock.socket_path(str(self.run_dir), "syncd"), syncd))
            self.ready.set()
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        def close():
            for s in self.servers:
                s.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(close)
        self.thread.join(10)


def fwctl(run_dir, *argv):
    return subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "--config", str(EXAMPLE),
                           "--node", "fw1", "--run-dir", str(run_dir), *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_status_exits_3_when_carpd_is_not_running(tmp_path):
    r = fwctl(tmp_path, "status")
    assert r.returncode == 3
    assert "carpd is not running" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("with_syncd", [False, True])
def test_status_json_is_carpd_status_minus_ok_plus_sync(tmp_path, with_syncd):
    with Daemons(tmp_path, syncd=with_syncd):
        r = fwctl(tmp_path, "status", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    release = data.pop("versions")
    assert release["node"] == "fw1" and release["protocols"] == versions.protocols()
    assert release["version"] == version.current() and release["peers"] == {}
    expected = {k: v for k, v in CARPD_STATUS.items() if k != "ok"}
    if with_syncd:
        expected["sync"] = {"peers": 1, "state": "in-sync"}
    assert data == expected


def test_status_human_table(tmp_path):
    with Daemons(tmp_path, syncd=False):
        r = fwctl(tmp_path, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "demotion 240 (link:wan0=240)" in lines[0] and "maintenance off" in lines[0]
    assert "carp hardened" in lines[0] and "balance active-standby" in lines[0]
    assert lines[1].split()[:5] == ["VHID", "INTERFACE", "ADDRESS", "STATE", "MASTER"]
    assert lines[2].split() == ["1", "lan0", "192.0.2.1/24", "MASTER", "192.0.2.11", "1", "0",
                                "2", "5", "1", "bad_hmac=3"]


def test_status_says_what_syncd_waits_for(tmp_path):
    """Sync link down, CARP up: the member stays demoted, and says why."""
    why = {"fw2": "heard by CARP, silent on the sync link"}
    with Daemons(tmp_path, syncd=True, replies={"status": {"ok": True, "in_sync": False,
                                                           "demotion": 32, "waiting": why}}):
        r = fwctl(tmp_path, "status")
    assert r.returncode == 0, r.stderr
    assert "waiting for fw2: heard by CARP, silent on the sync link" in r.stdout.splitlines()


def test_status_shows_both_members_versions_and_whether_they_match(tmp_path):
    """This member's version from fwcluster/version.py; a peer's from syncd's
    status (what its sync ALIVE told): ranges that overlap in every
    protocol are compatible, a peer heard that does not report is unknown,
    one whose sync version this member does not speak is incompatible."""
    mine = versions.protocols()
    peers = {"fw2": {"state": "up", "last_seen": 0.1, "version": "0.2.0",
                     "speaks": versions.ranges(), "sync_version": 3},
             "fw3": {"state": "up", "last_seen": 0.1, "sync_version": 2},
             "fw4": {"state": "down", "last_seen": None, "unintelligible": 4}}
    with Daemons(tmp_path, syncd=True, replies={"status": {"ok": True, "peers": peers}}):
        r = fwctl(tmp_path, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"release: {version.current()} (protocols sync {mine['sync']}, config {mine['config']}, " \
        f"carp {mine['carp']}, carp_hardened {mine['carp_hardened']})" in lines
    newest = ", ".join(f"{name} {high}" for name, (_, high) in sorted(versions.ranges().items()))
    assert f"  peer fw2: 0.2.0, compatible: negotiated {newest}" in lines
    assert any(ln.startswith("  peer fw3: unknown, unknown: sync 2 in use") for ln in lines)
    assert ("  peer fw4: unknown, INCOMPATIBLE: fw4 speaks sync version 4, this member speaks "
            "2-3: upgrade this member or roll the peer back") in lines


@pytest.mark.parametrize("state,on", [("on", True), ("off", False)])
def test_maintenance_sends_request(tmp_path, state, on):
    with Daemons(tmp_path, syncd=False) as d:
        r = fwctl(tmp_path, "maintenance", state, "--json")
        human = fwctl(tmp_path, "maintenance", state)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"maintenance": on}
    assert human.stdout.strip() == f"maintenance {state}"
    assert d.requests == [{"cmd": "maintenance", "on": on}] * 2


def test_maintenance_exits_3_without_carpd(tmp_path):
    r = fwctl(tmp_path, "maintenance", "on")
    assert r.returncode == 3 and "carpd is not running" in r.stderr


def test_maintenance_rejects_bad_argument(tmp_path):
    r = fwctl(tmp_path, "maintenance", "maybe")
    assert r.returncode == 2


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_maintenance_refused_by_carpd_exits_1(tmp_path):
    no = {"ok": False, "error": "not now"}
    with Daemons(tmp_path, syncd=False, replies={"maintenance": no}):
        r = fwctl(tmp_path, "maintenance", "on")
    assert r.returncode == 1 and r.stdout == ""
    assert one_error_line(r) == "error: carpd: not now"


@pytest.mark.parametrize("argv", [("sync",), ("conntrack", "count"), ("config", "status"),
                                  ("config", "push"), ("config", "diff")])
def test_syncd_commands_exit_3_without_syncd(tmp_path, argv):
    with Daemons(tmp_path, syncd=False):  # carpd alone does not do
        r = fwctl(tmp_path, *argv)
    assert r.returncode == 3
    assert one_error_line(r).startswith("error: syncd is not running or not answering: ")


def test_conntrack_bad_filter_is_a_usage_error(tmp_path):
    no = {"ok": False, "error": "ValueError: '10.0.0.0/33' does not appear to be an IPv4 network"}
    with Daemons(tmp_path, syncd=True, replies={"conntrack": no}) as d:
        r = fwctl(tmp_path, "conntrack", "show", "--src", "10.0.0.0/33")
    assert r.returncode == 2
    assert one_error_line(r) == f"error: syncd: {no['error']}"
    assert d.requests[-1] == {"cmd": "conntrack", "filter": {"src": "10.0.0.0/33"},
                              "entries": True, "limit": 1000}


def test_conntrack_busy_is_a_problem_not_a_usage_error(tmp_path):
    busy = {"ok": False, "retry": True, "error": "busy: 4 conntrack requests already running or waiting"}
    with Daemons(tmp_path, syncd=True, replies={"conntrack": busy}):
        r = fwctl(tmp_path, "conntrack", "count")
    assert r.returncode == 1 and one_error_line(r) == f"error: syncd: {busy['error']}"


def test_conntrack_count(tmp_path):
    with Daemons(tmp_path, syncd=True, replies={"conntrack": {"ok": True, "total": 7, "count": 2}}):
        r = fwctl(tmp_path, "conntrack", "count", "--dport", "80", "--json")
        human = fwctl(tmp_path, "conntrack", "count", "--dport", "80")
    assert r.returncode == 0 and json.loads(r.stdout) == {"total": 7, "count": 2}
    assert human.stdout == "2 of 7 entries\n"


def test_config_push_not_taken_everywhere_shows_each_member(tmp_path):
    reply = {"ok": False, "generation": 4, "digest": "ab" * 32,
             "results": {"fw1": {"ok": True, "changed": ["cluster.toml"]},
                         "fw2": {"ok": False, "error": "unreachable: timed out", "stale": True}}}
    with Daemons(tmp_path, syncd=True, replies={"config-push": reply}):
        r = fwctl(tmp_path, "config", "push", "--json")
        human = fwctl(tmp_path, "config", "push")
    assert r.returncode == 1 and json.loads(r.stdout) == reply
    assert human.returncode == 1 and human.stderr == ""
    assert human.stdout.splitlines() == ["generation 4 (abababababab)",
                                         "  fw1          ok       cluster.toml",
                                         "  fw2          FAILED   unreachable: timed out"]


def test_config_status_refused_exits_1(tmp_path):
    with Daemons(tmp_path, syncd=True, replies={"config-status": {"ok": False, "error": "boom"}}):
        r = fwctl(tmp_path, "config", "status")
    assert r.returncode == 1 and one_error_line(r) == "error: syncd: boom"


def test_garbled_reply_counts_as_not_answering(tmp_path):
    with Daemons(tmp_path, syncd=False, replies={"status": ["not", "an", "object"]}):
        r = fwctl(tmp_path, "status")
    assert r.returncode == 3 and "carpd: unexpected reply" in one_error_line(r)


def test_status_human_shows_each_track(capsys):
    from fwcluster.fwctl import status
    status.human({"node": "fw1", "vips": [], "tracks": [
        {"name": "gw", "check": "icmp 198.51.100.1", "state": "held", "weight": 50,
         "last_ok": True, "last_detail": "reply in 0.3 ms", "last_age": 0.25,
         "changes_last_minute": 4}]})
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("TRACK"))
    assert out[head + 1].split()[:4] == ["gw", "icmp", "198.51.100.1", "held"]
    assert "ok: reply in 0.3 ms" in out[head + 1] and out[head + 1].endswith("4")


def test_human_shows_each_vhids_hardened_version_and_who_holds_it_at_4(capsys):
    from fwcluster.fwctl import status as fwctl_status
    vip = CARPD_STATUS["vips"][0]
    vips = [dict(vip, vhid=1, hardened_version=5, hardened_peers={"192.0.2.12": 5}),
            dict(vip, vhid=2, hardened_version=4,
                 hardened_peers={"192.0.2.12": 5, "192.0.2.13": 4}),
            dict(vip, vhid=3, hardened_version=4, hardened_peers={"192.0.2.13": 4})]
    fwctl_status.hardened_versions(vips)
    assert capsys.readouterr().out == ("hardened carp: version 5 on vhid 1; "
                                       "version 4 on vhid 2,3 (heard at 4: 192.0.2.13)\n")
    fwctl_status.hardened_versions(vips[2:], {"fw3": 4, "fw2": 5})   # syncd heard fw3 at 4
    assert capsys.readouterr().out == ("hardened carp: version 4 on vhid 3 "
                                       "(heard at 4: 192.0.2.13, fw3 (its sync link says))\n")
    fwctl_status.hardened_versions([dict(vip, hardened_version=None)])  # compatible mode
    assert capsys.readouterr().out == ""


def test_sync_shows_the_version_per_peer_and_why_it_waits_for_one_it_cannot_understand(tmp_path):
    """fwctl sync from a real core's status: fw2 sends sync version 4 only."""
    from syncd import daemon
    from syncd.core import keys
    from syncd.core.protocol import Sync
    core = Sync([("fw1", "192.0.2.1"), ("fw2", "192.0.2.2")], "fw1", keys.sync_key(b"s", "c"), 1, 0.0)
    for now in (0.5, 2.0, 3.5):
        core.datagram("192.0.2.2", b"FS\x04" + bytes(120), now)
        core.tick(now)
    st = core.status(4.0)
    st["waiting"] = daemon.waiting(st, False)
    with Daemons(tmp_path, syncd=True, replies={"status": {"ok": True, "node": "fw1", **st}}):
        r = fwctl(tmp_path, "sync")
    assert r.returncode == 1, r.stderr       # not in sync
    lines = r.stdout.splitlines()
    assert ("waiting for fw2: fw2 speaks sync version 4, this member speaks 2-3: "
            "upgrade this member or roll the peer back") in lines
    assert "sync versions spoken: 2-3" in lines
    row = next(ln for ln in lines if ln.startswith("fw2 "))
    assert row.split()[-2:] == ["4?", "-"]

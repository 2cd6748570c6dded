"""fwctl status / maintenance against a stand-in daemon on a real unix socket.

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

from fwcluster import control

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "cluster.toml"

CARPD_STATUS = {
    "ok": True, "node": "fw1", "cluster": "edge", "demotion": 240,
    "demotion_sources": {"link:wan0": 240}, "maintenance": False, "preempt": True,
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

    def __init__(self, run_dir: Path, syncd: bool):
        self.run_dir, self.syncd = run_dir, syncd
        self.requests = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self):
        asyncio.set_event_loop(self.loop)

        async def carpd(req):
            self.requests.append(req)
            if req["cmd"] == "status":
                return CARPD_STATUS
            if req["cmd"] == "maintenance":
                return {"ok": True, "maintenance": req["on"]}
            return {"ok": False, "error": "unknown"}

        async def syncd(req):
            return {"ok": True, "peers": 1, "state": "in-sync"}

        async def start():
            self.servers = [await control.serve(control.socket_path(str(self.run_dir), "carpd"), carpd)]
            if self.syncd:
                self.servers.append(await control.serve(
                    control.socket_path(str(self.run_dir), "syncd"), syncd))
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
    assert lines[1].split()[:5] == ["VHID", "INTERFACE", "ADDRESS", "STATE", "MASTER"]
    assert lines[2].split() == ["1", "lan0", "192.0.2.1/24", "MASTER", "192.0.2.11", "1", "0",
                                "2", "5", "1", "bad_hmac=3"]


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

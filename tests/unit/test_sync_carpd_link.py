"""syncd's link to carpd (syncd/daemon.py) against a carpd control server
on a real unix socket: the demotion it asks for depends on what carpd's
snapshot says (issue 19: a restart is not a return), and the master carpd
hears reaches the Sync core (a peer heard through CARP is never absent)."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from fwcluster import configfile, ctlsock
from fwcluster.carp.ctlserver import ControlServer
from fwcluster.core import contract
from syncd.core import keys
from syncd.dumps import PacedDump
from syncd.core.protocol import Sync
from syncd.daemon import DUMP_TURN, Daemon, waiting

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "cluster.toml"


def daemon(tmp_path) -> Daemon:
    conf = tmp_path / "cluster.toml"
    conf.write_text(EXAMPLE.read_text())
    cfg = configfile.load(conf, "fw1")
    cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))
    d = Daemon(cfg, "fw1", b"s3cret")
    members = [(m.name, str(m.sync_address)) for m in cfg.members]
    d.sync = Sync(members, "fw1", keys.sync_key(b"s3cret", cfg.name), 1, 0.0)   # a new run
    return d


def told(tmp_path, snapshot: list[dict], later: list[dict] = ()) -> tuple[list[int], Daemon]:
    """The set-demotion values a fresh syncd sends a carpd whose subscribe
    stream is snapshot (then later), in order."""
    d = daemon(tmp_path)
    values = []

    async def handler(req):
        assert req["cmd"] == contract.SET_DEMOTION and req["source"] == contract.SYNC_SOURCE
        values.append(req["value"])
        return {"ok": True, "demotion": req["value"]}

    async def go():
        srv = ControlServer(ctlsock.socket_path(d.cfg.run_dir, contract.CARPD), handler,
                            lambda: list(snapshot))
        await srv.start()
        # A master's first role line makes it claim its flows (a table dump
        # sent as its own): give it the real paced dump run() would.
        d.refresh_dump = PacedDump(asyncio.get_running_loop(), d.on_dump, d.on_dump_end,
                                   DUMP_TURN, paced=False)
        link = asyncio.create_task(d.carpd_link())
        for _ in range(200):
            if values:
                break
            await asyncio.sleep(0.01)
        for ev in later:
            srv.publish(ev)
        await asyncio.sleep(0.2)        # anything more it would say
        link.cancel()
        await srv.stop()
        d.refresh_dump.close()
    asyncio.run(go())
    return values, d


END = {"event": contract.SNAPSHOT_END}


def test_a_restarted_syncd_on_the_master_never_asks_for_the_sync_hold(tmp_path):
    values, d = told(tmp_path, [contract.role_line(1, "MASTER", None, 0.0),
                                contract.role_line(2, "MASTER", None, 0.0), END])
    assert not d.sync.in_sync
    assert values == [0]


def test_a_restarted_syncd_on_a_backup_asks_for_it_and_learns_the_heard_master(tmp_path):
    values, d = told(tmp_path, [contract.role_line(1, "BACKUP", "192.0.2.12", 0.0), END])
    assert values == [contract.SYNC_HOLD_DEMOTE]
    assert d.sync.carp_heard


def test_the_demotion_is_told_again_when_carrying_changes_it(tmp_path):
    """A backup that is not in sync takes over (its master died): it carries
    traffic now, so its demotion drops to 0 without waiting for the bulk."""
    values, d = told(tmp_path, [contract.role_line(1, "BACKUP", "192.0.2.12", 0.0), END],
                     [contract.role_line(1, "MASTER", None, 1.0)])
    assert values == [contract.SYNC_HOLD_DEMOTE, 0]
    assert not d.sync.carp_heard


def test_waiting_says_why_each_peer_holds_up_in_sync():
    peers = {"fw2": {"resync": "pending", "state": "unknown"},
             "fw3": {"resync": "pending", "state": "up"},
             "fw4": {"resync": "done", "state": "up"}}
    assert waiting({"in_sync": False, "peers": peers}, carp_heard=True) == {
        "fw2": "heard by CARP, silent on the sync link", "fw3": "bulk transfer under way"}
    assert waiting({"in_sync": False, "peers": peers}, carp_heard=False)["fw2"] == \
        "silent on the sync link"
    assert waiting({"in_sync": True, "peers": peers}, carp_heard=True) == {}

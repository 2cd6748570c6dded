"""syncd's live reload (syncd/reload.py): a new member list and secret on
disk become a new protocol run that keeps own entries, views and in-sync;
a config that cannot be taken live is refused and the old one stays."""
from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from fwcluster import configfile, ctlsock
from syncd import reload as live
from syncd.configchannel import ConfigService
from syncd.core import keys, wire
from syncd.core.entry import OP_UPSERT, Entry

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "cluster.toml"
THIRD = '\n[[member]]\nname = "fw3"\nsync_address = "203.0.113.3"\nadvskew = 150\n'


class Shell:
    """The daemon's attributes reload() uses, nothing else."""

    def __init__(self, cfg, secret: bytes):
        from syncd.core.protocol import Sync
        self.cfg, self.node = cfg, "fw1"
        self.key = keys.sync_key(secret, cfg.name)
        self.vips = []
        self.configsvc = ConfigService(cfg, "fw1", secret)
        self.sync = Sync(live.members(cfg), "fw1", self.key, 1, 0.0)
        self.t = 0.0

    def now(self) -> float:
        return self.t


def setup(tmp_path, extra=""):
    secret = tmp_path / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"Kq7#vP2m!Xz9@Lr4Tw6\n")
    os.close(fd)
    text = EXAMPLE.read_text().replace('"/etc/fwcluster/secret"', f'"{secret}"')
    conf = tmp_path / "cluster.toml"
    conf.write_text(text + extra)
    cfg = configfile.load(conf, "fw1")
    cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"))
    return conf, secret, text, Shell(cfg, configfile.secret(cfg))


def test_a_new_member_and_secret_keep_own_entries_views_and_in_sync(tmp_path):
    conf, secret, text, d = setup(tmp_path)
    e = Entry(4, 6, 0, "198.51.100.7", "203.0.113.9", 1234, 443, "203.0.113.9",
              "198.51.100.7", 443, 1234, status=14, timeout=60, tcp_state=3)
    d.sync.local([(OP_UPSERT, e)], 0.0)
    d.sync.peers["fw2"].view.put(wire.encode_record(OP_UPSERT, e._replace(osport=9)))
    d.sync.in_sync = True
    old_sync, old_key = d.sync, d.key
    conf.write_text(text + THIRD)
    secret.write_text("Zp4!kR8#wQ2@nV6^tY1&\n")
    reply = live.reload(d)
    assert reply == {"ok": True, "changed": ["+fw3", "key"]}
    assert d.sync is not old_sync and d.key != old_key
    assert set(d.sync.peers) == {"fw2", "fw3"} and d.sync.in_sync
    assert len(d.sync.own) == 1 and len(d.sync.peers["fw2"].view) == 1
    assert d.sync.boot != old_sync.boot       # peers see a new run: new sessions, resync
    assert set(d.configsvc.peers) == {"fw2", "fw3"}


def test_a_bad_config_is_refused_and_the_old_one_keeps_running(tmp_path, caplog):
    conf, _secret, text, d = setup(tmp_path)
    old_sync, old_cfg = d.sync, d.cfg
    conf.write_text(text + "\n[sync]\nport = 0\n")        # a duplicate table: does not load
    reply = live.reload(d)
    assert reply["ok"] is False and d.sync is old_sync and d.cfg is old_cfg
    conf.write_text(text.replace('sync_address = "203.0.113.1"', 'sync_address = "203.0.113.11"'))
    reply = live.reload(d)
    assert reply["ok"] is False and "sync_address" in reply["error"] and "restart" in reply["error"]
    assert d.sync is old_sync
    refused = [r for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refused) == 2


def test_nothing_changed_keeps_the_protocol_run(tmp_path):
    _conf, _secret, _text, d = setup(tmp_path)
    old = d.sync
    assert live.reload(d) == {"ok": True, "changed": []}
    assert d.sync is old


def test_asking_carpd_to_reload_tolerates_no_carpd(tmp_path):
    why = asyncio.run(ctlsock.ask_reload(str(tmp_path), "carpd", "syncd"))  # no socket
    assert why.startswith("carpd not told to reload")

"""syncd's live reload (SIGHUP, {"cmd": "reload"}, a config push that
changed cluster.toml): re-read the config and the secret, then add and
remove peers and rekey without touching the kernel table.

The new member list and key take effect as a new protocol run that keeps
what this member knows: its own entries and its views of the peers that
stay, and its in-sync state (a master must not demote itself for a reload).
Peers see a new run, start new sessions and exchange bulk transfers, as
after a syncd restart that kept the table; a new peer gets its resync.
A config that does not load, or that would need a restart (this member gone
or its sync address or port changed), is refused with one log line and the
old one keeps running.
"""
from __future__ import annotations

import dataclasses
import logging

from fwcluster import configfile, ctlsock
from fwcluster.core import contract
from fwcluster.core.config import ConfigError
from syncd.core import keys
from syncd.core.protocol import Sync

log = logging.getLogger("syncd")


def load(old_cfg, node: str):
    """(cfg, secret) of the config on disk, or raise ConfigError."""
    cfg = configfile.load(old_cfg.path, node)
    secret = configfile.secret(cfg)
    # --run-dir/--state-dir given at start stay in force.
    cfg = dataclasses.replace(cfg, run_dir=old_cfg.run_dir, state_dir=old_cfg.state_dir)
    me, old_me = cfg.member(node), old_cfg.member(node)
    if me.sync_address != old_me.sync_address or cfg.sync.port != old_cfg.sync.port:
        key = "sync.port" if cfg.sync.port != old_cfg.sync.port else "member.sync_address"
        raise ConfigError(cfg.path, key, f"a new value for {node} needs a restart of syncd")
    return cfg, secret


def members(cfg) -> list[tuple[str, str]]:
    return [(m.name, str(m.sync_address)) for m in cfg.members]


def successor(old: Sync, cfg, node: str, key: bytes, now: float) -> Sync:
    """A new protocol run for the new members and key that keeps what the
    old one knew (own entries, views of the peers that stay, in_sync)."""
    new = Sync(members(cfg), node, key, old.epoch, now, old.t)
    new.own, new.carrying, new.local_entries = old.own, old.carrying, old.local_entries
    new.round, new.corrections = old.round, old.corrections
    for name, p in new.peers.items():
        was = old.peers.get(name)
        if was is not None and was.addr == p.addr:
            p.view, p.view_boot = was.view, was.view_boot
    if old.in_sync and not new.in_sync:
        new.in_sync = True
    return new


def changes(old_cfg, cfg, old_key: bytes, key: bytes) -> list[str]:
    out = []
    before, after = dict(members(old_cfg)), dict(members(cfg))
    out += [f"+{n}" for n in after if n not in before]
    out += [f"-{n}" for n in before if n not in after]
    out += [f"~{n}" for n in after if n in before and after[n] != before[n]]
    if key != old_key:
        out.append("key")
    if cfg.sync.digest_interval != old_cfg.sync.digest_interval:
        out.append("digest_interval")
    return out


def reload(daemon) -> dict:
    """Apply the config on disk to a running daemon; the control answer."""
    try:
        cfg, secret = load(daemon.cfg, daemon.node)
    except ConfigError as e:
        log.error("reload refused, old config kept: %s", e)
        return {"ok": False, "error": str(e)}
    key = keys.sync_key(secret, cfg.name)
    what = changes(daemon.cfg, cfg, daemon.key, key)
    daemon.cfg, daemon.vips = cfg, [str(v.address) for v in cfg.vips]
    daemon.configsvc.reconfigure(cfg, secret)
    if any(w[0] in "+-~" for w in what) or "key" in what:
        daemon.key = key
        daemon.sync = successor(daemon.sync, cfg, daemon.node, key, daemon.now())
    log.info("reloaded %s: %s", cfg.path, ", ".join(what) or "no change for syncd")
    return {"ok": True, "changed": what}


async def tell_carpd(run_dir: str) -> None:
    """Ask carpd to reload too. An older carpd answers "unknown command", a
    stopped one does not answer: neither is an error of ours."""
    path = ctlsock.socket_path(run_dir, contract.CARPD)
    try:
        reply = await ctlsock.arequest(path, {"cmd": contract.RELOAD})
    except (ctlsock.ControlError, OSError, ValueError) as e:
        log.info("carpd not told to reload: %s", e)
        return
    if not reply.get("ok"):
        log.info("carpd did not reload: %s", reply.get("error"))

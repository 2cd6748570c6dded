"""syncd's live reload (SIGHUP, {"cmd": "reload"}, a config push that
changed cluster.toml, a reload of carpd): re-read the config and the
secret, then take what the one reload plan (fwcluster.core.reloadplan,
carpd's too) says: add and remove peers and rekey without touching the
kernel table, and take the new vips into the own-address filter.

The new member list and key take effect as a new protocol run that keeps
what this member knows: its own entries and its views of the peers that
stay, and its in-sync state (a master must not demote itself for a reload).
Peers see a new run, start new sessions and exchange bulk transfers, as
after a syncd restart that kept the table; a new peer gets its resync.
A config that does not load, or that the plan refuses (this member gone,
its sync address or the port changed, ...), is refused with one log line
and the old one keeps running.
"""
from __future__ import annotations

import dataclasses
import logging

from fwcluster import configfile
from fwcluster.core import reloadplan
from fwcluster.core.config import ConfigError
from syncd.core import keys
from syncd.core.protocol import Sync

log = logging.getLogger("syncd")


def load(old_cfg, node: str):
    """(cfg, secret) of the config on disk, or raise ConfigError."""
    cfg = configfile.load(old_cfg.path, node)
    secret = configfile.secret(cfg)
    # --run-dir/--state-dir given at start stay in force.
    return dataclasses.replace(cfg, run_dir=old_cfg.run_dir, state_dir=old_cfg.state_dir), secret


def members(cfg) -> list[tuple[str, tuple[str, ...]]]:
    """Each member's address on every sync link, in [sync] interfaces order."""
    return [(m.name, tuple(str(a) for a in m.link_addresses)) for m in cfg.members]


def successor(old: Sync, cfg, node: str, key: bytes, now: float) -> Sync:
    """A new protocol run for the new members and key that keeps what the
    old one knew (own entries, views of the peers that stay, in_sync)."""
    new = Sync(members(cfg), node, key, old.epoch, now, old.t, speaks=old.speaks, about=old.about)
    new.own, new.told, new.local_entries = old.own, old.told, old.local_entries
    new.forwarding, new.owner_counters = old.forwarding, old.owner_counters
    new.round, new.corrections = old.round, old.corrections
    new.carrier = list(old.carrier)     # the links are the same (reloadplan)
    for name, p in new.peers.items():
        was = old.peers.get(name)
        if was is not None and was.addr == p.addr:
            p.view, p.view_boot = was.view, was.view_boot
    if old.in_sync and not new.in_sync:
        new.in_sync = True
    return new


def reload(daemon) -> dict:
    """Apply the config on disk to a running daemon; the control answer.
    The daemon's own-address filter reads daemon.cfg.vips: the caller
    re-reads its addresses after a reload that changed them."""
    try:
        cfg, secret = load(daemon.cfg, daemon.node)
    except ConfigError as e:
        log.error("reload refused, old config kept: %s", e)
        return {"ok": False, "error": str(e)}
    # The key under the old name tells whether the secret itself changed.
    secret_changed = keys.sync_key(secret, daemon.cfg.name) != daemon.key
    both = reloadplan.plan(daemon.cfg, cfg, daemon.node, secret_changed)
    if isinstance(both, str):
        log.error("reload refused, old config kept: %s: %s", cfg.path, both)
        return {"ok": False, "error": f"{cfg.path}: {both}"}
    plan = both.syncd
    daemon.cfg = cfg
    daemon.configsvc.reconfigure(cfg, secret)
    if plan.new_run:
        daemon.key = keys.sync_key(secret, cfg.name)
        daemon.sync = successor(daemon.sync, cfg, daemon.node, daemon.key, daemon.now())
    what = plan.summary()
    log.info("reloaded %s: %s", cfg.path, ", ".join(what) or "no change for syncd")
    return {"ok": True, "changed": what}

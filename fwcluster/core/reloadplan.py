"""What a live reload changes, for carpd and syncd at once (pure).

Both daemons run one config, so both reload from one plan: old config + new
config -> what each daemon carries over, rekeys or cannot take. A config
one daemon cannot take live is refused for both (the reply and log name the
key and the reason; the old config keeps running in both).

carpd: a vip whose vhid, interface, address, advbase, mac, garp_refresh and
ra_interval are all unchanged keeps its machine, and so its role: a reload
never moves a vip it keeps. A
vip that changed any of these is removed (a master bows out and releases
it) and added again as new; a new one starts as a fresh machine (BACKUP
once its link is up). A new advskew or preempt setting reaches the kept
machines as an event (machine.Reconfigured).

syncd: peers added or removed (which renumbers the wire ids, see
config.wire_indexes), moved to a new sync address, and a new sync key
become a new protocol run that keeps what the member knows (syncd/reload.py); the vips feed its
own-address filter.

Keys: the sync and config-channel keys are derived from the secret and the
cluster name; the CARP key is the secret (compatible) or derived from the
secret and the name (hardened). A new secret or name rekeys both daemons in
the same reload, so the member's next adverts and datagrams go under the new
keys together; peers take them when they reload the same change (a
`fwctl config push` installs it on every member at once).
"""
from __future__ import annotations

from dataclasses import dataclass

from fwcluster.core.config import Config


@dataclass(frozen=True)
class CarpPlan:
    added: tuple[int, ...]      # vhids to create
    removed: tuple[int, ...]    # vhids to bow out of and drop
    kept: tuple[int, ...]       # vhids whose machine (and role) stays
    retime: bool                # advskew or preempt changed: tell the kept machines
    rekey: bool                 # the advert key changed: new Auths for every vip
    carp_changed: bool          # link_demote / maintenance_demote / sync_hold

    @property
    def changes(self) -> bool:
        return bool(self.added or self.removed or self.retime or self.rekey or self.carp_changed)

    def summary(self) -> dict:
        return {"added": list(self.added), "removed": list(self.removed), "kept": list(self.kept),
                "retimed": self.retime, "rekeyed": self.rekey}


@dataclass(frozen=True)
class SyncPlan:
    peers_added: tuple[str, ...]
    peers_removed: tuple[str, ...]
    peers_moved: tuple[str, ...]    # a new sync address
    rekey: bool                     # the sync key changed (secret or cluster name)
    digest_interval: bool
    vips: bool                      # the own-address filter subtracts other vips now

    @property
    def new_run(self) -> bool:
        # A member added or removed also renumbers the wire ids.
        return bool(self.peers_added or self.peers_removed or self.peers_moved or self.rekey)

    def summary(self) -> list[str]:
        return ([f"+{n}" for n in self.peers_added] + [f"-{n}" for n in self.peers_removed]
                + [f"~{n}" for n in self.peers_moved] + ["key"] * self.rekey
                + ["digest_interval"] * self.digest_interval + ["vips"] * self.vips)


@dataclass(frozen=True)
class Plan:
    carpd: CarpPlan
    syncd: SyncPlan


def _vip_key(v) -> tuple:
    # A vip moved to another failover group starts afresh in it.
    return (v.vhid, v.interface, str(v.address), v.advbase, v.mac, v.garp_refresh,
            v.ra_interval, v.group)


def _members(cfg: Config) -> dict:
    """name -> (sync address, advskew): order-free, as the wire ids are."""
    return {m.name: (m.sync_address, m.advskew) for m in cfg.members}


def refusal(old: Config, new: Config, node: str, secret_changed: bool) -> str | None:
    """Why the new config cannot be taken live by both daemons (None: it can)."""
    if node not in {m.name for m in new.members}:
        return f"{node} is no longer a member in {new.path}: restart carpd and syncd"
    for what in ("run_dir", "state_dir"):
        if getattr(old, what) != getattr(new, what):
            return f"cluster.{what} changed: restart carpd and syncd to move it"
    if old.member(node).sync_address != new.member(node).sync_address:
        return f"member.sync_address of {node} changed: restart syncd and carpd"
    if old.member(node).link_addresses != new.member(node).link_addresses:
        return f"member.sync_addresses of {node} changed: restart syncd and carpd"
    if old.sync.interfaces != new.sync.interfaces:
        return "sync.interfaces changed: restart syncd on every member"
    if old.sync.port != new.sync.port:
        return "sync.port changed: restart syncd and carpd on every member"
    if old.carp.mode != new.carp.mode:
        return f"carp.mode changed ({old.carp.mode} -> {new.carp.mode}): restart carpd"
    if old.balance != new.balance or (new.balance.mode == "active-active" and (
            _members(old) != _members(new) or old.vips != new.vips
            or old.carp.preempt != new.carp.preempt or secret_changed or old.name != new.name)):
        return ("the active-active layout ([balance], members, vips, preempt, cluster name or "
                "secret) changed: restart carpd")
    return None


def carp_rekey(old: Config, new: Config, secret_changed: bool) -> bool:
    """Does the advert key change? (hardened mode binds it to the cluster name)"""
    return secret_changed or (new.carp.mode == "hardened" and old.name != new.name)


def plan(old: Config, new: Config, node: str, secret_changed: bool) -> Plan | str:
    """Both daemons' plan, or one line saying why the new config needs a restart."""
    why = refusal(old, new, node, secret_changed)
    if why is not None:
        return why
    before = {v.vhid: _vip_key(v) for v in old.vips}
    after = {v.vhid: _vip_key(v) for v in new.vips}
    kept = tuple(sorted(h for h in before if after.get(h) == before[h]))
    carp = CarpPlan(
        added=tuple(sorted(h for h in after if h not in kept)),
        removed=tuple(sorted(h for h in before if h not in kept)),
        kept=kept,
        retime=(old.member(node).advskew != new.member(node).advskew
                or old.carp.preempt != new.carp.preempt or old.groups != new.groups),
        rekey=carp_rekey(old, new, secret_changed),
        carp_changed=(old.carp.link_demote, old.carp.maintenance_demote, old.carp.sync_hold)
        != (new.carp.link_demote, new.carp.maintenance_demote, new.carp.sync_hold))
    was = {m.name: m.link_addresses for m in old.peers(node)}
    now = {m.name: m.link_addresses for m in new.peers(node)}
    sync = SyncPlan(
        peers_added=tuple(sorted(set(now) - set(was))),
        peers_removed=tuple(sorted(set(was) - set(now))),
        peers_moved=tuple(sorted(n for n in now if n in was and now[n] != was[n])),
        rekey=secret_changed or old.name != new.name,
        digest_interval=old.sync.digest_interval != new.sync.digest_interval,
        vips=sorted(str(v.address) for v in old.vips) != sorted(str(v.address) for v in new.vips))
    return Plan(carp, sync)

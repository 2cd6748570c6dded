"""What a live reload of carpd changes (pure): old config + new config ->
a plan, or the reason the new config cannot be taken without a restart.

A vip whose vhid, interface, address and advbase are all unchanged keeps
its machine, and so its role: a reload never moves a vip it keeps. A vip
that changed any of these is removed (a master bows out and releases it)
and added again as new; a new one starts as a fresh machine (BACKUP once
its link is up). A new advskew or preempt setting reaches the kept machines
as an event (machine.Reconfigured). Changing what carpd was started with
(its run or state directory, its own name) or the active-active layout
needs a restart.
"""
from __future__ import annotations

from dataclasses import dataclass

from fwcluster.core.config import Config


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[int, ...]      # vhids to create
    removed: tuple[int, ...]    # vhids to bow out of and drop
    kept: tuple[int, ...]       # vhids whose machine (and role) stays
    retime: bool                # advskew or preempt changed: tell the kept machines
    rekey: bool                 # the secret changed: new HMAC keys for every vip
    carp_changed: bool          # link_demote / maintenance_demote / sync_hold

    @property
    def changes(self) -> bool:
        return bool(self.added or self.removed or self.retime or self.rekey or self.carp_changed)

    def summary(self) -> dict:
        return {"added": list(self.added), "removed": list(self.removed), "kept": list(self.kept),
                "retimed": self.retime, "rekeyed": self.rekey}


def _vip_key(v) -> tuple:
    return (v.vhid, v.interface, str(v.address), v.advbase)


def plan(old: Config, new: Config, node: str, old_secret: bytes, new_secret: bytes
         ) -> ReloadPlan | str:
    """The plan, or one line saying why the new config needs a restart."""
    if node not in {m.name for m in new.members}:
        return f"{node} is no longer a member in {new.path}"
    for what in ("run_dir", "state_dir"):
        if getattr(old, what) != getattr(new, what):
            return f"cluster.{what} changed: restart carpd to move it"
    if old.balance != new.balance or (new.balance.mode == "active-active" and (
            old.members != new.members or old.vips != new.vips
            or old.carp.preempt != new.carp.preempt or old_secret != new_secret)):
        return ("the active-active layout ([balance], members, vips, preempt or secret) "
                "changed: restart carpd")
    if old.carp.mode != new.carp.mode:
        return f"carp.mode changed ({old.carp.mode} -> {new.carp.mode}): restart carpd"
    before = {v.vhid: _vip_key(v) for v in old.vips}
    after = {v.vhid: _vip_key(v) for v in new.vips}
    kept = tuple(sorted(h for h in before if after.get(h) == before[h]))
    removed = tuple(sorted(h for h in before if h not in kept))
    added = tuple(sorted(h for h in after if h not in kept))
    retime = (old.member(node).advskew != new.member(node).advskew
              or old.carp.preempt != new.carp.preempt)
    carp_changed = (old.carp.link_demote, old.carp.maintenance_demote, old.carp.sync_hold) != \
        (new.carp.link_demote, new.carp.maintenance_demote, new.carp.sync_hold)
    return ReloadPlan(added, removed, kept, retime, old_secret != new_secret, carp_changed)

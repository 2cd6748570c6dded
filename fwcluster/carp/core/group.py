"""A member's failover group (pure): its vips move together.

Each vip has its own CARP election (machine.VhidMachine), and the peers'
adverts for the different vhids arrive at different moments, up to one
advert interval apart. Left alone, a returning member would preempt its LAN
vip before its WAN vip, and for that moment the two directions of a flow
would cross different members: a strict stateful firewall drops the
replies. So when one vip of the group is claimed on an advert (preemption,
a demoted master, a bow-out), every other vip of the group applies the same
rules at once to the last advert it heard from its own master (or, having
heard none yet, as a member that has just come back, to the advert that
decided: members advertise every vip with the same skew and demotion), with
the deciding advert's demotion when that is higher: a master that lost one
link says so only on its other segments, so a claim on a demotion takes the
whole group at once (machine.VhidMachine._sibling_claimed).

A claim on the master-down timer is not spread: each vip's timer fires on
its own, within the same few milliseconds after the master's last adverts.
"""
from __future__ import annotations

from fwcluster.carp.core.machine import (AdvertReceived, RoleChanged, SiblingClaimed, State,
                                         VhidMachine)


class FailoverGroup:
    def __init__(self, machines: dict[int, VhidMachine]):
        self.machines = machines

    def handle(self, vhid: int, event, now: float) -> list:
        out = self.machines[vhid].handle(event, now)
        if isinstance(event, AdvertReceived) and _claimed(out):
            sibling = SiblingClaimed(event.advert, event.source)
            for other, m in self.machines.items():
                if other != vhid:
                    out += m.handle(sibling, now)
        return out


def _claimed(actions: list) -> bool:
    return any(isinstance(a, RoleChanged) and a.new == State.MASTER for a in actions)


class Groups:
    """A member's failover groups ([[group]]): each elects on its own, so a
    claim in one never moves another's vips; a vhid's events go to its
    group. `machines` is every vhid's machine."""

    def __init__(self, groups: dict[str, FailoverGroup]):
        self.groups = groups
        self.of = {vhid: g for g in groups.values() for vhid in g.machines}
        self.machines = {vhid: x for g in groups.values() for vhid, x in g.machines.items()}

    def handle(self, vhid: int, event, now: float) -> list:
        return self.of[vhid].handle(vhid, event, now)

"""Driving CARP machines from asyncio: each machine's one timer moved by
ArmTimer, the rest of its actions handed on. Vip machines (one failover
group) and bucket machines both run this way."""
from __future__ import annotations

import asyncio

from fwcluster.carp.core import machine


def rearm(run, at: float | None, callback, *args) -> None:
    """Replace run.timer with one firing callback(*args) at loop time `at`
    (None: no timer)."""
    if run.timer is not None:
        run.timer.cancel()
        run.timer = None
    if at is not None:
        run.timer = asyncio.get_running_loop().call_at(at, callback, *args)


def carry_out(actions, runs: dict, fire, role_changed, act) -> None:
    """ArmTimer moves runs[vhid].timer (fire(vhid, at) when due), RoleChanged
    goes to role_changed(run, change), every other action to act(action)."""
    for action in actions:
        if isinstance(action, machine.ArmTimer):
            rearm(runs[action.vhid], action.at, fire, action.vhid, action.at)
        elif isinstance(action, machine.RoleChanged):
            role_changed(runs[action.vhid], action)
        else:
            act(action)


def now() -> float:
    """The machines' clock: the event loop's."""
    return asyncio.get_running_loop().time()
